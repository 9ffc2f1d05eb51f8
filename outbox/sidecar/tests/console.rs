//! The web console in a real browser: the real `outbox-relay` sidecar (this package's binary)
//! against Postgres and a real broker-lite, an idempotent consumer (courier-middleware) in this
//! process, and `console/browser-test/console.mjs` driving Debian's headless chromium through
//! Playwright (`playwright-core`).
//!
//! Scenarios, in one run: a replay without the token is refused (401); with the token, a failure
//! is seen, filtered by key, opened, replayed through the confirmation page, and the outbox
//! drains; another is purged with everything matching its error text, and 1500 behind the
//! progress page; a message is traced
//! (found by key) through the relay, the broker and the consumer, every step
//! shown; on the broker page a dead letter is redriven, and its trace shows it dead-lettered,
//! redriven and handled; the Audit page lists the sign-in, the replay, the purges and the redrive
//! by the signed-in operator, newest first, and filters them by action; signing out ends the
//! session. Screenshots of each page go to
//! `$CARGO_TARGET_TMPDIR/console-screenshots/` and their paths are printed.
//!
//! Needs `node` and `chromium` (Debian: `apt-get install chromium chromium-driver nodejs npm`) and
//! `npm ci` in `console/browser-test`; `.ci/run` installs them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use broker_lite::broker::TraceKind;
use broker_lite::embedded::{self, EmbeddedConfig};
use broker_lite_client::ConsumerConfig;
use courier_middleware::{
    BrokerLiteSource, CatchPanicLayer, Consumer, IdempotencyLayer, Reject, TxDelivery,
};
use courier_outbox::{Message, Outbox};
use sqlx::{ConnectOptions, PgPool};
use tokio_util::sync::CancellationToken;
use tower::{BoxError, ServiceBuilder};
use uuid::Uuid;

courier_test_support::postgres_for_tests!();

const RELAY: &str = env!("CARGO_BIN_EXE_outbox-relay");
const TOKEN: &str = "console-test-token-7f3a";
/// Failures purged in one go from the console: more than one chunk, so it shows progress.
const BULK: i32 = 1_500;
/// Whether the consumer has refused the poison message already.
static POISON_REFUSED: AtomicBool = AtomicBool::new(false);
/// How long the relay and the consumer get for each step (polled, never slept out).
const PATIENCE: Duration = Duration::from_secs(60);

/// Kills the relay when the test ends, passed or not: a leftover relay holds the test database.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn browser_test_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../console/browser-test")
}

/// Says what to install when node, chromium or the npm packages are missing.
fn require_browser_tools() -> PathBuf {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|out| out.status.success()),
        "node is not installed: install it (Debian: apt-get install -y nodejs npm); .ci/run does"
    );
    assert!(
        Path::new(&chromium).exists(),
        "no chromium at {chromium}: install Debian's chromium and chromium-driver \
         (apt-get install -y --no-install-recommends chromium chromium-driver) or set CHROMIUM; \
         .ci/run does"
    );
    let dir = browser_test_dir();
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run `npm ci` in {}; .ci/run does",
        dir.display()
    );
    PathBuf::from(chromium)
}

