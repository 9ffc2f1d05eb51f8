//! The console's pages on a MySQL / MariaDB outbox: the `outbox-relay` binary against the test
//! MariaDB and a real broker-lite, read over HTTP.

mod console_support;

use std::process::Command;

use broker_lite::embedded::{self, EmbeddedConfig};
use console_support::{Relay, TOKEN};
use courier_test_support::MySqlTestDatabase;
use uuid::Uuid;

const RELAY: &str = env!("CARGO_BIN_EXE_outbox-relay");

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
    let relay = Relay::start(&url, &addr, "127.0.0.1:0", "run", Some(TOKEN));
    let bearer = format!("Bearer {TOKEN}");
    let relay = tokio::task::spawn_blocking(move || {
        let get = |path: &str| relay.get(path, &[]);
        let (status, body) = get("/console");
        assert_eq!(status, 200, "{body}");
        assert!(!body.contains("Cannot read the outbox"), "{body}");
        assert!(
            body.contains("<td><a href=\"/console/failures?topic=payments\">payments</a></td>"),
            "{body}"
        );
        let (status, body) = get("/console/failures?key=order-7");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(&failed.to_string()), "{body}");
        let (status, body) = get(&format!("/console/failures/message?id={failed}"));
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("&quot;amount&quot;: 42"), "{body}");
        let (status, body) = get(&format!("/console/trace?q={failed}"));
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("gave up: in the failure table"), "{body}");
        assert!(!body.contains("could not be read"), "{body}");
        let (status, body) = get("/console/trace?q=order-7");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(&failed.to_string()), "{body}");
        assert!(!body.contains("class=\"notice\""), "{body}");

        // A purge from the console is in MySQL's audit table and on the Audit page.
        let (status, body) = relay.post(
            "/console/failures/apply",
            &[("Authorization", &bearer), ("X-Console-User", "dave")],
            "action=purge&scope=matching&key=order-7",
        );
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("Purged 1 failed message(s)."), "{body}");
        let (status, body) = get("/console/audit?action=purge");
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains(
                "<td>dave (bearer)</td><td>purge</td><td>failure table</td>\
                           <td>matching a filter: key=order-7</td><td>1</td><td>ok</td>"
            ),
            "{body}"
        );
        relay
    })
    .await
    .unwrap();
    let audited: (String, String, Option<i64>) =
        sqlx::query_as("SELECT actor, action, count FROM outbox_console_audit")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!(
        audited,
        ("dave (bearer)".to_owned(), "purge".to_owned(), Some(1))
    );
    drop(relay);
    broker.shutdown().await.unwrap();
}
