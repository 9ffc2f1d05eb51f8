//! The `outbox-relay` binary on MySQL / MariaDB: `mysql://` and `mariadb://` URLs for migrate,
//! run, failures and check, as on Postgres (`relay_sidecar.rs`).

use std::collections::HashSet;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use broker_lite::client::{Consumer, ConsumerConfig};
use broker_lite::embedded::{self, EmbeddedConfig};
use courier_outbox::{Message, Outbox};
use courier_test_support::MySqlTestDatabase;
use uuid::Uuid;

const RELAY: &str = env!("CARGO_BIN_EXE_outbox-relay");

/// Runs the binary to completion off the test's runtime (an embedded broker keeps answering).
async fn relay(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(RELAY)
            .args(&args)
            .env_remove("DATABASE_URL")
            .output()
            .expect("the outbox-relay binary runs")
    })
    .await
    .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The test database's URL with the `mariadb://` scheme, which the relay accepts as `mysql://`.
fn mariadb_url(db: &MySqlTestDatabase) -> String {
    let url = db.url();
    let (_, rest) = url.split_once("://").unwrap();
    format!("mariadb://{rest}")
}

#[tokio::test]
async fn migrate_run_failures_and_check_on_a_mysql_url() {
    let db = MySqlTestDatabase::create().await;
    let url = db.url();

    // Before the migration every command that needs the tables says what to do.
    let output = relay(&["--database-url", &url, "failures", "list"]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("run `outbox-relay migrate` first"),
        "{}",
        text(&output.stderr)
    );
    let output = relay(&["--database-url", &mariadb_url(&db), "migrate"]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));

    let data = tempfile::tempdir().unwrap();
    let broker = embedded::start(data.path(), EmbeddedConfig::default())
        .await
        .unwrap();
    broker.broker().create_topic("orders", 4).await.unwrap();
    let addr = broker.addr().to_string();

    let output = relay(&["--database-url", &url, "--broker", &addr, "check"]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains("database: outbox tables present"),
        "{}",
        text(&output.stdout)
    );

    let committed: Vec<Message> = (0..20)
        .map(|i| Message::new("orders", format!("order {i}")).with_key(format!("order-{}", i % 5)))
        .collect();
    Outbox::new()
        .enqueue_batch(db.pool(), &committed)
        .await
        .unwrap();
    let mut child = Command::new(RELAY)
        .args(["--database-url", &url, "--broker", &addr, "run"])
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let consumer = Consumer::connect(
        addr.as_str(),
        ConsumerConfig::new("sidecar-mysql", "orders"),
    )
    .await
    .unwrap();
    let mut received = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while received.len() < committed.len() && tokio::time::Instant::now() < deadline {
        for delivery in consumer.pull(32, Duration::from_millis(500)).await.unwrap() {
            received.insert(delivery.message.message_id);
            consumer.ack(&delivery).await.unwrap();
        }
    }
    let expected: HashSet<Uuid> = committed.iter().map(|m| m.id).collect();
    assert_eq!(received, expected);
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(
        status.success(),
        "outbox-relay exited with {status} after SIGTERM"
    );
    let pending: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox_messages")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(pending, 0);

    // The failure table: list, replay (one id is in the outbox again: kept), purge.
    let [free, taken] = [Uuid::now_v7(), Uuid::now_v7()];
    for (seq, id) in [(1_i64, free), (2, taken)] {
        sqlx::query(
            "INSERT INTO outbox_failures
                 (id, seq, topic, `key`, tag, headers, payload, created_at, attempts,
                  last_error, failed_at)
             VALUES (?, ?, 'orders', NULL, NULL, '{}', x'00', UTC_TIMESTAMP(6), 16,
                     'Connection refused', UTC_TIMESTAMP(6) - INTERVAL ? MINUTE)",
        )
        .bind(id)
        .bind(seq)
        .bind(seq)
        .execute(db.pool())
        .await
        .unwrap();
    }
    let output = relay(&["--database-url", &url, "failures", "list"]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let listed = text(&output.stdout);
    assert!(listed.contains("2 failed message(s)"), "{listed}");
    assert!(listed.contains(&free.to_string()) && listed.contains(&taken.to_string()));

    Outbox::new()
        .enqueue(db.pool(), &Message::new("orders", "again").with_id(taken))
        .await
        .unwrap();
    let output = relay(&["--database-url", &url, "failures", "replay", "--all"]).await;
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{stdout}{}",
        text(&output.stderr)
    );
    assert!(
        stdout.contains("replayed 1 message(s) into the outbox"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "kept {taken}: a message with this id is already in the outbox"
        )),
        "{stdout}"
    );

    let output = relay(&[
        "--database-url",
        &url,
        "failures",
        "purge",
        "--id",
        &taken.to_string(),
    ])
    .await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("purged 1 failed message(s)"));
    let failures: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox_failures")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(failures, 0);
}

#[tokio::test]
async fn an_unknown_scheme_names_the_ones_accepted() {
    let output = relay(&["--database-url", "oracle://db/app", "migrate"]).await;
    assert_ne!(output.status.code(), Some(0));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("postgres://, postgresql://, mysql:// or mariadb://"),
        "{stderr}"
    );
}
