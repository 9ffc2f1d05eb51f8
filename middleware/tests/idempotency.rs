//! Idempotency layer against real databases (safeguard C7): every case runs on Postgres, SQLite
//! and MySQL (`store_support`); the MySQL-only cases are in `mysql_only.rs`.

mod store_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use courier_middleware::{
    Delivery, Disposition, Handled, Idempotency, IdempotencyKey, IdempotencyLayer, LateDelivery,
    LocalRetryLayer, LocalRetryPolicy, TxDelivery,
};
use courier_outbox::{Backoff, Message};
use sqlx::Pool;
use store_support::{PATIENCE, Store};
use tokio::sync::Semaphore;
use tower::{BoxError, Layer, Service, ServiceExt};

courier_test_support::postgres_for_tests!();

for_each_store!(
    a_duplicate_delivery_runs_the_handler_once,
    a_handler_error_rolls_the_record_back_so_the_redelivery_runs_it_again,
    two_concurrent_deliveries_of_one_message_give_exactly_one_effect,
    a_declared_idempotency_key_header_deduplicates_across_message_ids,
    each_consumer_group_handles_a_message_once,
    expired_records_are_purged_after_the_window_and_its_clock_allowance,
    a_redelivery_older_than_the_window_is_dead_lettered_not_handled_again,
    a_message_older_than_the_window_with_its_record_is_a_duplicate,
    batched_late_messages_are_refused_or_duplicates_and_the_rest_runs,
    the_runtime_dead_letters_a_late_message_with_its_reason,
    batched_concurrent_deliveries_give_one_effect_per_message,
    batched_a_failing_handler_rolls_back_only_its_own_delivery,
    a_handler_killed_mid_transaction_leaves_no_record_and_the_redelivery_runs_it,
    a_local_retry_outside_the_layer_runs_each_attempt_in_a_fresh_transaction,
);

/// Writes one effect row in the delivery's transaction; counts calls; fails while `failures` > 0.
#[derive(Clone, Default)]
struct Handler {
    calls: Arc<AtomicU32>,
    failures: Arc<AtomicU32>,
}

