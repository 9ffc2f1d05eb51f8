//! The console's pages on a MySQL / MariaDB outbox: the `outbox-relay` binary against the test
//! MariaDB and a real broker-lite, read over HTTP.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use broker_lite::embedded::{self, EmbeddedConfig};
use courier_test_support::MySqlTestDatabase;
use uuid::Uuid;

const RELAY: &str = env!("CARGO_BIN_EXE_outbox-relay");

/// Kills the child process on drop.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    (response[9..12].parse().unwrap(), response)
}

#[tokio::test]
async fn the_console_reads_a_mysql_outbox() {
    let db = MySqlTestDatabase::create().await;
    let url = db.url();
    let migrated = Command::new(RELAY)
        .args(["--database-url", &url, "migrate"])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    let failed = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO outbox_failures (id, seq, topic, `key`, headers, payload, created_at, attempts, last_error, failed_at)
         VALUES (?, 1, 'payments', 'order-7', '{}', ?, NOW(6), 16, 'connection refused', NOW(6))",
    )
    .bind(failed)
    .bind(br#"{"amount":42}"#.as_slice())
    .execute(db.pool())
    .await
    .unwrap();

    let data = tempfile::tempdir().unwrap();
    let broker = embedded::start(data.path(), EmbeddedConfig::default())
        .await
        .unwrap();
    let addr = broker.addr().to_string();
    let mut child = KillOnDrop(
        Command::new(RELAY)
            .args(["--database-url", &url, "--broker", &addr])
            .args(["--http-listen", "127.0.0.1:0", "run"])
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
        .strip_prefix("outbox-relay http on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    tokio::task::spawn_blocking(move || {
        let (status, body) = get(&console, "/console");
        assert_eq!(status, 200, "{body}");
        assert!(!body.contains("Cannot read the outbox"), "{body}");
        assert!(
            body.contains("<td><a href=\"/console/failures?topic=payments\">payments</a></td>"),
            "{body}"
        );
        let (status, body) = get(&console, "/console/failures?key=order-7");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(&failed.to_string()), "{body}");
        let (status, body) = get(&console, &format!("/console/failures/message?id={failed}"));
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("&quot;amount&quot;: 42"), "{body}");
        let (status, body) = get(&console, &format!("/console/trace?q={failed}"));
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("gave up: in the failure table"), "{body}");
        assert!(!body.contains("could not be read"), "{body}");
        let (status, body) = get(&console, "/console/trace?q=order-7");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(&failed.to_string()), "{body}");
        assert!(!body.contains("class=\"notice\""), "{body}");
    })
    .await
    .unwrap();
    drop(child);
    broker.shutdown().await.unwrap();
}
