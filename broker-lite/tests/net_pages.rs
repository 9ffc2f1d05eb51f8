//! Dead-letter listings and key lookups are bounded by bytes (issue 16): no answer exceeds the
//! server's `max_response_bytes`, and a cursor lets the caller read on, page by page, to the
//! end, each message once.

use std::time::Duration;

use broker_lite::client::{
    Admin, AdminConfig, Connection, Consumer, ConsumerConfig, Producer, ProducerConfig, Security,
};
use broker_lite::embedded::{self, EmbeddedBroker, EmbeddedConfig};
use broker_lite::protocol::{Message, MessagePage, MessageView, Request, Response};
use uuid::Uuid;

const BUDGET: usize = 64 << 10;
const COUNT: usize = 30;
const BODY: usize = 10 << 10;
const TIMEOUT: Duration = Duration::from_secs(5);

/// A broker holding `COUNT` messages of `BODY` bytes with the key "k" in `orders`, each also
/// dead-lettered by group `billing`; with their ids in the order sent.
async fn start() -> (tempfile::TempDir, EmbeddedBroker, Vec<Uuid>) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EmbeddedConfig::default();
    config.broker.background_tasks = false;
    config.server.max_response_bytes = BUDGET;
    let broker = embedded::start(dir.path(), config).await.unwrap();
    let consumer = Consumer::connect(broker.addr(), ConsumerConfig::new("billing", "orders"))
        .await
        .unwrap();
    let producer = Producer::connect(broker.addr(), ProducerConfig::default())
        .await
        .unwrap();
    let mut sent = Vec::new();
    for i in 0..COUNT {
        // One queue keeps the dead letters in the order sent.
        let m = Message::new("orders", vec![i as u8; BODY])
            .with_key("k")
            .with_queue(0);
        sent.push(producer.send(m).await.unwrap().message_id);
    }
    let mut dead = 0;
    while dead < COUNT {
        let deliveries = consumer.pull(COUNT as u32, Duration::ZERO).await.unwrap();
        assert!(!deliveries.is_empty(), "only {dead} of {COUNT} delivered");
        for d in &deliveries {
            consumer.dead_letter(d, Some("test")).await.unwrap();
            dead += 1;
        }
    }
    (dir, broker, sent)
}

async fn admin(broker: &EmbeddedBroker) -> Admin {
    Admin::connect(broker.addr(), AdminConfig::default())
        .await
        .unwrap()
}

/// The answer to an unpaged listing `request`, checked against the budget.
async fn unpaged(broker: &EmbeddedBroker, request: &Request) -> Vec<MessageView> {
    let connection = Connection::connect_with(
        &broker.addr().to_string(),
        TIMEOUT,
        8 << 20,
        &Security::default(),
    )
    .await
    .unwrap();
    let Response::Messages(first) = connection.request(request, TIMEOUT).await.unwrap() else {
        panic!("not a message list");
    };
    let size = Response::Messages(first.clone()).encode_body().len();
    assert!(size <= BUDGET, "{size} bytes, over the budget of {BUDGET}");
    first
}

fn ids(messages: &[MessageView]) -> Vec<Uuid> {
    messages.iter().map(|m| m.message_id).collect()
}

/// Reads every page with `page`, checking each answer's size; returns the ids in order.
async fn read_pages<F, Fut>(mut page: F) -> Vec<Uuid>
where
    F: FnMut(Option<u64>) -> Fut,
    Fut: std::future::Future<Output = MessagePage>,
{
    let mut all = Vec::new();
    let mut cursor = None;
    for pages in 1.. {
        assert!(pages <= COUNT, "no progress after {pages} pages");
        let p = page(cursor).await;
        let size = Response::Page(p.clone()).encode_body().len();
        assert!(
            size <= BUDGET,
            "page {pages} is {size} bytes, over {BUDGET}"
        );
        assert!(!p.messages.is_empty(), "page {pages} is empty");
        all.extend(ids(&p.messages));
        match p.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    all
}

#[tokio::test]
async fn dead_letter_listings_stay_within_the_byte_budget_and_page_to_the_end() {
    let (_dir, broker, sent) = start().await;
    // The unpaged command of older clients gets the first page only.
    let request = Request::DeadLetters {
        group: "billing".into(),
        max: 100_000,
    };
    let first = unpaged(&broker, &request).await;
    assert!(
        !first.is_empty() && first.len() < COUNT,
        "{} messages",
        first.len()
    );
    assert_eq!(ids(&first), sent[..first.len()]);

    let admin = admin(&broker).await;
    let paged = read_pages(|cursor| {
        let admin = &admin;
        async move {
            admin
                .dead_letters_page("billing", 1000, cursor)
                .await
                .unwrap()
        }
    })
    .await;
    assert_eq!(paged, sent, "every dead letter once, oldest first");
    // The client call that predates paging follows the cursor, and stops at its `max`.
    assert_eq!(
        ids(&admin.dead_letters("billing", 1000).await.unwrap()),
        sent
    );
    assert_eq!(
        ids(&admin.dead_letters("billing", 7).await.unwrap()),
        sent[..7]
    );
}

#[tokio::test]
async fn key_lookups_stay_within_the_byte_budget_and_page_to_the_end() {
    let (_dir, broker, sent) = start().await;
    let newest_first: Vec<Uuid> = sent.iter().rev().copied().collect();
    let request = Request::LookupByKey {
        topic: "orders".into(),
        key: "k".into(),
        max: 1000,
    };
    let first = unpaged(&broker, &request).await;
    assert_eq!(ids(&first), newest_first[..first.len()]);

    let admin = admin(&broker).await;
    let paged = read_pages(|cursor| {
        let admin = &admin;
        async move {
            admin
                .lookup_by_key_page("orders", "k", 1000, cursor)
                .await
                .unwrap()
        }
    })
    .await;
    assert_eq!(paged, newest_first, "every message once, newest first");
    assert_eq!(
        ids(&admin.lookup_by_key("orders", "k", 1000).await.unwrap()),
        newest_first
    );
}