async fn eventually<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn count(pool: &PgPool, sql: &str, id: Uuid) -> i64 {
    sqlx::query_scalar(sql)
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn the_console_replays_a_failure_and_traces_a_message_in_a_real_browser(pool: PgPool) {
    let chromium = require_browser_tools();
    let data = tempfile::tempdir().unwrap();
    let mut broker_config = EmbeddedConfig::default();
    // A topic must exist before it takes messages: the invoice's does not, at first.
    broker_config.broker.auto_create_topics = false;
    let broker = embedded::start(data.path(), broker_config).await.unwrap();
    broker.broker().create_topic("orders", 4).await.unwrap();

    // An idempotent consumer of "orders", keeping its records in the outbox's database.
    let shutdown = CancellationToken::new();
    let source = BrokerLiteSource::connect(broker.addr(), ConsumerConfig::new("billing", "orders"))
        .await
        .unwrap()
        .with_broker_config(broker.broker().config());
    let handler = ServiceBuilder::new()
        .layer(CatchPanicLayer::new())
        .layer(IdempotencyLayer::new(pool.clone()))
        .service_fn(move |request: TxDelivery| {
            // The "poison" message is refused once (dead-lettered at once by `Reject`) and
            // handled after the console redrives it.
            let refuse = &request.delivery.message.payload[..] == b"poison"
                && !POISON_REFUSED.swap(true, Ordering::SeqCst);
            async move {
                if refuse {
                    return Err(Box::new(Reject::new("poison: cannot be handled yet")) as BoxError);
                }
                Ok::<_, BoxError>(())
            }
        });
    let consumer = Consumer::builder(source, handler)
        .group("billing")
        .poll_wait(Duration::from_millis(100))
        .build();
    let consuming = tokio::spawn(consumer.run(shutdown.clone()));

    // The relay keeps sent rows (retention) so that the trace shows them, and gives up quickly on
    // the topic the broker does not have yet.
    let config = data.path().join("relay.toml");
    std::fs::write(
        &config,
        "[relay]\nmax_attempts = 2\nbackoff_base_ms = 20\nbackoff_max_ms = 50\n\
         poll_interval_ms = 100\nretention_hours = 1\n",
    )
    .unwrap();
    let url = pool.connect_options().to_url_lossy().to_string();
    let mut child = Command::new(RELAY)
        .arg("--config")
        .arg(&config)
        .args([
            "--database-url",
            &url,
            "--broker",
            &broker.addr().to_string(),
        ])
        .args(["--http-listen", "127.0.0.1:0", "run"])
        .env_remove("DATABASE_URL")
        .env("OUTBOX_RELAY_CONSOLE_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let relay = Killed(child);
    // Read on a blocking thread: the relay connects to the broker embedded in this test's
    // runtime, which must answer its opening ping while the relay's first lines are awaited.
    let listen = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let listen = loop {
            let line = lines
                .next()
                .expect("the relay exited before it printed its HTTP address")
                .unwrap();
            if let Some(address) = line.strip_prefix("outbox-relay http on ") {
                break address.trim().to_owned();
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        listen
    })
    .await
    .unwrap();

    // One message the broker cannot take yet (no such topic) and one it can.
    let invoice = Message::new("invoices", r#"{"invoice":7,"amount":"12.50"}"#)
        .with_key("invoice-7")
        .with_header("content-type", "application/json");
    let order = Message::new("orders", "order 42").with_key("order-42");
    // One after the other: a batch with a message for a missing topic fails as a whole
    // (SEND_BATCH is refused), which would park the order too.
    Outbox::new().enqueue(&pool, &order).await.unwrap();
    eventually("the order is handled by the consumer", || {
        let pool = pool.clone();
        async move {
            count(
                &pool,
                "SELECT count(*) FROM courier_inbox.processed WHERE key = $1::uuid::text",
                order.id,
            )
            .await
                == 1
        }
    })
    .await;
    let poison = Message::new("orders", "poison").with_key("order-13");
    Outbox::new().enqueue(&pool, &poison).await.unwrap();
    eventually("the poison message is dead-lettered", || async {
        broker
            .broker()
            .trace(poison.id)
            .iter()
            .any(|event| matches!(event.kind, TraceKind::DeadLettered { .. }))
    })
    .await;
    Outbox::new().enqueue(&pool, &invoice).await.unwrap();
    eventually("the invoice is in the failure table", || {
        let pool = pool.clone();
        async move {
            count(
                &pool,
                "SELECT count(*) FROM outbox.failures WHERE id = $1",
                invoice.id,
            )
            .await
                == 1
        }
    })
    .await;
    // A failure for good: the operator purges it (everything matching its error text).
    // Its key is markup: the pages must show it as text, never run it.
    let refund = Message::new("refunds", "refund 3")
        .with_key("refund-3<script>window.pwned=1</script><img src=x onerror=\"window.pwned=2\">");
    Outbox::new().enqueue(&pool, &refund).await.unwrap();
    eventually("the refund is in the failure table", || {
        let pool = pool.clone();
        async move {
            count(
                &pool,
                "SELECT count(*) FROM outbox.failures WHERE id = $1",
                refund.id,
            )
            .await
                == 1
        }
    })
    .await;
    // A backlog of failures larger than one chunk (1000), for the purge with progress. Written
    // straight into the failure table: 1500 real failures would only take longer to make.
    sqlx::query(
        "INSERT INTO outbox.failures
             (id, seq, topic, key, headers, payload, created_at, attempts, last_error)
         SELECT gen_random_uuid(), g, 'audit-log', 'audit-' || g, '{}'::jsonb, 'entry'::bytea,
                now(), 2, 'unknown topic \"audit-log\"'
         FROM generate_series(1, $1) AS g",
    )
    .bind(BULK)
    .execute(&pool)
    .await
    .unwrap();
    // The administrator creates the missing topic: now a replay can succeed.
    broker.broker().create_topic("invoices", 2).await.unwrap();

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let script = browser_test_dir().join("console.mjs");
    let browser = tokio::task::spawn_blocking({
        let shots = shots.clone();
        move || {
            Command::new("node")
                .arg(&script)
                .current_dir(browser_test_dir())
                .env("CONSOLE_URL", format!("http://{listen}"))
                .env("CONSOLE_TOKEN", TOKEN)
                .env("FAILED_ID", invoice.id.to_string())
                .env("FAILED_KEY", "invoice-7")
                .env("TRACED_ID", order.id.to_string())
                .env("DEAD_ID", poison.id.to_string())
                .env("PURGE_ERROR", "unknown topic \"refunds\"")
                .env("TRACED_KEY", "order-42")
                .env("BULK_TOPIC", "audit-log")
                .env("BULK_SIZE", BULK.to_string())
                .env("SHOTS", &shots)
                .env("CHROMIUM", &chromium)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&browser.stdout);
    let err = String::from_utf8_lossy(&browser.stderr);
    println!("{out}");
    for path in out.lines().filter_map(|l| l.strip_prefix("screenshot ")) {
        println!("console screenshot: {path}");
    }
    assert!(
        browser.status.success() && out.contains("RESULT {\"ok\":true"),
        "the browser scenario failed ({}):\n{out}\n{err}",
        browser.status
    );

    // What the browser saw is what happened: the invoice was replayed, published and handled.
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbox.failures WHERE id = $1",
            invoice.id
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbox.messages WHERE id = $1 AND sent_at IS NOT NULL",
            invoice.id
        )
        .await,
        1
    );
    assert!(!broker.broker().trace(invoice.id).is_empty());
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbox.failures WHERE id = $1",
            refund.id
        )
        .await,
        0,
        "the refund was purged"
    );
    // The redriven message was handled: its idempotency record is there.
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM courier_inbox.processed WHERE key = $1::uuid::text",
            poison.id
        )
        .await,
        1
    );

    drop(relay);
    shutdown.cancel();
    tokio::time::timeout(PATIENCE, consuming)
        .await
        .expect("the consumer stops")
        .unwrap();
}
