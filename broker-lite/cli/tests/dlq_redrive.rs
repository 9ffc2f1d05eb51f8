//! `broker-lite dlq redrive` against a real `broker-lite serve`: more dead letters than one page
//! are all sent back, with a progress line per page when stderr is not a terminal, and the
//! group's dead-letter listing is empty afterwards.

mod cli_support;

use std::time::Duration;

use broker_lite_client::{Admin, AdminConfig, Consumer, ConsumerConfig};
use cli_support::{PATIENCE, ok, run, serve, text};

const MESSAGES: usize = 250;

#[tokio::test]
async fn redrive_sends_back_every_dead_letter_page_by_page_with_progress() {
    let broker = serve(&[]).await;
    let addr = broker.addr.as_str();
    ok(&run(addr, &["topics", "create", "orders", "--queues", "2"], b"").await);
    // Subscribed before anything is sent, so the group sees every message.
    let consumer = Consumer::connect(addr, ConsumerConfig::new("billing", "orders"))
        .await
        .unwrap();
    let lines: String = (0..MESSAGES).map(|n| format!("order {n}\n")).collect();
    ok(&run(addr, &["produce", "orders", "--lines"], lines.as_bytes()).await);

    let mut dead = 0;
    tokio::time::timeout(PATIENCE, async {
        while dead < MESSAGES {
            for delivery in consumer.pull(64, Duration::from_millis(200)).await.unwrap() {
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
    let admin = Admin::connect(addr, AdminConfig::default()).await.unwrap();
    assert_eq!(
        admin.dead_letters("billing", 1000).await.unwrap().len(),
        MESSAGES
    );

    let out = run(addr, &["dlq", "redrive", "billing"], b"").await;
    let stdout = ok(&out);
    assert!(
        stdout.contains(&format!("redrove {MESSAGES} dead letters of group billing")),
        "{stdout}"
    );
    let progress: Vec<String> = text(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("re-driven "))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        progress,
        [
            "re-driven 100 dead letters of group billing so far",
            "re-driven 200 dead letters of group billing so far",
            "re-driven 250 dead letters of group billing so far",
        ]
    );
    assert!(
        admin
            .dead_letters("billing", 1000)
            .await
            .unwrap()
            .is_empty()
    );
}
