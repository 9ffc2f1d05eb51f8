//! Consumer offsets saved past the end of the log that a power cut left are cut back on open
//! (issue 12, item 5): messages sent after the restart reuse the lost offsets and must be
//! delivered, neither skipped nor taken as acked.

mod broker_common;

use std::sync::Arc;
use std::time::Duration;

use broker_common::{bodies, config};
use broker_lite::broker::{
    Broker, BrokerConfig, ConsumerSpec, ManualClock, PullRequest, SendRequest,
};
use broker_lite::storage::FlushMode;
use broker_lite::storage::backend::FaultyBackend;

const GROUP: &str = "billing";
const CLIENT: &str = "billing-1";
const TOPIC: &str = "orders";

fn async_config(clock: &ManualClock) -> BrokerConfig {
    let mut c = config(clock);
    // Only what the test flushes is synced.
    c.store.flush_mode = FlushMode::Async {
        interval: Duration::from_secs(3600),
    };
    c
}

async fn send(b: &Broker, body: &str) {
    let sent = b
        .send(SendRequest::new(TOPIC, body.to_string()))
        .await
        .unwrap();
    assert!(sent.status.is_ok());
}

async fn pull_all(b: &Broker) -> Vec<broker_lite::broker::Delivery> {
    b.pull(PullRequest::new(GROUP, CLIENT, TOPIC).with_max_messages(100))
        .await
        .unwrap()
}

#[tokio::test]
async fn messages_sent_after_a_power_cut_reuse_lost_offsets_and_are_delivered() {
    let backend = FaultyBackend::new();
    let clock = ManualClock::starting_now();
    let b = Broker::open_with_backend(Arc::new(backend.clone()), async_config(&clock))
        .await
        .unwrap();
    b.create_topic(TOPIC, 1).await.unwrap();
    b.subscribe(ConsumerSpec::new(GROUP, CLIENT, TOPIC))
        .await
        .unwrap();
    for body in ["a", "b", "c"] {
        send(&b, body).await;
    }
    b.store().flush().await.unwrap();
    // Written, read and acked, never fsynced: the power cut takes them.
    for body in ["lost-d", "lost-e"] {
        send(&b, body).await;
    }
    let first = pull_all(&b).await;
    assert_eq!(bodies(&first), ["a", "b", "c", "lost-d", "lost-e"]);
    // Acked out of order: offsets 3 and 4 are saved as an acked range above the committed 0.
    for d in &first[3..] {
        b.ack(&d.receipt).await.unwrap();
    }
    b.save_offsets().await.unwrap();
    let after = backend.crash();
    drop(b);

    let b = Broker::open_with_backend(Arc::new(after), async_config(&clock))
        .await
        .unwrap();
    assert_eq!(
        b.store().queue_bounds(TOPIC, 0).unwrap().max,
        3,
        "the tail is gone"
    );
    b.subscribe(ConsumerSpec::new(GROUP, CLIENT, TOPIC))
        .await
        .unwrap();
    // They get offsets 3 and 4 again.
    for body in ["new-d", "new-e"] {
        send(&b, body).await;
    }
    let again = pull_all(&b).await;
    assert_eq!(bodies(&again), ["a", "b", "c", "new-d", "new-e"]);
    for d in &again {
        b.ack(&d.receipt).await.unwrap();
    }
    let lag = b.lag(GROUP).unwrap();
    assert!(
        lag.iter().all(|l| l.lag == 0 && l.unsettled == 0),
        "{lag:?}"
    );
}

#[tokio::test]
async fn the_clamped_offsets_are_saved_before_the_broker_serves() {
    let backend = FaultyBackend::new();
    let clock = ManualClock::starting_now();
    let b = Broker::open_with_backend(Arc::new(backend.clone()), async_config(&clock))
        .await
        .unwrap();
    b.create_topic(TOPIC, 1).await.unwrap();
    b.subscribe(ConsumerSpec::new(GROUP, CLIENT, TOPIC))
        .await
        .unwrap();
    send(&b, "lost").await;
    let d = pull_all(&b).await.remove(0);
    b.ack(&d.receipt).await.unwrap();
    b.save_offsets().await.unwrap();
    let after = backend.crash();
    drop(b);

    // Open, send one message, fsync it, and crash again before any offsets save.
    let b = Broker::open_with_backend(Arc::new(after.clone()), async_config(&clock))
        .await
        .unwrap();
    send(&b, "new").await;
    b.store().flush().await.unwrap();
    let after = after.crash();
    drop(b);

    let b = Broker::open_with_backend(Arc::new(after), async_config(&clock))
        .await
        .unwrap();
    b.subscribe(ConsumerSpec::new(GROUP, CLIENT, TOPIC))
        .await
        .unwrap();
    assert_eq!(bodies(&pull_all(&b).await), ["new"]);
}
