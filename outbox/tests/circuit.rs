//! A broker outage pauses the relay (its circuit opens) instead of costing the messages attempts,
//! on every store; once the broker answers again the backlog goes out at once, in key order.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Behaviour, PATIENCE, Recorder, Running, TestStore, every_store, relay};
use courier_outbox::{Backoff, CircuitState, Message, Outbox, RelayBuilder, RelayState};
use sqlx::{Executor, Pool};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

courier_test_support::postgres_for_tests!();

every_store!(
    an_unavailable_broker_pauses_the_relay_without_counting_attempts,
    shutdown_while_paused_leaves_the_backlog_untouched,
);

/// Keyed (five keys) and unkeyed messages, enqueued in one transaction.
async fn backlog<DB: TestStore>(pool: &Pool<DB>) -> Vec<Message>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let messages: Vec<Message> = (0..30)
        .map(|i| {
            let message = Message::new("orders", format!("{i}"));
            if i % 3 == 0 {
                message
            } else {
                message.with_key(format!("k{}", i % 5))
            }
        })
        .collect();
    Outbox::new().enqueue_batch(pool, &messages).await.unwrap();
    messages
}

/// A relay for which any counted failure is fatal to the test: the first goes to the failure
/// table (one attempt allowed) and would wait an hour anyway.
fn strict_relay<DB: TestStore>(pool: &Pool<DB>, recorder: &Recorder) -> RelayBuilder<DB, Recorder> {
    let hour = Duration::from_secs(3600);
    relay(pool, recorder, "outage")
        .max_attempts(1)
        .backoff(Backoff {
            base: hour,
            factor: 1.0,
            max: hour,
            jitter: 0.0,
        })
}

fn start<DB: TestStore>(
    builder: RelayBuilder<DB, Recorder>,
) -> (Running, watch::Receiver<CircuitState>) {
    let relay = builder.build().expect("valid test relay configuration");
    let state = relay.state();
    let circuit = relay.circuit();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));
    (
        Running {
            shutdown,
            state,
            task,
        },
        circuit,
    )
}

async fn wait_for_circuit(circuit: &mut watch::Receiver<CircuitState>, wanted: CircuitState) {
    tokio::time::timeout(PATIENCE, circuit.wait_for(|s| *s == wanted))
        .await
        .unwrap_or_else(|_| panic!("the circuit never became {wanted:?}"))
        .expect("circuit channel closed");
}

async fn assert_untouched<DB: TestStore>(pool: &Pool<DB>, messages: &[Message]) {
    let rows = DB::rows(pool).await;
    assert_eq!(
        rows.len(),
        messages.len(),
        "every message is still in the outbox"
    );
    let attempts: Vec<i64> = rows.iter().map(|row| row.attempts).collect();
    assert_eq!(
        attempts,
        vec![0; messages.len()],
        "an outage counted attempts"
    );
    assert_eq!(
        DB::failure_count(pool).await,
        0,
        "an outage moved messages to the failure table"
    );
}

async fn an_unavailable_broker_pauses_the_relay_without_counting_attempts<DB: TestStore>(
    pool: Pool<DB>,
) where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let messages = backlog(&pool).await;
    let recorder = Recorder::default();
    recorder.set_rule(|_| Behaviour::Unavailable);
    let (mut running, mut circuit) = start(strict_relay(&pool, &recorder));

    wait_for_circuit(&mut circuit, CircuitState::Open).await;
    // The first batch stops at the first unavailable publish; after it, probes of one message.
    recorder
        .wait_until("a few probes", |r| r.total_calls() >= 4)
        .await;
    running.wait_for_state(RelayState::Paused).await;
    assert!(recorder.accepted().is_empty());
    assert_untouched(&pool, &messages).await;

    // The broker is back: the next probe closes the circuit and the whole backlog goes out, long
    // before the hour a counted attempt would have had to wait.
    recorder.set_rule(|_| Behaviour::Accept);
    recorder.wait_for_accepted(messages.len()).await;
    wait_for_circuit(&mut circuit, CircuitState::Closed).await;
    running.wait_for_state(RelayState::Idle).await;
    running.stop().await;

    assert_eq!(DB::pending(&pool).await, 0);
    assert_eq!(DB::failure_count(&pool).await, 0);
    let accepted = recorder.accepted();
    assert!(
        accepted.iter().all(|m| m.attempts == 0),
        "published with attempts counted during the outage"
    );
    // Per-key order survives the rows put back.
    let mut by_key: HashMap<&str, Vec<&str>> = HashMap::new();
    for message in &accepted {
        if let Some(key) = message.key.as_deref() {
            by_key
                .entry(key)
                .or_default()
                .push(std::str::from_utf8(&message.payload).unwrap());
        }
    }
    for (key, payloads) in by_key {
        let numbers: Vec<u32> = payloads.iter().map(|p| p.parse().unwrap()).collect();
        assert!(numbers.is_sorted(), "key {key} out of order: {numbers:?}");
    }
}

async fn shutdown_while_paused_leaves_the_backlog_untouched<DB: TestStore>(pool: Pool<DB>)
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let messages = backlog(&pool).await;
    let recorder = Recorder::default();
    recorder.set_rule(|_| Behaviour::Unavailable);
    let (mut running, mut circuit) = start(strict_relay(&pool, &recorder));
    wait_for_circuit(&mut circuit, CircuitState::Open).await;
    running.wait_for_state(RelayState::Paused).await;
    running.stop().await;
    assert_untouched(&pool, &messages).await;
    assert!(
        DB::rows(&pool).await.iter().all(|row| !row.leased),
        "a row stayed leased"
    );
}
