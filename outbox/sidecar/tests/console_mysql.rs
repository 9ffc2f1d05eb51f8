//! The console's pages on a MySQL / MariaDB outbox: the `outbox-relay` binary against the test
//! MariaDB and a real broker-lite, read over HTTP.

mod console_support;

use std::process::Command;

use console_support::{Relay, TOKEN, start_broker};
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
    // Its consumer record (the idempotency layer's table, from the same migrations): it was
    // handled once before the relay gave up on a resend.
    sqlx::query(
        "INSERT INTO courier_inbox_processed (consumer_group, `key`, processed_at)
         VALUES ('billing', ?, UTC_TIMESTAMP(6))",
    )
    .bind(failed.to_string())
    .execute(db.pool())
    .await
    .unwrap();
    // A message another relay instance has claimed (leased for an hour, so the relay under test
    // leaves it alone) after a failed attempt.
    let leased = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO outbox_messages (id, topic, `key`, headers, payload, created_at, available_at,
                                      attempts, last_error, last_attempt_at, leased_until, lease_owner)
         VALUES (?, 'payments', 'order-8', ?, 'x', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6), 2, 'broker timed out',
                 UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) + INTERVAL 1 HOUR, 'relay-b/0190aaaa-instance/7')",
    )
    .bind(leased)
    .bind(r#"{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}"#)
    .execute(db.pool())
    .await
    .unwrap();

    let broker = start_broker().await;
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
        // The instance that holds a lease, as Postgres lists the partition owners.
        assert!(
            body.contains("<td>relay-b/0190aaaa-instance</td><td>1</td>"),
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
        assert!(
            body.contains("gave up after 16 attempt(s): in the failure table"),
            "{body}"
        );
        assert!(body.contains("(from the failure record)"), "{body}");
        assert!(body.contains("<b>handled by group billing</b>"), "{body}");
        assert!(!body.contains("could not be read"), "{body}");
        // The outbox row in full: key, traceparent, the failed attempt, pending.
        let (status, body) = get(&format!("/console/trace?q={leased}"));
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("key order-8, partition -, traceparent 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            "{body}"
        );
        assert!(body.contains("<b>publish attempt 2 failed</b>"), "{body}");
        assert!(body.contains("broker timed out"), "{body}");
        assert!(body.contains("<b>pending</b>"), "{body}");
        assert!(body.contains("<b>no idempotency record</b>"), "{body}");
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
