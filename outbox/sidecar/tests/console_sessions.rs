//! Console sessions: a sign-in outlives a restart of the sidecar (the cookie is signed, not kept
//! in memory), a sign-out ends it for good (also across a restart), and both are in the audit
//! table and on the Audit page. The
//! `outbox-relay console` binary against Postgres and a real broker-lite.

mod console_support;

use console_support::{Relay, TOKEN, header, start_broker};
use sqlx::{ConnectOptions, PgPool};

courier_test_support::postgres_for_tests!();

/// A write that needs a signed-in operator: the confirmation of a purge (it changes nothing).
const CONFIRM: &str = "/console/failures/confirm";
const PURGE: &str = "action=purge&scope=matching&topic=payments";

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn a_session_survives_a_restart_and_ends_at_sign_out(pool: PgPool) {
    let broker = start_broker().await;
    let addr = broker.addr().to_string();
    let url = pool.connect_options().to_url_lossy().to_string();
    let start = move || Relay::start(&url, &addr, "127.0.0.1:0", "console", Some(TOKEN));

    tokio::task::spawn_blocking(move || {
        let relay = start();
        let (status, body) = relay.post(CONFIRM, &[], PURGE);
        assert_eq!(status, 401, "not signed in yet: {body}");
        let (status, response) =
            relay.post("/console/login", &[], &format!("name=carol&token={TOKEN}"));
        assert_eq!(status, 303, "{response}");
        let set = header(&response, "set-cookie")
            .unwrap_or_else(|| panic!("no cookie: {response}"))
            .to_owned();
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict"),
            "{set}"
        );
        let cookie = set.split(';').next().unwrap().to_owned();
        let signed_in = [("Cookie", cookie.as_str())];
        let (status, body) = relay.post(CONFIRM, &signed_in, PURGE);
        assert_eq!(status, 200, "signed in: {body}");

        // Another process with the same token: the same cookie still works.
        drop(relay);
        let relay = start();
        let (status, body) = relay.post(CONFIRM, &signed_in, PURGE);
        assert_eq!(status, 200, "still signed in after the restart: {body}");
        let (_, body) = relay.get("/console", &signed_in);
        assert!(body.contains("signed in as carol"), "{body}");

        let (status, response) = relay.post("/console/logout", &signed_in, "");
        assert_eq!(status, 303, "{response}");
        let cleared = header(&response, "set-cookie").unwrap_or_default();
        assert!(cleared.contains("Max-Age=0"), "{response}");
        let (status, body) = relay.post(CONFIRM, &signed_in, PURGE);
        assert_eq!(status, 401, "the old cookie after signing out: {body}");
        // The sign-out is in the audit table, so a restart does not bring the session back.
        drop(relay);
        let relay = start();
        let (status, body) = relay.post(CONFIRM, &signed_in, PURGE);
        assert_eq!(
            status, 401,
            "the old cookie after a sign-out and a restart: {body}"
        );

        let (status, body) = relay.get("/console/audit?actor=CAR", &[]);
        assert_eq!(status, 200, "{body}");
        let sign_in = body
            .find("<td>sign-in</td>")
            .unwrap_or_else(|| panic!("{body}"));
        let sign_out = body
            .find("<td>sign-out</td>")
            .unwrap_or_else(|| panic!("{body}"));
        assert!(sign_out < sign_in, "newest first: {body}");
        let (_, body) = relay.get("/console/audit?action=sign-out", &[]);
        assert!(!body.contains("<td>sign-in</td>"), "{body}");
        assert!(body.contains("<td>carol</td>"), "{body}");
    })
    .await
    .unwrap();
    let actions: Vec<(String, String)> =
        sqlx::query_as("SELECT actor, action FROM outbox.console_audit ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        actions,
        [
            ("carol".to_owned(), "sign-in".to_owned()),
            ("carol".to_owned(), "sign-out".to_owned())
        ]
    );
    broker.shutdown().await.unwrap();
}

/// A sidecar upgraded without `outbox-relay migrate`: sign-outs cannot be read from the audit
/// table, so no session could be trusted; the sign-in says so and what to do.
#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn without_the_audit_table_the_sign_in_says_to_migrate(pool: PgPool) {
    sqlx::query("DROP TABLE outbox.console_audit")
        .execute(&pool)
        .await
        .unwrap();
    let broker = start_broker().await;
    let addr = broker.addr().to_string();
    let url = pool.connect_options().to_url_lossy().to_string();
    tokio::task::spawn_blocking(move || {
        let relay = Relay::start(&url, &addr, "127.0.0.1:0", "console", Some(TOKEN));
        let (status, body) = relay.post("/console/login", &[], &format!("name=erin&token={TOKEN}"));
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("run `outbox-relay migrate`"), "{body}");
        assert!(!body.to_lowercase().contains("set-cookie"), "{body}");
        // The bearer token still works for the pages.
        let bearer = format!("Bearer {TOKEN}");
        let (status, body) = relay.post(CONFIRM, &[("Authorization", &bearer)], PURGE);
        assert_eq!(status, 200, "{body}");
    })
    .await
    .unwrap();
    broker.shutdown().await.unwrap();
}
