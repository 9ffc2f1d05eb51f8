//! The console's write API without a browser: the `outbox-relay` binary against Postgres and a
//! real broker-lite. A replay of more messages than one chunk runs in the background behind a
//! progress page; writes without the token or from another origin are refused.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use broker_lite::embedded::{self, EmbeddedConfig};
use sqlx::{ConnectOptions, PgPool};

courier_test_support::postgres_for_tests!();

const TOKEN: &str = "progress-test-token";

/// Kills the child process on drop.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.1 request; the status and the whole response (headers and body).
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Content-Type: application/x-www-form-urlencoded\r\n\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    (response[9..12].parse().unwrap(), response)
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn a_long_replay_runs_in_the_background_with_progress_and_needs_the_token(pool: PgPool) {
    let data = tempfile::tempdir().unwrap();
    let broker = embedded::start(data.path(), EmbeddedConfig::default())
        .await
        .unwrap();
    broker.broker().create_topic("payments", 4).await.unwrap();
    let addr = broker.addr().to_string();
    // More than one chunk (1000) of failures.
    sqlx::query(
        "INSERT INTO outbox.failures (id, seq, topic, key, headers, payload, created_at, attempts, last_error)
         SELECT gen_random_uuid(), g, 'payments', 'order-' || g, '{}', 'x', now(), 16, 'timed out'
         FROM generate_series(1, 2500) g",
    )
    .execute(&pool)
    .await
    .unwrap();

    let url = pool.connect_options().to_url_lossy().to_string();
    let relay = courier_test_support::workspace_binary("outbox-relay", "outbox-relay");
    let mut child = KillOnDrop(
        Command::new(relay)
            .args(["--database-url", &url, "--broker", &addr])
            .args(["--http-listen", "127.0.0.1:0", "run"])
            .env_remove("DATABASE_URL")
            .env("OUTBOX_RELAY_CONSOLE_TOKEN", TOKEN)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let console = line
        .trim()
        .strip_prefix("outbox-relay http on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    let origin = format!("http://{console}");
    let bearer = format!("Bearer {TOKEN}");
    let form = "action=replay&scope=matching&topic=payments";

    let blocking = {
        let console = console.clone();
        move || {
            // Without the token: 401, and nothing moves.
            let (status, body) = http(
                &console,
                "POST",
                "/console/failures/apply",
                &[("Origin", &origin)],
                form,
            );
            assert_eq!(status, 401, "{body}");
            // With the token but from another site: 403.
            let (status, body) = http(
                &console,
                "POST",
                "/console/failures/apply",
                &[
                    ("Origin", "http://evil.example"),
                    ("Authorization", &bearer),
                ],
                form,
            );
            assert_eq!(status, 403, "{body}");
            // The confirmation counts them all.
            let (status, body) = http(
                &console,
                "POST",
                "/console/failures/confirm",
                &[("Origin", &origin), ("Authorization", &bearer)],
                form,
            );
            assert_eq!(status, 200, "{body}");
            assert!(
                body.contains("Replay <b>2500</b> failed message(s)?"),
                "{body}"
            );
            // With the token: a background job and its progress page.
            let (status, response) = http(
                &console,
                "POST",
                "/console/failures/apply",
                &[("Origin", &origin), ("Authorization", &bearer)],
                form,
            );
            assert_eq!(
                status, 303,
                "a long replay answers with its progress page: {response}"
            );
            let location = response
                .lines()
                .find_map(|l| l.strip_prefix("location: "))
                .unwrap_or_else(|| panic!("no location: {response}"))
                .trim()
                .to_owned();
            assert!(location.starts_with("/console/jobs/"), "{location}");
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                let (status, body) = http(&console, "GET", &location, &[], "");
                assert_eq!(status, 200, "{body}");
                if body.contains("id=\"result\"") {
                    assert!(body.contains("Replayed 2500 message(s)"), "{body}");
                    break;
                }
                assert!(body.contains("<progress id=\"progress\""), "{body}");
                assert!(
                    std::time::Instant::now() < deadline,
                    "the job never finished: {body}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    tokio::task::spawn_blocking(blocking).await.unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.failures")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    drop(child);
    broker.shutdown().await.unwrap();
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn off_loopback_the_pages_need_a_sign_in_too(pool: PgPool) {
    let data = tempfile::tempdir().unwrap();
    let broker = embedded::start(data.path(), EmbeddedConfig::default())
        .await
        .unwrap();
    let addr = broker.addr().to_string();
    let url = pool.connect_options().to_url_lossy().to_string();
    let relay = courier_test_support::workspace_binary("outbox-relay", "outbox-relay");
    let mut child = KillOnDrop(
        Command::new(relay)
            .args(["--database-url", &url, "--broker", &addr])
            .args(["--http-listen", "0.0.0.0:0", "run"])
            .env_remove("DATABASE_URL")
            .env("OUTBOX_RELAY_CONSOLE_TOKEN", TOKEN)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .1
        .to_owned();
    let console = format!("127.0.0.1:{port}");
    let bearer = format!("Bearer {TOKEN}");
    tokio::task::spawn_blocking(move || {
        for page in [
            "/console",
            "/console/failures",
            "/console/trace?q=x",
            "/console/broker",
        ] {
            let (status, body) = http(&console, "GET", page, &[], "");
            assert_eq!(status, 401, "{page} without a sign-in: {body}");
            let (status, body) = http(&console, "GET", page, &[("Authorization", &bearer)], "");
            assert_eq!(status, 200, "{page} with the token: {body}");
        }
        let (status, body) = http(&console, "GET", "/console/login", &[], "");
        assert_eq!(status, 200, "the login form is always reachable: {body}");
        // The health endpoints stay open.
        assert_eq!(http(&console, "GET", "/healthz", &[], "").0, 200);
    })
    .await
    .unwrap();
    drop(child);
    broker.shutdown().await.unwrap();
}

/// `outbox-relay console`: the console alone, beside an application that relays in-process.
#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn the_console_runs_alone_beside_an_embedded_relay(pool: PgPool) {
    let data = tempfile::tempdir().unwrap();
    let broker = embedded::start(data.path(), EmbeddedConfig::default())
        .await
        .unwrap();
    let addr = broker.addr().to_string();
    sqlx::query(
        "INSERT INTO outbox.failures (id, seq, topic, key, headers, payload, created_at, attempts, last_error)
         VALUES (gen_random_uuid(), 1, 'payments', 'order-1', '{}', 'x', now(), 16, 'timed out')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let url = pool.connect_options().to_url_lossy().to_string();
    let relay = courier_test_support::workspace_binary("outbox-relay", "outbox-relay");
    let mut child = KillOnDrop(
        Command::new(relay)
            .args(["--database-url", &url, "--broker", &addr])
            .args(["--http-listen", "127.0.0.1:0", "console"])
            .env_remove("DATABASE_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let console = line
        .trim()
        .strip_prefix("outbox-relay console on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    tokio::task::spawn_blocking(move || {
        let (status, body) = http(&console, "GET", "/console", &[], "");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("in another process"), "{body}");
        assert!(
            body.contains("<div class=\"card\" id=\"failures\">Failure table<b>1</b></div>"),
            "{body}"
        );
        let (status, body) = http(&console, "GET", "/console/broker", &[], "");
        assert_eq!(status, 200, "{body}");
        assert!(!body.contains("class=\"notice\""), "{body}");
    })
    .await
    .unwrap();
    drop(child);
    broker.shutdown().await.unwrap();
}
