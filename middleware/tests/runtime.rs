//! The consumer runtime against the in-memory delivery source, on paused tokio time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_middleware::{
    ConsumeModel, Consumer, Delivery, DeliverySource, MemorySource, Reject, Retry,
};
use courier_outbox::Message;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::{BoxError, Service};

/// Every call the handler saw: (message payload, attempt).
type Calls = Arc<Mutex<Vec<(String, u32)>>>;

fn recording<F>(
    calls: &Calls,
    decide: F,
) -> impl Service<Delivery, Response = (), Error = BoxError, Future: Send> + Clone + Send + 'static
where
    F: Fn(&Delivery) -> Result<(), BoxError> + Clone + Send + Sync + 'static,
{
    let calls = calls.clone();
    tower::service_fn(move |delivery: Delivery| {
        let calls = calls.clone();
        let decide = decide.clone();
        async move {
            let payload = String::from_utf8(delivery.message.payload.to_vec()).unwrap();
            calls.lock().unwrap().push((payload, delivery.attempt));
            decide(&delivery)
        }
    })
}

fn start<S, H>(consumer: Consumer<S, H>) -> (CancellationToken, JoinHandle<()>)
where
    S: DeliverySource,
    H: Service<Delivery> + Clone + Send + 'static,
    H::Error: Into<BoxError>,
    H::Future: Send + 'static,
    H::Response: Send + 'static,
{
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(consumer.run(shutdown.clone()));
    (shutdown, task)
}

fn calls_of(calls: &Calls) -> Vec<(String, u32)> {
    calls.lock().unwrap().clone()
}

