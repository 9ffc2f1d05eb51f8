//! The inbox worker's Postgres wake-ups survive a lost `LISTEN` connection (Postgres only: SQLite
//! wakes its workers in-process and has no connection to lose).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_middleware::{Delivery, Inbox, TxDelivery};
use courier_outbox::Message;
use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::BoxError;

courier_test_support::postgres_for_tests!();

/// How long the test waits for a condition; far below the worker's poll interval, never asserted.
const PATIENCE: Duration = Duration::from_secs(30);

/// Whether the worker is settled: its LISTEN has completed and no other statement runs, so the
/// wake-up that follows a LISTEN has been handled before the test cuts the connection.
async fn worker_settled(pool: &PgPool) -> bool {
    sqlx::query_scalar(
        "SELECT bool_or(query LIKE 'LISTEN%' AND state = 'idle')
                AND NOT bool_or(state = 'active' AND pid <> pg_backend_pid())
         FROM pg_stat_activity WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn eventually<F: Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    tokio::time::timeout(PATIENCE, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("gave up waiting for {what}"));
}

/// A TCP proxy in front of Postgres whose open connections can be dropped, as a network drop
/// does (the client sees its socket close without an error message from the server), and which
/// can hold new connections back, so that a test decides when a client gets to reconnect.
struct Proxy {
    port: u16,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    open: watch::Sender<bool>,
}

impl Proxy {
    async fn start(upstream: (String, u16)) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(Mutex::new(Vec::new()));
        let (open, _) = watch::channel(true);
        let registry = connections.clone();
        let gate = open.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let mut gate = gate.subscribe();
                let forward = tokio::spawn(async move {
                    if gate.wait_for(|open| *open).await.is_err() {
                        return;
                    }
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                registry.lock().unwrap().push(forward);
            }
        });
        Self {
            port,
            connections,
            open,
        }
    }

    /// Drops every open connection and holds new ones back until [`Proxy::release`].
    fn cut_and_hold(&self) {
        self.open.send_replace(false);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    /// Lets held and new connections through.
    fn release(&self) {
        self.open.send_replace(true);
    }
}

/// A row committed while the listener reconnects sends its `NOTIFY` to nobody; the worker must
/// look for work after every reconnect instead of waiting for its next poll (an hour here).
/// sqlx's `PgListener::recv` reconnects silently after a dropped connection, which is why the
/// shared LISTEN loop reads with `try_recv`.
#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn a_row_stored_right_after_the_listener_lost_its_connection_is_processed(pool: PgPool) {
    let direct = pool.connect_options();
    let proxy = Proxy::start((direct.get_host().to_owned(), direct.get_port())).await;
    let through_proxy = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(direct.as_ref().clone().host("127.0.0.1").port(proxy.port))
        .await
        .unwrap();

    let inbox = Inbox::new(through_proxy).poll_interval(Duration::from_secs(3600));
    let handler = tower::service_fn(|_: TxDelivery| async { Ok::<_, BoxError>(()) });
    let shutdown = CancellationToken::new();
    let working = tokio::spawn(inbox.worker("billing", handler).run(shutdown.clone()));
    eventually("the worker to listen", || worker_settled(&pool)).await;

    // A listener of the test's own, directly connected, reads each notification. Postgres starts a
    // new LISTEN of this database at the position of the furthest listener, so once this one has
    // read a notification, a listener that reconnects afterwards never sees it.
    let mut witness = PgListener::connect_with(&pool).await.unwrap();
    witness.listen("courier_inbox").await.unwrap();

    // Drop the worker's listening connection, and store a row before it can be back: its NOTIFY
    // reaches only the witness.
    proxy.cut_and_hold();
    let row = Delivery::new(Message::new("orders", "while nobody listens"), "billing");
    inbox.insert(&pool, &row).await.unwrap();
    tokio::time::timeout(PATIENCE, witness.recv())
        .await
        .expect("the witness hears the row's NOTIFY")
        .unwrap();
    proxy.release();

    eventually(
        "the row stored while the listener was away to be processed",
        || async { inbox.pending("billing").await.unwrap() == 0 },
    )
    .await;
    shutdown.cancel();
    working.await.unwrap();
}