impl Handler {
    fn service<DB: Store>(
        &self,
    ) -> impl Service<TxDelivery<DB>, Response = (), Error = BoxError, Future: Send>
    + Clone
    + Send
    + 'static {
        let this = self.clone();
        tower::service_fn(move |request: TxDelivery<DB>| {
            let this = this.clone();
            async move {
                this.calls.fetch_add(1, Ordering::SeqCst);
                let mut conn = request.tx().lock().await;
                let message = &request.delivery.message;
                DB::insert_effect(&mut conn, message.id, &request.delivery.group).await?;
                let failing = this
                    .failures
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if failing {
                    return Err::<(), BoxError>("injected failure after the write".into());
                }
                Ok(())
            }
        })
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

fn delivery(message: &Message) -> Delivery {
    Delivery::new(message.clone(), "billing")
}

async fn a_duplicate_delivery_runs_the_handler_once<DB: Store>(pool: Pool<DB>) {
    DB::create_effects(&pool).await;
    let handler = Handler::default();
    let service = IdempotencyLayer::new(pool.clone()).layer(handler.service());
    let message = Message::new("payments", "p");

    let first = service.clone().oneshot(delivery(&message)).await.unwrap();
    let second = service
        .clone()
        .oneshot(delivery(&message).with_attempt(2))
        .await
        .unwrap();

    assert_eq!(first, Handled::Processed(()));
    assert_eq!(second, Handled::Duplicate);
    assert_eq!(handler.calls(), 1);
    assert_eq!(DB::effects(&pool).await, 1);
}

async fn a_handler_error_rolls_the_record_back_so_the_redelivery_runs_it_again<DB: Store>(
    pool: Pool<DB>,
) {
    DB::create_effects(&pool).await;
    let handler = Handler::default();
    handler.failures.store(1, Ordering::SeqCst);
    let service = IdempotencyLayer::new(pool.clone()).layer(handler.service());
    let message = Message::new("payments", "p");

    let failed = service.clone().oneshot(delivery(&message)).await;
    assert!(failed.is_err());
    // The failed attempt's write went with the record.
    assert_eq!(DB::effects(&pool).await, 0);
    assert_eq!(DB::records(&pool).await, 0);

    let redelivered = service
        .clone()
        .oneshot(delivery(&message).with_attempt(2))
        .await
        .unwrap();
    assert_eq!(redelivered, Handled::Processed(()));
    assert_eq!(handler.calls(), 2);
    assert_eq!(DB::effects(&pool).await, 1);
}

async fn two_concurrent_deliveries_of_one_message_give_exactly_one_effect<DB: Store>(
    pool: Pool<DB>,
) {
    DB::create_effects(&pool).await;
    let handler = Handler::default();
    // The first handler call holds its transaction open until the test lets it go.
    let gate = Arc::new(Semaphore::new(0));
    let inner = {
        let gate = gate.clone();
        let service = handler.service::<DB>();
        tower::service_fn(move |request: TxDelivery<DB>| {
            let gate = gate.clone();
            let mut service = service.clone();
            async move {
                service.call(request).await?;
                gate.acquire().await?.forget();
                Ok::<(), BoxError>(())
            }
        })
    };
    let service = IdempotencyLayer::new(pool.clone()).layer(inner);
    let message = Message::new("payments", "p");

    let first = tokio::spawn(service.clone().oneshot(delivery(&message)));
    wait_for("the first handler call", || handler.calls() == 1).await;
    let second = tokio::spawn(service.clone().oneshot(delivery(&message).with_attempt(2)));
    DB::second_writer_waits(&pool).await;
    gate.add_permits(2);

    let mut outcomes = vec![
        first.await.unwrap().unwrap(),
        second.await.unwrap().unwrap(),
    ];
    outcomes.sort_by_key(Handled::is_duplicate);
    assert_eq!(outcomes, vec![Handled::Processed(()), Handled::Duplicate]);
    assert_eq!(handler.calls(), 1);
    assert_eq!(DB::effects(&pool).await, 1);
}

async fn wait_for(what: &str, condition: impl Fn() -> bool) {
    tokio::time::timeout(PATIENCE, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("gave up waiting for {what}"));
}

async fn a_declared_idempotency_key_header_deduplicates_across_message_ids<DB: Store>(
    pool: Pool<DB>,
) {
    DB::create_effects(&pool).await;
    let handler = Handler::default();
    let service = IdempotencyLayer::new(pool.clone())
        .key(IdempotencyKey::Header("idempotency-key".into()))
        .layer(handler.service());
    let one = Message::new("payments", "p").with_header("idempotency-key", "charge-42");
    let same_event_other_id =
        Message::new("payments", "p").with_header("idempotency-key", "charge-42");
    let unkeyed = Message::new("payments", "p");

    for message in [&one, &same_event_other_id, &unkeyed, &unkeyed] {
        service.clone().oneshot(delivery(message)).await.unwrap();
    }
    assert_eq!(handler.calls(), 2);
    assert_eq!(DB::effects(&pool).await, 2);
}

async fn each_consumer_group_handles_a_message_once<DB: Store>(pool: Pool<DB>) {
    DB::create_effects(&pool).await;
    let handler = Handler::default();
    let service: Idempotency<_, DB> = IdempotencyLayer::new(pool.clone()).layer(handler.service());
    let message = Message::new("payments", "p");
    for group in ["billing", "shipping", "billing", "shipping"] {
        service
            .clone()
            .oneshot(Delivery::new(message.clone(), group))
            .await
            .unwrap();
    }
    assert_eq!(handler.calls(), 2);
}

const HOUR: Duration = Duration::from_secs(3600);

/// `message` as if created `ago` before now.
fn created_ago(message: &Message, ago: Duration) -> Message {
    let mut message = message.clone();
    message.created_at = chrono::Utc::now() - ago;
    message
}

/// The [`LateDelivery`] in `error`'s source chain.
fn late_of(error: &BoxError) -> Option<&LateDelivery> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    while let Some(error) = next {
        if let Some(late) = error.downcast_ref::<LateDelivery>() {
            return Some(late);
        }
        next = error.source();
    }
    None
}

