//! The console's write API without a browser: the `outbox-relay` binary against Postgres and a
//! real broker-lite. A replay of more messages than one chunk runs in the background behind a
//! progress page; writes without the token or from another origin are refused.

mod console_support;

use console_support::{Relay, TOKEN, await_job, http, job_location, start_broker};
use sqlx::{ConnectOptions, PgPool};

courier_test_support::postgres_for_tests!();

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn a_long_replay_runs_in_the_background_with_progress_and_needs_the_token(pool: PgPool) {
    let broker = start_broker().await;
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
    let relay = Relay::start(&url, &addr, "127.0.0.1:0", "run", Some(TOKEN));
    let bearer = format!("Bearer {TOKEN}");
    let form = "action=replay&scope=matching&topic=payments";

    let blocking = move || {
        // Without the token: 401, and nothing moves.
        let (status, body) = relay.post("/console/failures/apply", &[], form);
        assert_eq!(status, 401, "{body}");
        // With the token but from another site: 403.
        let (status, body) = http(
            &relay.addr,
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
        let (status, body) = relay.post(
            "/console/failures/confirm",
            &[("Authorization", &bearer)],
            form,
        );
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("Replay <b>2500</b> failed message(s)?"),
            "{body}"
        );
        // With the token: a background job and its progress page.
        let location = job_location(
            "a long replay answers with its progress page",
            relay.post(
                "/console/failures/apply",
                &[("Authorization", &bearer), ("X-Console-User", "alice")],
                form,
            ),
        );
        let body = await_job(&relay, &location, &[]);
        assert!(body.contains("Replayed 2500 message(s)"), "{body}");
        relay
    };
    let relay = tokio::task::spawn_blocking(blocking).await.unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.failures")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    // The replay is in the audit table, with who, what, the filter and the count.
    let audited: Vec<(String, String, String, String, Option<i64>, String)> = sqlx::query_as(
        "SELECT actor, action, target, filter, count, outcome FROM outbox.console_audit ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        audited,
        [(
            "alice (bearer)".to_owned(),
            "replay".to_owned(),
            "failure table".to_owned(),
            "matching a filter: topic=payments".to_owned(),
            Some(2500),
            "ok".to_owned()
        )]
    );
    drop(relay);
    broker.shutdown().await.unwrap();
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn off_loopback_the_pages_need_a_sign_in_too(pool: PgPool) {
    let broker = start_broker().await;
    let addr = broker.addr().to_string();
    let url = pool.connect_options().to_url_lossy().to_string();
    let relay = Relay::start(&url, &addr, "0.0.0.0:0", "run", Some(TOKEN));
    let console = relay.addr.clone();
    let bearer = format!("Bearer {TOKEN}");
    tokio::task::spawn_blocking(move || {
        for page in [
            "/console",
            "/console/failures",
            "/console/trace?q=x",
            "/console/broker",
            "/console/audit",
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
    drop(relay);
    broker.shutdown().await.unwrap();
}

/// `outbox-relay console`: the console alone, beside an application that relays in-process.
#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn the_console_runs_alone_beside_an_embedded_relay(pool: PgPool) {
    let broker = start_broker().await;
    let addr = broker.addr().to_string();
    sqlx::query(
        "INSERT INTO outbox.failures (id, seq, topic, key, headers, payload, created_at, attempts, last_error)
         VALUES (gen_random_uuid(), 1, 'payments', 'order-1', '{}', 'x', now(), 16, 'timed out')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let url = pool.connect_options().to_url_lossy().to_string();
    let relay = Relay::start(&url, &addr, "127.0.0.1:0", "console", None);
    let console = relay.addr.clone();
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
    drop(relay);
    broker.shutdown().await.unwrap();
}

/// More dead letters than one page (100): "Redrive all" runs in the background behind the
/// progress page, re-drives them page by page, and the audit table has the count.
#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn a_long_redrive_goes_page_by_page_with_progress(pool: PgPool) {
    use broker_lite_client::{Consumer, ConsumerConfig, Producer, ProducerConfig};
    const DEAD: usize = 250;
    let broker = start_broker().await;
    broker.broker().create_topic("orders", 2).await.unwrap();
    let addr = broker.addr().to_string();
    // Subscribed before anything is sent, so the group sees every message.
    let consumer = Consumer::connect(addr.as_str(), ConsumerConfig::new("billing", "orders"))
        .await
        .unwrap();
    let producer = Producer::connect(addr.as_str(), ProducerConfig::default())
        .await
        .unwrap();
    for n in 0..DEAD {
        let _stored = producer
            .send(broker_lite_client::protocol::Message::new(
                "orders",
                format!("order {n}"),
            ))
            .await
            .unwrap();
    }
    let mut dead = 0;
    tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while dead < DEAD {
            for delivery in consumer
                .pull(64, std::time::Duration::from_millis(200))
                .await
                .unwrap()
            {
                consumer
                    .dead_letter(&delivery, Some("the test's poison"))
                    .await
                    .unwrap();
                dead += 1;
            }
        }
    })
    .await
    .expect("every message dead-lettered");

    let url = pool.connect_options().to_url_lossy().to_string();
    let relay = Relay::start(&url, &addr, "127.0.0.1:0", "console", Some(TOKEN));
    let bearer = format!("Bearer {TOKEN}");
    tokio::task::spawn_blocking(move || {
        let location = job_location(
            "a long redrive answers with its progress page",
            relay.post(
                "/console/broker/redrive",
                &[("Authorization", &bearer), ("X-Console-User", "bob")],
                "group=billing&scope=all",
            ),
        );
        let body = await_job(&relay, &location, &[]);
        assert!(
            body.contains("Redrove 250 dead letter(s) of group billing in 3 page(s)."),
            "{body}"
        );
    })
    .await
    .unwrap();
    let admin = broker_lite_client::Admin::connect(addr.as_str(), Default::default())
        .await
        .unwrap();
    assert_eq!(admin.dead_letters("billing", 1000).await.unwrap().len(), 0);
    let audited: (String, String, String, Option<i64>, String) = sqlx::query_as(
        "SELECT actor, target, filter, count, outcome FROM outbox.console_audit
         WHERE action = 'redrive'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        audited,
        (
            "bob (bearer)".to_owned(),
            "dead letters of group billing".to_owned(),
            "all".to_owned(),
            Some(250),
            "ok".to_owned()
        )
    );
    broker.shutdown().await.unwrap();
}
