//! The `outbox-relay` binary as users run it: a separate process between the application's
//! Postgres and a broker-lite server.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use broker_lite::client::{Consumer, ConsumerConfig};
use broker_lite::embedded::{self, EmbeddedConfig};
use broker_lite::storage::FlushMode;
use courier_outbox::{Message, Outbox};
use sqlx::{ConnectOptions, PgPool};
use uuid::Uuid;

courier_test_support::postgres_for_tests!();

const RELAY: &str = env!("CARGO_BIN_EXE_outbox-relay");

fn database_url(pool: &PgPool) -> String {
    pool.connect_options().to_url_lossy().to_string()
}

fn relay(args: &[&str]) -> Output {
    Command::new(RELAY)
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .expect("the outbox-relay binary runs")
}

/// Sends SIGTERM and waits; the relay must exit 0 after finishing its batch.
fn terminate(mut child: Child) {
    let pid = child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "outbox-relay exited with {status} after SIGTERM"
    );
}

fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    (status, response)
}

/// The relay's first line, read on a blocking thread: before it prints it the relay pings the
/// broker embedded in this test's single-threaded runtime, which must answer meanwhile. The rest
/// of the output is drained, so the relay never blocks writing it.
async fn first_line(stdout: std::process::ChildStdout) -> String {
    tokio::task::spawn_blocking(move || {
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        line
    })
    .await
    .unwrap()
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn relays_committed_messages_to_broker_lite_and_stops_on_sigterm(pool: PgPool) {
    let data = tempfile::tempdir().unwrap();
    let broker = embedded::start(data.path(), EmbeddedConfig::default())
        .await
        .unwrap();
    broker.broker().create_topic("orders", 4).await.unwrap();
    let addr = broker.addr().to_string();

    let outbox = Outbox::new();
    let committed: Vec<Message> = (0..20)
        .map(|i| Message::new("orders", format!("order {i}")).with_key(format!("order-{}", i % 5)))
        .collect();
    outbox.enqueue_batch(&pool, &committed).await.unwrap();
    let mut rolled_back = pool.begin().await.unwrap();
    outbox
        .enqueue(&mut *rolled_back, &Message::new("orders", "never"))
        .await
        .unwrap();
    rolled_back.rollback().await.unwrap();

    let url = database_url(&pool);
    // Killed if the test fails before its SIGTERM: a relay left running would hold the test
    // database open.
    let mut child = KillOnDrop(Some(
        Command::new(RELAY)
            .args([
                "--database-url",
                &url,
                "--broker",
                &addr,
                "--http-listen",
                "127.0.0.1:0",
                "run",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let line = first_line(child.0.as_mut().unwrap().stdout.take().unwrap()).await;
    let http = line
        .trim()
        .strip_prefix("outbox-relay http on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();

    let consumer = Consumer::connect(addr.as_str(), ConsumerConfig::new("sidecar-test", "orders"))
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

    let (status, body) = tokio::task::spawn_blocking({
        let http = http.clone();
        move || http_get(&http, "/readyz")
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    // The consumer may see the batch before the relay has recorded it (the broker acks the
    // batch, then the relay commits and counts): wait for the count, bounded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = tokio::task::spawn_blocking({
            let http = http.clone();
            move || http_get(&http, "/metrics")
        })
        .await
        .unwrap();
        assert_eq!(status, 200);
        if body.contains("outbox_published_total") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let child = child.0.take().unwrap();
    tokio::task::spawn_blocking(move || terminate(child))
        .await
        .unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    broker.shutdown().await.unwrap();
}

/// Kills the child process on drop unless it was taken out.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `/readyz` until its status is `wanted`; the last body. Fails after 30 s.
async fn wait_for_readyz(http: &str, wanted: u16) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = tokio::task::spawn_blocking({
            let http = http.to_owned();
            move || http_get(&http, "/readyz")
        })
        .await
        .unwrap();
        if status == wanted {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never answered {wanted}; last {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn readyz_is_503_while_the_broker_is_down_and_the_backlog_follows_its_return(pool: PgPool) {
    let data = tempfile::tempdir().unwrap();
    let mut config = EmbeddedConfig::default();
    let broker = embedded::start(data.path(), config.clone()).await.unwrap();
    broker.broker().create_topic("orders", 4).await.unwrap();
    let addr = broker.addr();

    let url = database_url(&pool);
    let mut child = Command::new(RELAY)
        .args([
            "--database-url",
            &url,
            "--broker",
            &addr.to_string(),
            "--http-listen",
            "127.0.0.1:0",
            "run",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Killed if the test fails before it terminates the relay: no relay outlives the test.
    let mut child = KillOnDrop(Some(child));
    let line = first_line(stdout).await;
    let http = line
        .trim()
        .strip_prefix("outbox-relay http on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    wait_for_readyz(&http, 200).await;

    broker.shutdown().await.unwrap();
    let outbox = Outbox::new();
    let during: Vec<Message> = (0..10)
        .map(|i| Message::new("orders", format!("order {i}")))
        .collect();
    outbox.enqueue_batch(&pool, &during).await.unwrap();
    let body = wait_for_readyz(&http, 503).await;
    assert!(body.contains("BrokerUnavailable"), "{body}");
    let attempts: Vec<i32> = sqlx::query_scalar("SELECT attempts FROM outbox.messages")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        attempts,
        vec![0; during.len()],
        "the outage counted attempts"
    );

    config.listen = addr;
    let broker = embedded::start(data.path(), config).await.unwrap();
    wait_for_readyz(&http, 200).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.messages")
            .fetch_one(&pool)
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} messages left in the outbox"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for message in &during {
        assert!(broker.broker().lookup(message.id).await.unwrap().is_some());
    }
    let child = child.0.take().unwrap();
    tokio::task::spawn_blocking(move || terminate(child))
        .await
        .unwrap();
    broker.shutdown().await.unwrap();
}

#[sqlx::test]
async fn missing_migrations_are_a_clear_error(pool: PgPool) {
    let url = database_url(&pool);
    let output = relay(&["--database-url", &url, "failures", "list"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("run `outbox-relay migrate` first"),
        "{stderr}"
    );

    let output = relay(&["--database-url", &url, "migrate"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = relay(&["--database-url", &url, "failures", "list"]);
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("0 failed message(s)"));
}

#[test]
fn bad_settings_exit_non_zero_with_a_message() {
    let output = relay(&["--database-url", "sqlite://x.db", "migrate"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("is not a postgres://, postgresql://, mysql:// or mariadb:// URL")
    );

    let output = relay(&[
        "--database-url",
        "postgres://nobody:secret@127.0.0.1:1/x",
        "migrate",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Connection refused"), "{stderr}");
    assert!(!stderr.contains("secret"), "the password leaked: {stderr}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    std::fs::write(&file, "[relay]\nbatch_size = 0\n").unwrap();
    let output = relay(&["--config", file.to_str().unwrap(), "check"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("relay.batch_size"));

    std::fs::write(&file, "[broker]\nadress = \"typo\"\n").unwrap();
    let output = relay(&["--config", file.to_str().unwrap(), "check"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown field `adress`"));
}

#[test]
fn a_password_in_the_query_string_never_reaches_the_output() {
    let output = relay(&[
        "--database-url",
        "postgres://nobody@127.0.0.1:1/x?password=secret&sslmode=disable",
        "migrate",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Connection refused"), "{stderr}");
    assert!(stderr.contains("password=***"), "{stderr}");
    assert!(!stderr.contains("secret"), "the password leaked: {stderr}");
}

/// Runs `outbox-relay run` with a config file holding `toml` against a database nobody listens
/// on: a setting it refuses must be refused as invalid configuration (exit 2) before it tries.
fn run_with(toml: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    std::fs::write(&file, toml).unwrap();
    relay(&[
        "--config",
        file.to_str().unwrap(),
        "--database-url",
        "postgres://nobody@127.0.0.1:1/x",
        "--http-listen",
        "off",
        "run",
    ])
}

#[test]
fn timeouts_that_cannot_work_are_invalid_configuration() {
    for (toml, expected) in [
        (
            "[broker]\nsend_timeout_ms = 0\n",
            "broker.send_timeout_ms is 0, below 100",
        ),
        (
            "[broker]\nsend_timeout_ms = 50\nretries = 4\n",
            "store the message up to 5 times",
        ),
        (
            "[relay]\npublish_timeout_ms = 0\n",
            "relay.publish_timeout_ms is 0",
        ),
    ] {
        let output = run_with(toml);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{toml}: {stderr}");
        assert!(stderr.contains(expected), "{toml}: {stderr}");
    }
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn failures_replay_reports_the_failures_it_kept_because_their_id_is_in_the_outbox(
    pool: PgPool,
) {
    let [free, taken] = [Uuid::now_v7(), Uuid::now_v7()];
    sqlx::query(
        "INSERT INTO outbox.failures
             (id, seq, topic, key, tag, headers, payload, created_at, attempts, last_error,
              failed_at)
         SELECT id, seq, 'orders', NULL, NULL, '{}', '\\x00', now(), 16, 'Connection refused',
                now() - seq * interval '1 minute'
         FROM unnest($1::uuid[]) WITH ORDINALITY AS u(id, seq)",
    )
    .bind(vec![free, taken])
    .execute(&pool)
    .await
    .unwrap();
    // The application enqueued one of them again, with its id.
    Outbox::new()
        .enqueue(&pool, &Message::new("orders", "again").with_id(taken))
        .await
        .unwrap();

    let url = database_url(&pool);
    let output = tokio::task::spawn_blocking(move || {
        relay(&["--database-url", &url, "failures", "replay", "--all"])
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
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
    assert!(
        stderr.contains("1 failed message(s) were kept in the failure table"),
        "{stderr}"
    );
    let kept: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM outbox.failures")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(kept, vec![taken]);
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(pending, 2);
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn check_reports_an_unreachable_broker(pool: PgPool) {
    let url = database_url(&pool);
    let output = relay(&["--database-url", &url, "--broker", "127.0.0.1:1", "check"]);
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("outbox tables present"), "{stdout}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot reach broker-lite at 127.0.0.1:1")
    );
}

/// Runs `outbox-relay check` against `broker` with the database of `pool` and a config file
/// holding `toml`; blocking, so the embedded broker keeps answering on the test's runtime.
async fn check(pool: &PgPool, broker: &embedded::EmbeddedBroker, toml: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    std::fs::write(&file, toml).unwrap();
    let args = [
        "--config".to_owned(),
        file.to_str().unwrap().to_owned(),
        "--database-url".to_owned(),
        database_url(pool),
        "--broker".to_owned(),
        broker.addr().to_string(),
        "check".to_owned(),
    ];
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = relay(&args);
        drop(dir);
        output
    })
    .await
    .unwrap()
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn check_warns_about_async_flush_on_critical_topics(pool: PgPool) {
    let data = tempfile::tempdir().unwrap();
    let mut config = EmbeddedConfig::default();
    config.broker.store.flush_mode = FlushMode::Async {
        interval: Duration::from_millis(200),
    };
    let broker = embedded::start(data.path(), config).await.unwrap();

    let output = check(
        &pool,
        &broker,
        "[broker]\ncritical_topics = [\"ORDER_CREATED\"]\n",
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("durability profile:"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("flush mode") && l.contains("async") && l.contains("200 ms")),
        "the flush mode comes from the broker: {stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("WARNING: ") && l.contains("ASYNC_FLUSH")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "broker-lite version: {}",
            env!("CARGO_PKG_VERSION")
        )),
        "{stdout}"
    );
    broker.shutdown().await.unwrap();
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn check_has_no_warnings_with_sync_flush_and_no_critical_topics(pool: PgPool) {
    let data = tempfile::tempdir().unwrap();
    let mut config = EmbeddedConfig::default();
    config.broker.store.flush_mode = FlushMode::Sync;
    let broker = embedded::start(data.path(), config).await.unwrap();

    let output = check(&pool, &broker, "[broker]\ncritical_topics = []\n").await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("flush mode") && l.contains("sync (SYNC_FLUSH")),
        "{stdout}"
    );
    assert!(stdout.contains("broker retention:    72 h"), "{stdout}");
    assert!(!stdout.contains("WARNING"), "{stdout}");
    assert!(stdout.lines().any(|l| l == "0 warning(s)"), "{stdout}");
    broker.shutdown().await.unwrap();
}