async fn expired_records_are_purged_after_the_window_and_its_clock_allowance<DB: Store>(
    pool: Pool<DB>,
) {
    DB::create_effects(&pool).await;
    let handler = Handler::default();
    let layer = IdempotencyLayer::new(pool.clone()).window(HOUR);
    let service = layer.layer(handler.service());
    let old = Message::new("payments", "old");
    let recent = Message::new("payments", "recent");
    let fresh = Message::new("payments", "fresh");
    for message in [&old, &recent, &fresh] {
        service.clone().oneshot(delivery(message)).await.unwrap();
    }
    // Past the window and its hour of allowance for clock differences: purged.
    DB::age_record(&pool, &old.id.to_string(), 3 * HOUR).await;
    // Past the window, inside the allowance: kept.
    DB::age_record(&pool, &recent.id.to_string(), HOUR + HOUR / 2).await;

    assert_eq!(layer.purge_expired().await.unwrap(), 1);
    assert_eq!(DB::records(&pool).await, 2);
    for message in [&recent, &fresh] {
        let again = service.clone().oneshot(delivery(message)).await.unwrap();
        assert!(again.is_duplicate());
    }
    assert_eq!(handler.calls(), 3);
}

/// A message handled inside the window comes back after it (a failure-table replay, a redrive):
/// its record is purged, and the layer must not run the handler a second time unnoticed.
async fn a_redelivery_older_than_the_window_is_dead_lettered_not_handled_again<DB: Store>(
    pool: Pool<DB>,
) {
    DB::create_effects(&pool).await;
    let handler = Handler::default();
    let layer = IdempotencyLayer::new(pool.clone()).window(HOUR);
    let service = layer.layer(handler.service());
    let message = created_ago(&Message::new("payments", "p"), HOUR / 2);
    let first = service.clone().oneshot(delivery(&message)).await.unwrap();
    assert_eq!(first, Handled::Processed(()));

    // Three hours later: the record is purged, the message comes back.
    DB::age_record(&pool, &message.id.to_string(), 3 * HOUR).await;
    assert_eq!(layer.purge_expired().await.unwrap(), 1);
    let replayed = created_ago(&message, HOUR / 2 + 3 * HOUR);
    let error = service
        .clone()
        .oneshot(delivery(&replayed).with_attempt(2))
        .await
        .expect_err("the handler ran a second time");

    assert_eq!(
        Disposition::of_error(error.as_ref()),
        Disposition::DeadLetter
    );
    let late = late_of(&error).expect("the reason is a LateDelivery");
    assert_eq!(late.message_id(), message.id);
    assert_eq!(late.window(), HOUR);
    assert!(
        error
            .to_string()
            .contains("older than the idempotency window"),
        "{error}"
    );
    assert_eq!(handler.calls(), 1);
    assert_eq!(DB::effects(&pool).await, 1);
    // The refusal left no record: after lengthening the window, a redrive is handled.
    assert_eq!(DB::records(&pool).await, 0);
    let longer = IdempotencyLayer::new(pool.clone())
        .window(24 * HOUR)
        .layer(handler.service());
    let redriven = longer.oneshot(delivery(&replayed)).await.unwrap();
    assert_eq!(redriven, Handled::Processed(()));
}

async fn a_message_older_than_the_window_with_its_record_is_a_duplicate<DB: Store>(pool: Pool<DB>) {
    DB::create_effects(&pool).await;
    let handler = Handler::default();
    let service = IdempotencyLayer::new(pool.clone())
        .window(HOUR)
        .layer(handler.service());
    let message = created_ago(&Message::new("payments", "p"), HOUR / 2);
    service.clone().oneshot(delivery(&message)).await.unwrap();

    let late = created_ago(&message, 2 * HOUR);
    let again = service.oneshot(delivery(&late)).await.unwrap();
    assert_eq!(again, Handled::Duplicate);
    assert_eq!(handler.calls(), 1);
}

async fn batched_late_messages_are_refused_or_duplicates_and_the_rest_runs<DB: Store>(
    pool: Pool<DB>,
) {
    DB::create_effects(&pool).await;
    let handler = Handler::default();
    let layer = IdempotencyLayer::new(pool.clone()).window(HOUR);
    let seen = created_ago(&Message::new("payments", "seen"), HOUR / 2);
    layer
        .layer(handler.service())
        .oneshot(delivery(&seen))
        .await
        .unwrap();
    let service = layer.batched(16).layer(handler.service());
    let unseen = created_ago(&Message::new("payments", "unseen"), 2 * HOUR);
    let seen_late = created_ago(&seen, 2 * HOUR);
    let on_time = Message::new("payments", "on time");

    let calls: Vec<_> = [&unseen, &seen_late, &on_time]
        .into_iter()
        .map(|m| tokio::spawn(service.clone().oneshot(delivery(m))))
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap());
    }

    let refused = answers
        .remove(0)
        .expect_err("the unseen late message was handled");
    assert_eq!(late_of(&refused).unwrap().message_id(), unseen.id);
    assert_eq!(answers.remove(0).unwrap(), Handled::Duplicate);
    assert_eq!(answers.remove(0).unwrap(), Handled::Processed(()));
    assert_eq!(handler.calls(), 2);
    assert_eq!(DB::effects(&pool).await, 2);
    assert_eq!(DB::records(&pool).await, 2);
}

