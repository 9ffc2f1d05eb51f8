//! What an idempotent delivery costs on Postgres in round trips, counted at the protocol: a TCP
//! proxy between the pool and the server counts the client's `Query` and `Sync` messages (each
//! one ends a request the client then waits on). The handler runs one statement; the layer adds
//! two round trips, not four: `INSERT record; BEGIN` together, and the check that the transaction
//! is not aborted together with its `COMMIT`. Also: keys that need quoting are recorded verbatim,
//! and a duplicate leaves the (only) pooled connection usable.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use courier_middleware::{Delivery, Handled, IdempotencyKey, IdempotencyLayer, TxDelivery};
use courier_outbox::Message;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{Executor, PgPool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::{BoxError, Layer, ServiceExt};

courier_test_support::postgres_for_tests!();

/// The client's requests the proxy saw while `counting` was on.
#[derive(Default)]
struct Counter {
    counting: AtomicBool,
    requests: AtomicU32,
}

/// Forwards connections on a free port to `upstream`, counting the client's `Query` ('Q') and
/// `Sync` ('S') messages while counting is on.
async fn proxy(upstream: String, counter: Arc<Counter>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(&upstream).await.unwrap();
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
            });
            let counter = counter.clone();
            tokio::spawn(async move {
                // The startup message has no type byte; every later one does.
                let (mut pending, mut startup, mut buf) = (Vec::new(), true, [0u8; 8192]);
                loop {
                    let n = match client_read.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    pending.extend_from_slice(&buf[..n]);
                    loop {
                        let head = usize::from(!startup);
                        if pending.len() < head + 4 {
                            break;
                        }
                        let len = u32::from_be_bytes(pending[head..head + 4].try_into().unwrap());
                        let total = head + len as usize;
                        if pending.len() < total {
                            break;
                        }
                        if !startup
                            && matches!(pending[0], b'Q' | b'S')
                            && counter.counting.load(Ordering::SeqCst)
                        {
                            counter.requests.fetch_add(1, Ordering::SeqCst);
                        }
                        startup = false;
                        pending.drain(..total);
                    }
                    if server_write.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// A pool of one connection through the proxy. Counting stops when the connection is released,
/// before the pool's own check of it.
async fn proxied(pool: &PgPool, counter: &Arc<Counter>) -> PgPool {
    let options: PgConnectOptions = (*pool.connect_options()).clone();
    let upstream = format!("{}:{}", options.get_host(), options.get_port());
    let port = proxy(upstream, counter.clone()).await;
    let stop = counter.clone();
    PgPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .after_release(move |_, _| {
            stop.counting.store(false, Ordering::SeqCst);
            Box::pin(async { Ok(true) })
        })
        .connect_with(
            options
                .host("127.0.0.1")
                .port(port)
                .ssl_mode(PgSslMode::Disable),
        )
        .await
        .unwrap()
}

fn handler() -> impl tower::Service<TxDelivery, Response = (), Error = BoxError, Future: Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(|request: TxDelivery| async move {
        let mut conn = request.tx().lock().await;
        sqlx::query("INSERT INTO effects (message_id) VALUES ($1)")
            .bind(request.delivery.message.id)
            .execute(&mut *conn)
            .await?;
        Ok::<_, BoxError>(())
    })
}

/// Waits (bounded) until the pool's only connection is back and idle, its release done.
async fn settled(pool: &PgPool) {
    for _ in 0..500 {
        if pool.num_idle() == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the pooled connection did not come back");
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn an_idempotent_delivery_adds_two_round_trips_to_the_handlers_on_postgres(pool: PgPool) {
    pool.execute("CREATE TABLE effects (message_id uuid PRIMARY KEY)")
        .await
        .unwrap();
    let counter = Arc::new(Counter::default());
    let proxied = proxied(&pool, &counter).await;
    let service = IdempotencyLayer::new(proxied.clone()).layer(handler());

    // The first delivery prepares the handler's statement (a round trip of its own).
    let warm = Message::new("payments", "warm");
    let done = service
        .clone()
        .oneshot(Delivery::new(warm, "billing"))
        .await;
    assert_eq!(done.unwrap(), Handled::Processed(()));
    settled(&proxied).await;

    counter.counting.store(true, Ordering::SeqCst);
    let message = Message::new("payments", "p");
    let done = service
        .clone()
        .oneshot(Delivery::new(message, "billing"))
        .await;
    assert_eq!(done.unwrap(), Handled::Processed(()));
    settled(&proxied).await;
    assert_eq!(
        counter.requests.load(Ordering::SeqCst),
        1 + 2,
        "the handler's one statement plus the layer's two round trips (record + begin, check + \
         commit)"
    );
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn keys_that_need_quoting_are_recorded_verbatim_and_deduplicated(pool: PgPool) {
    pool.execute("CREATE TABLE effects (message_id uuid PRIMARY KEY)")
        .await
        .unwrap();
    let counter = Arc::new(Counter::default());
    // One connection: a duplicate that left it in an aborted transaction would fail what follows.
    let proxied = proxied(&pool, &counter).await;
    let service = IdempotencyLayer::new(proxied.clone())
        .key(IdempotencyKey::Header("idempotency-key".into()))
        .layer(handler());
    let keys = [
        r"o'brien",
        r"back\slash\'",
        r"'); DROP TABLE effects; --",
        "$$ dollar $tag$ \u{e9}\u{1f600}",
    ];
    for key in keys {
        let first = Message::new("payments", "p").with_header("idempotency-key", key);
        let again = Message::new("payments", "p").with_header("idempotency-key", key);
        let done = service
            .clone()
            .oneshot(Delivery::new(first, "billing"))
            .await;
        assert_eq!(done.unwrap(), Handled::Processed(()), "{key}");
        let done = service
            .clone()
            .oneshot(Delivery::new(again, "billing"))
            .await;
        assert_eq!(done.unwrap(), Handled::Duplicate, "{key}");
    }
    let mut recorded: Vec<String> = sqlx::query_scalar("SELECT key FROM courier_inbox.processed")
        .fetch_all(&pool)
        .await
        .unwrap();
    recorded.sort();
    let mut expected: Vec<String> = keys.iter().map(|k| format!("h:{k}")).collect();
    expected.sort();
    assert_eq!(recorded, expected);
    let effects: i64 = sqlx::query_scalar("SELECT count(*) FROM effects")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(effects, keys.len() as i64);
}