#[tokio::test(start_paused = true)]
async fn a_failed_delivery_is_redelivered_and_then_acked() {
    let source = MemorySource::new("billing");
    source.push(Message::new("orders", "m1"));
    let calls = Calls::default();
    let handler = recording(&calls, |d| {
        if d.attempt == 1 {
            Err("database unavailable".into())
        } else {
            Ok(())
        }
    });
    let (shutdown, task) = start(Consumer::builder(source.clone(), handler).build());

    source.wait_until(|s| s.acked().len() == 1).await;
    shutdown.cancel();
    task.await.unwrap();
    assert_eq!(calls_of(&calls), vec![("m1".into(), 1), ("m1".into(), 2)]);
    assert!(source.dead_letters().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_retry_with_a_delay_is_nacked_with_that_delay() {
    let source = MemorySource::new("billing").with_redelivery_delay(Duration::from_secs(1));
    source.push(Message::new("orders", "m1"));
    let calls = Calls::default();
    let handler = recording(&calls, |d| {
        if d.attempt == 1 {
            Err(Retry::after(Duration::from_secs(30), "rate limited").into())
        } else {
            Ok(())
        }
    });
    let started = tokio::time::Instant::now();
    let (shutdown, task) = start(Consumer::builder(source.clone(), handler).build());
    source.wait_until(|s| s.acked().len() == 1).await;
    // Paused time only moves to the next timer, so the second delivery came at the asked delay.
    assert!(started.elapsed() >= Duration::from_secs(30));
    shutdown.cancel();
    task.await.unwrap();
    assert_eq!(calls_of(&calls).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_message_is_dead_lettered_after_max_deliveries() {
    let source = MemorySource::new("billing");
    source.push(Message::new("orders", "poison"));
    let calls = Calls::default();
    let handler = recording(&calls, |_| Err("always fails".into()));
    let consumer = Consumer::builder(source.clone(), handler)
        .max_deliveries(3)
        .build();
    let (shutdown, task) = start(consumer);

    source.wait_until(|s| s.dead_letters().len() == 1).await;
    shutdown.cancel();
    task.await.unwrap();
    let attempts: Vec<u32> = calls_of(&calls).iter().map(|(_, a)| *a).collect();
    assert_eq!(attempts, vec![1, 2, 3]);
    assert!(source.acked().is_empty());
    assert_eq!(source.dead_letters()[0].1, "always fails");
}

#[tokio::test(start_paused = true)]
async fn a_rejected_message_is_dead_lettered_at_once() {
    let source = MemorySource::new("billing");
    source.push(Message::new("orders", "malformed"));
    let calls = Calls::default();
    let handler = recording(&calls, |_| Err(Reject::new("not JSON").into()));
    let (shutdown, task) = start(Consumer::builder(source.clone(), handler).build());

    source.wait_until(|s| s.dead_letters().len() == 1).await;
    shutdown.cancel();
    task.await.unwrap();
    assert_eq!(calls_of(&calls).len(), 1);
    assert!(source.acked().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_panicking_handler_is_redelivered_not_acked() {
    let source = MemorySource::new("billing");
    source.push(Message::new("orders", "m1"));
    let calls = Calls::default();
    let handler = recording(&calls, |d| {
        assert!(d.attempt > 1, "first delivery panics");
        Ok(())
    });
    let (shutdown, task) = start(Consumer::builder(source.clone(), handler).build());

    source.wait_until(|s| s.acked().len() == 1).await;
    shutdown.cancel();
    task.await.unwrap();
    assert_eq!(calls_of(&calls), vec![("m1".into(), 1), ("m1".into(), 2)]);
}

#[tokio::test(start_paused = true)]
async fn ordered_mode_keeps_the_order_of_each_key() {
    let source = MemorySource::new("billing");
    for n in 0..30 {
        let key = format!("order-{}", n % 3);
        source.push(Message::new("orders", format!("{key}/{n}")).with_key(key));
    }
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let handler = {
        let seen = seen.clone();
        tower::service_fn(move |delivery: Delivery| {
            let seen = seen.clone();
            async move {
                let payload = String::from_utf8(delivery.message.payload.to_vec()).unwrap();
                let n: u64 = payload.rsplit('/').next().unwrap().parse().unwrap();
                // Earlier messages take longer, so without ordering later ones would overtake.
                tokio::time::sleep(Duration::from_millis(300 - n * 10)).await;
                seen.lock().unwrap().push(payload);
                Ok::<_, BoxError>(())
            }
        })
    };
    let consumer = Consumer::builder(source.clone(), handler)
        .concurrency(8)
        .batch_size(8)
        .ordered(true)
        .build();
    let (shutdown, task) = start(consumer);

    source.wait_until(|s| s.acked().len() == 30).await;
    shutdown.cancel();
    task.await.unwrap();
    let mut per_key: HashMap<String, Vec<u64>> = HashMap::new();
    for payload in seen.lock().unwrap().iter() {
        let (key, n) = payload.split_once('/').unwrap();
        per_key
            .entry(key.into())
            .or_default()
            .push(n.parse().unwrap());
    }
    assert_eq!(per_key.len(), 3);
    for (key, order) in per_key {
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(order, sorted, "{key} was handled out of order");
        assert_eq!(order.len(), 10);
    }
}

#[tokio::test(start_paused = true)]
async fn concurrency_bounds_the_deliveries_in_flight() {
    let source = MemorySource::new("billing");
    for n in 0..20 {
        source.push(Message::new("orders", format!("{n}")));
    }
    let gate = Arc::new(Semaphore::new(0));
    let handler = {
        let gate = gate.clone();
        tower::service_fn(move |_: Delivery| {
            let gate = gate.clone();
            async move {
                gate.acquire().await?.forget();
                Ok::<_, BoxError>(())
            }
        })
    };
    let consumer = Consumer::builder(source.clone(), handler)
        .concurrency(4)
        .batch_size(4)
        .build();
    // (batch_size 4 lets one pull fetch all four.)
    let (shutdown, task) = start(consumer);

    source.wait_until(|s| s.in_flight() == 4).await;
    // Let time pass: no fifth delivery is pulled while four are in flight.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(source.in_flight(), 4);
    assert_eq!(source.waiting(), 16);
    gate.add_permits(20);
    source.wait_until(|s| s.acked().len() == 20).await;
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn batch_size_one_is_the_default() {
    let source = MemorySource::new("billing");
    for n in 0..5 {
        source.push(Message::new("orders", format!("{n}")));
    }
    let calls = Calls::default();
    let (shutdown, task) =
        start(Consumer::builder(source.clone(), recording(&calls, |_| Ok(()))).build());
    source.wait_until(|s| s.acked().len() == 5).await;
    shutdown.cancel();
    task.await.unwrap();
    // Never more than one delivery per pull.
    assert_eq!(source.largest_pull(), 1);
}

#[tokio::test(start_paused = true)]
async fn graceful_shutdown_stops_pulling_and_finishes_the_deliveries_in_flight() {
    let source = MemorySource::new("billing");
    source.push(Message::new("orders", "in flight"));
    let gate = Arc::new(Semaphore::new(0));
    let handler = {
        let gate = gate.clone();
        tower::service_fn(move |_: Delivery| {
            let gate = gate.clone();
            async move {
                gate.acquire().await?.forget();
                Ok::<_, BoxError>(())
            }
        })
    };
    let (shutdown, task) = start(
        Consumer::builder(source.clone(), handler)
            .concurrency(2)
            .build(),
    );
    source.wait_until(|s| s.in_flight() == 1).await;

    shutdown.cancel();
    source.push(Message::new("orders", "arrives after shutdown"));
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(
        !task.is_finished(),
        "the runtime returned with a delivery in flight"
    );
    gate.add_permits(1);
    task.await.unwrap();

    let acked: Vec<_> = source.acked().iter().map(|m| m.payload.clone()).collect();
    assert_eq!(acked, vec!["in flight"]);
    assert_eq!(source.waiting(), 1);
    assert_eq!(source.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_consumer_is_idempotent_only_when_declared_so() {
    let calls = Calls::default();
    let source = MemorySource::new("billing").with_model(ConsumeModel::Broadcasting);
    let plain = Consumer::builder(source.clone(), recording(&calls, |_| Ok(()))).build();
    assert!(!plain.is_idempotent());
    let declared = Consumer::builder(source.clone(), recording(&calls, |_| Ok(())))
        .declare_idempotent()
        .build();
    assert!(declared.is_idempotent());

    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy("postgres://unused@127.0.0.1/unused")
        .unwrap();
    let guarded = tower::ServiceBuilder::new()
        .layer(courier_middleware::IdempotencyLayer::new(pool))
        .service_fn(|_: courier_middleware::TxDelivery| async { Ok::<_, BoxError>(()) });
    // The runtime does not guess from the handler's type: the layer alone is not a declaration.
    let undeclared = Consumer::builder(source.clone(), guarded.clone()).build();
    assert!(!undeclared.is_idempotent());
    let guarded = Consumer::builder(source, guarded)
        .declare_idempotent()
        .build();
    assert!(guarded.is_idempotent());
}

#[tokio::test(start_paused = true)]
async fn the_group_is_taken_from_the_source() {
    let calls = Calls::default();
    let source = MemorySource::new("billing");
    let consumer = Consumer::builder(source, recording(&calls, |_| Ok(()))).build();
    assert_eq!(consumer.group(), "billing");
}

/// A broker without an immediate dead-letter operation: only pull, ack and nack.
struct NoDeadLetterOp(MemorySource);

impl DeliverySource for NoDeadLetterOp {
    type Receipt = courier_middleware::MemoryReceipt;
    type Error = std::convert::Infallible;

    async fn pull(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<courier_middleware::Pulled<Self::Receipt>>, Self::Error> {
        self.0.pull(max, wait).await
    }

    async fn ack(&self, receipt: Self::Receipt) -> Result<(), Self::Error> {
        self.0.ack(receipt).await
    }

    async fn nack(
        &self,
        receipt: Self::Receipt,
        delay: Option<Duration>,
    ) -> Result<courier_middleware::NackOutcome, Self::Error> {
        self.0.nack(receipt, delay).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_rejection_on_a_broker_without_dead_letter_op_is_nacked_until_the_broker_dead_letters_it()
{
    let memory = MemorySource::new("billing").with_max_deliveries(4);
    memory.push(Message::new("orders", "malformed"));
    let calls = Calls::default();
    let handler = recording(&calls, |_| Err(Reject::new("not JSON").into()));
    let (shutdown, task) =
        start(Consumer::builder(NoDeadLetterOp(memory.clone()), handler).build());

    memory.wait_until(|s| s.dead_letters().len() == 1).await;
    shutdown.cancel();
    task.await.unwrap();
    // Never acked; the broker's own limit moved it to its dead-letter queue.
    assert!(memory.acked().is_empty());
    assert_eq!(calls_of(&calls).len(), 4);
    assert_eq!(memory.dead_letters()[0].1, "maximum deliveries reached");
}

#[tokio::test(start_paused = true)]
async fn ordered_mode_retries_a_failure_in_place_and_keeps_the_order() {
    let source = MemorySource::new("billing");
    for n in 0..5 {
        source.push(Message::new("orders", format!("{n}")).with_key("order-1"));
    }
    let calls = Calls::default();
    let handler = recording(&calls, |d| {
        if d.message.payload.as_ref() == b"0" && d.attempt < 3 {
            Err("not yet".into())
        } else {
            Ok(())
        }
    });
    let consumer = Consumer::builder(source.clone(), handler)
        .concurrency(5)
        .batch_size(5)
        .ordered(true)
        .build();
    let (shutdown, task) = start(consumer);

    source.wait_until(|s| s.acked().len() == 5).await;
    shutdown.cancel();
    task.await.unwrap();
    let seen = calls_of(&calls);
    let expected: Vec<(String, u32)> = [
        ("0", 1),
        ("0", 2),
        ("0", 3),
        ("1", 1),
        ("2", 1),
        ("3", 1),
        ("4", 1),
    ]
    .into_iter()
    .map(|(p, a)| (p.to_owned(), a))
    .collect();
    assert_eq!(seen, expected);
    let acked: Vec<_> = source.acked().iter().map(|m| m.payload.clone()).collect();
    assert_eq!(acked, vec!["0", "1", "2", "3", "4"]);
}

#[tokio::test(start_paused = true)]
async fn a_batch_handler_gets_up_to_its_maximum_and_the_batch_is_settled_as_a_whole() {
    let source = MemorySource::new("billing");
    for n in 0..8 {
        source.push(Message::new("orders", format!("{n}")));
    }
    source.push(Message::new("orders", "poison"));
    let sizes: Arc<Mutex<Vec<usize>>> = Arc::default();
    let handler = tower::ServiceBuilder::new()
        .layer(courier_middleware::BatchLayer::new(4))
        .service_fn({
            let sizes = sizes.clone();
            move |batch: Vec<Delivery>| {
                let sizes = sizes.clone();
                async move {
                    sizes.lock().unwrap().push(batch.len());
                    if batch
                        .iter()
                        .any(|d| d.message.payload.as_ref() == b"poison")
                    {
                        return Err::<(), BoxError>(Reject::new("poison in the batch").into());
                    }
                    Ok(())
                }
            }
        });
    let consumer = Consumer::builder(source.clone(), handler)
        .concurrency(8)
        .batch_size(8)
        .build();
    let (shutdown, task) = start(consumer);

    source
        .wait_until(|s| s.acked().len() + s.dead_letters().len() == 9)
        .await;
    shutdown.cancel();
    task.await.unwrap();
    // The first pull brought 8: two batches of 4; the poison came alone in the next pull.
    assert_eq!(*sizes.lock().unwrap(), vec![4, 4, 1]);
    assert_eq!(source.acked().len(), 8);
    let dead = source.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].1, "the batch failed: rejected: poison in the batch");
}

#[tokio::test(start_paused = true)]
async fn a_handler_that_never_answers_is_redelivered_after_the_default_consume_timeout() {
    let source = MemorySource::new("billing");
    source.push(Message::new("orders", "m1"));
    let calls = Calls::default();
    let handler = {
        let calls = calls.clone();
        tower::service_fn(move |delivery: Delivery| {
            let calls = calls.clone();
            async move {
                calls
                    .lock()
                    .unwrap()
                    .push((String::new(), delivery.attempt));
                if delivery.attempt == 1 {
                    std::future::pending::<()>().await;
                }
                Ok::<_, BoxError>(())
            }
        })
    };
    let started = tokio::time::Instant::now();
    let (shutdown, task) = start(Consumer::builder(source.clone(), handler).build());

    source.wait_until(|s| s.acked().len() == 1).await;
    shutdown.cancel();
    task.await.unwrap();
    let attempts: Vec<u32> = calls_of(&calls).iter().map(|(_, a)| *a).collect();
    assert_eq!(attempts, vec![1, 2]);
    // Paused time jumps from timer to timer: the first call was abandoned at the 15-minute mark.
    assert!(started.elapsed() >= courier_middleware::DEFAULT_CONSUME_TIMEOUT);
}