// Store-independent: the check compares durations and never touches the database (the pool is
// lazy and never connects).
#[tokio::test]
async fn a_window_shorter_than_the_redelivery_horizon_is_reported() {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy("postgres://unused@127.0.0.1/unused")
        .unwrap();
    let layer = IdempotencyLayer::new(pool).window(Duration::from_secs(60));
    assert!(!layer.check_horizon(Duration::from_secs(3600)));
    assert!(layer.check_horizon(Duration::from_secs(30)));
    // 15 redeliveries 10 s apart outlast a 60 s window.
    let source = courier_middleware::MemorySource::new("billing")
        .with_redelivery_delay(Duration::from_secs(10))
        .with_max_deliveries(16);
    assert!(!layer.check_source(&source));
}

async fn batched_concurrent_deliveries_give_one_effect_per_message<DB: Store>(pool: Pool<DB>) {
    DB::create_effects(&pool).await;
    let handler = Handler::default();
    let service = IdempotencyLayer::new(pool.clone())
        .batched(16)
        .workers(2)
        .layer(handler.service());
    let messages: Vec<Message> = (0..20)
        .map(|n| Message::new("payments", format!("{n}")))
        .collect();
    let mut calls = Vec::new();
    for round in 0..3 {
        for message in &messages[..if round == 0 { 20 } else { 15 }] {
            let delivery = delivery(message).with_attempt(round + 1);
            calls.push(tokio::spawn(service.clone().oneshot(delivery)));
        }
    }
    let mut processed = 0;
    let mut duplicates = 0;
    for call in calls {
        match call.await.unwrap().unwrap() {
            Handled::Processed(()) => processed += 1,
            Handled::Duplicate => duplicates += 1,
        }
    }
    assert_eq!((processed, duplicates), (20, 30));
    assert_eq!(handler.calls(), 20);
    assert_eq!(DB::effects(&pool).await, 20);
}

async fn batched_a_failing_handler_rolls_back_only_its_own_delivery<DB: Store>(pool: Pool<DB>) {
    DB::create_effects(&pool).await;
    let fail_once = Arc::new(AtomicU32::new(1));
    let calls = Arc::new(AtomicU32::new(0));
    let inner = {
        let fail_once = fail_once.clone();
        let calls = calls.clone();
        tower::service_fn(move |request: TxDelivery<DB>| {
            let fail_once = fail_once.clone();
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let mut conn = request.tx().lock().await;
                let message = &request.delivery.message;
                DB::insert_effect(&mut conn, message.id, &request.delivery.group).await?;
                if message.payload.as_ref() == b"fail"
                    && fail_once
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok()
                {
                    // On Postgres a failed statement aborts the transaction: the batch must start
                    // over.
                    DB::failing_statement(&mut conn).await;
                    return Err::<(), BoxError>("injected failure".into());
                }
                Ok(())
            }
        })
    };
    let service = IdempotencyLayer::new(pool.clone()).batched(16).layer(inner);
    let failing = Message::new("payments", "fail");
    let others = [Message::new("payments", "a"), Message::new("payments", "b")];

    // The three calls are queued before the batch worker runs (the test runtime has one thread,
    // and the worker is woken after them), so they share one batch: the failure rolls the batch
    // back and the other two run again in a fresh transaction.
    let first = tokio::spawn(service.clone().oneshot(delivery(&failing)));
    let rest: Vec<_> = others
        .iter()
        .map(|m| tokio::spawn(service.clone().oneshot(delivery(m))))
        .collect();
    assert!(first.await.unwrap().is_err());
    for call in rest {
        assert_eq!(call.await.unwrap().unwrap(), Handled::Processed(()));
    }
    assert_eq!(DB::effects(&pool).await, 2);
    assert_eq!(DB::records(&pool).await, 2);

    let redelivered = service
        .clone()
        .oneshot(delivery(&failing).with_attempt(2))
        .await
        .unwrap();
    assert_eq!(redelivered, Handled::Processed(()));
    assert_eq!(DB::effects(&pool).await, 3);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

async fn a_handler_killed_mid_transaction_leaves_no_record_and_the_redelivery_runs_it<DB: Store>(
    pool: Pool<DB>,
) {
    DB::create_effects(&pool).await;
    let started = Arc::new(tokio::sync::Notify::new());
    let hanging = {
        let started = started.clone();
        let service = Handler::default().service::<DB>();
        tower::service_fn(move |request: TxDelivery<DB>| {
            let started = started.clone();
            let mut service = service.clone();
            async move {
                service.call(request).await?;
                started.notify_one();
                std::future::pending::<()>().await;
                Ok::<(), BoxError>(())
            }
        })
    };
    let message = Message::new("payments", "p");
    // Dropping the call (a consume timeout, a shutdown, a crash) rolls its transaction back.
    let call = tokio::spawn(
        IdempotencyLayer::new(pool.clone())
            .layer(hanging)
            .oneshot(delivery(&message)),
    );
    tokio::time::timeout(PATIENCE, started.notified())
        .await
        .expect("the handler never ran");
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());

    let handler = Handler::default();
    let service = IdempotencyLayer::new(pool.clone()).layer(handler.service());
    let redelivered = tokio::time::timeout(
        PATIENCE,
        service.oneshot(delivery(&message).with_attempt(2)),
    )
    .await
    .expect("the redelivery waited on the killed call's lock")
    .unwrap();
    assert_eq!(redelivered, Handled::Processed(()));
    assert_eq!(handler.calls(), 1);
    assert_eq!(DB::effects(&pool).await, 1);
}

/// Retries at once: the tests wait for no timer.
fn retry_at_once(retries: u32) -> LocalRetryLayer {
    LocalRetryLayer::new(LocalRetryPolicy::new(retries).backoff(Backoff {
        base: Duration::ZERO,
        factor: 1.0,
        max: Duration::ZERO,
        jitter: 0.0,
    }))
}

// The other order, `LocalRetryLayer` inside `IdempotencyLayer`, retried in the same transaction
// and committed the failed attempt's write with the retry's; it no longer compiles (`TxDelivery`
// is not `Clone`, see its docs' compile_fail example).
async fn a_local_retry_outside_the_layer_runs_each_attempt_in_a_fresh_transaction<DB: Store>(
    pool: Pool<DB>,
) {
    DB::create_effects(&pool).await;
    let handler = Handler::default();
    // Writes its effect, then fails: the first attempt's write must not survive.
    handler.failures.store(1, Ordering::SeqCst);
    let service =
        retry_at_once(2).layer(IdempotencyLayer::new(pool.clone()).layer(handler.service()));
    let message = Message::new("payments", "p");

    let handled = service.oneshot(delivery(&message)).await.unwrap();

    assert_eq!(handled, Handled::Processed(()));
    assert_eq!(handler.calls(), 2);
    assert_eq!(DB::effects(&pool).await, 1);
    assert_eq!(DB::records(&pool).await, 1);
}

async fn the_runtime_dead_letters_a_late_message_with_its_reason<DB: Store>(pool: Pool<DB>) {
    DB::create_effects(&pool).await;
    let handler = Handler::default();
    let service = IdempotencyLayer::new(pool.clone()).layer(handler.service());
    let source = courier_middleware::MemorySource::new("billing");
    // Older than the default window, never seen: a replay from long ago.
    let late = created_ago(
        &Message::new("payments", "p"),
        courier_middleware::DEFAULT_IDEMPOTENCY_WINDOW + HOUR,
    );
    source.push(late.clone());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let consumer = courier_middleware::Consumer::builder(source.clone(), service).build();
    let running = tokio::spawn(consumer.run(shutdown.clone()));
    // Settled either way: dead-lettered, or (the bug) handled and acked.
    let settled = source.wait_until(|s| !s.dead_letters().is_empty() || !s.acked().is_empty());
    tokio::time::timeout(PATIENCE, settled)
        .await
        .expect("the delivery was never settled");
    assert!(
        source.acked().is_empty(),
        "the late message was handled and acked"
    );
    shutdown.cancel();
    running.await.unwrap();

    let (message, reason) = source.dead_letters().remove(0);
    assert_eq!(message.id, late.id);
    assert!(
        reason.contains("older than the idempotency window"),
        "{reason}"
    );
    assert_eq!(handler.calls(), 0);
    assert_eq!(DB::records(&pool).await, 0);
}
