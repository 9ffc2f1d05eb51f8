//! The cases every adapter runs, generic over the [`Adapter`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use courier_middleware::{Consumer, ConsumerBuilder, Delivery, DeliverySource};
use courier_outbox::Backoff;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::{BoxError, Service, ServiceExt};

use crate::effects::{self, Act, Seen};
use crate::harness::{Adapter, PATIENCE, Topic, eventually, publish};

/// A consumer with the suite's settings: short long polls, a few deliveries in flight.
fn consumer<S, H>(source: S, handler: H) -> ConsumerBuilder<S, H>
where
    S: DeliverySource,
    H: Service<Delivery, Response = (), Error = BoxError, Future: Send> + Clone + Send + 'static,
{
    Consumer::builder(source, handler)
        .concurrency(4)
        .poll_wait(Duration::from_millis(200))
}

struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

fn run<S, H>(builder: ConsumerBuilder<S, H>) -> Running
where
    S: DeliverySource,
    H: Service<Delivery, Response = (), Error = BoxError, Future: Send> + Clone + Send + 'static,
{
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(builder.build().run(shutdown.clone()));
    Running { shutdown, task }
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the consumer stops")
            .unwrap();
    }
}

async fn setup<A: Adapter>(adapter: &A, pool: &PgPool, case: &str) -> Topic {
    effects::create_table(pool).await;
    adapter.topic(case).await
}

/// Messages published go to the handler once each, with their envelope intact, and are acked.
pub(crate) async fn publish_consume<A: Adapter>(adapter: A, pool: PgPool) {
    let topic = setup(&adapter, &pool, "publish").await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let messages: Vec<_> = (0..3)
        .map(|n| {
            topic
                .message(format!("order {n}"))
                .with_key(format!("order-{n}"))
                .with_tag("created")
                .with_header("tenant", "acme")
                .with_header("traceparent", traceparent)
        })
        .collect();
    for message in &messages {
        publish(&adapter, message.clone()).await;
    }
    let seen = Seen::default();
    let source = adapter.source(&topic).await;
    let running = run(consumer(
        source,
        effects::handler(&pool, &seen, |_| Act::Succeed),
    ));
    for message in &messages {
        eventually("each message settled", || {
            adapter.settled(&topic, message.id)
        })
        .await;
        assert_eq!(effects::effects_of(&pool, message.id).await, 1);
    }
    running.stop().await;
    let deliveries = seen.deliveries();
    for message in &messages {
        let got = deliveries
            .iter()
            .find(|d| d.message.id == message.id)
            .expect("delivered");
        assert_eq!(got.message.topic, message.topic);
        assert_eq!(got.message.key, message.key);
        assert_eq!(got.message.tag, message.tag);
        assert_eq!(got.message.payload, message.payload);
        assert_eq!(got.message.headers["tenant"], "acme");
        let parent = &got.message.headers["traceparent"];
        assert!(
            parent.contains("4bf92f3577b34da6a3ce929d0e0e4736"),
            "the trace continues: {parent}"
        );
        assert_eq!(got.attempt, 1);
        assert_eq!(got.group, topic.group);
        assert_eq!(
            got.message.created_at.timestamp_millis(),
            message.created_at.timestamp_millis()
        );
    }
}

/// A delivery whose handler wrote its effect and then failed is not acked: it comes again, and the
/// rolled-back effect is written once, by the attempt that committed.
pub(crate) async fn ack_after_commit<A: Adapter>(adapter: A, pool: PgPool) {
    let topic = setup(&adapter, &pool, "commit").await;
    let message = topic.message("pay order 7");
    publish(&adapter, message.clone()).await;
    let seen = Seen::default();
    let running = run(consumer(
        adapter.source(&topic).await,
        effects::handler(&pool, &seen, |d| match d.attempt {
            1 => Act::Fail(None),
            _ => Act::Succeed,
        }),
    ));
    eventually("the message settled", || {
        adapter.settled(&topic, message.id)
    })
    .await;
    running.stop().await;
    let attempts: Vec<u32> = seen
        .calls_of(message.id)
        .iter()
        .map(|c| c.attempt)
        .collect();
    assert_eq!(attempts, [1, 2]);
    assert_eq!(effects::effects_of(&pool, message.id).await, 1);
}

/// A retryable error asking for a delay is redelivered, not before the delay.
pub(crate) async fn error_redelivers_with_delay<A: Adapter>(adapter: A, pool: PgPool) {
    let topic = setup(&adapter, &pool, "delay").await;
    let message = topic.message("retry me later");
    publish(&adapter, message.clone()).await;
    let delay = Duration::from_millis(400);
    let seen = Seen::default();
    let running = run(consumer(
        adapter.source(&topic).await,
        effects::handler(&pool, &seen, move |d| match d.attempt {
            1 => Act::Fail(Some(delay)),
            _ => Act::Succeed,
        }),
    ));
    eventually("the message settled", || {
        adapter.settled(&topic, message.id)
    })
    .await;
    running.stop().await;
    let calls = seen.calls_of(message.id);
    assert_eq!(calls.iter().map(|c| c.attempt).collect::<Vec<_>>(), [1, 2]);
    // A lower bound only: the broker must not redeliver early; how late it is is not checked.
    let waited = calls[1].at - calls[0].at;
    assert!(
        waited >= delay,
        "redelivered after {waited:?}, asked for {delay:?}"
    );
    assert_eq!(effects::effects_of(&pool, message.id).await, 1);
}

/// A handler that panics, or that never answers within the consume timeout, gets the delivery
/// again.
pub(crate) async fn panic_and_timeout_redeliver<A: Adapter>(adapter: A, pool: PgPool) {
    let topic = setup(&adapter, &pool, "panic").await;
    let panics = topic.message("panic first");
    let hangs = topic.message("hang first");
    publish(&adapter, panics.clone()).await;
    publish(&adapter, hangs.clone()).await;
    let seen = Seen::default();
    let hangs_id = hangs.id;
    let running = run(consumer(
        adapter.source(&topic).await,
        effects::handler(&pool, &seen, move |d| match d.attempt {
            1 if d.message.id == hangs_id => Act::Hang,
            1 => Act::Panic,
            _ => Act::Succeed,
        }),
    )
    .consume_timeout(Duration::from_secs(2)));
    for message in [&panics, &hangs] {
        eventually("the message settled", || {
            adapter.settled(&topic, message.id)
        })
        .await;
        let attempts: Vec<u32> = seen
            .calls_of(message.id)
            .iter()
            .map(|c| c.attempt)
            .collect();
        assert_eq!(attempts, [1, 2], "{}", message.payload.escape_ascii());
        assert_eq!(effects::effects_of(&pool, message.id).await, 1);
    }
    running.stop().await;
}

/// A rejected message is dead-lettered at once; one that fails every time is dead-lettered after
/// the last delivery. Neither leaves an effect.
pub(crate) async fn poison_dead_letters<A: Adapter>(adapter: A, pool: PgPool) {
    let topic = setup(&adapter, &pool, "poison").await;
    let rejected = topic.message("malformed");
    let failing = topic.message("always fails");
    publish(&adapter, rejected.clone()).await;
    publish(&adapter, failing.clone()).await;
    let seen = Seen::default();
    let rejected_id = rejected.id;
    let running = run(consumer(
        adapter.source(&topic).await,
        effects::handler(&pool, &seen, move |d| {
            if d.message.id == rejected_id {
                Act::Reject
            } else {
                Act::Fail(Some(Duration::from_millis(100)))
            }
        }),
    )
    .max_deliveries(3));
    eventually("both dead-lettered", || async {
        let letters = adapter.dead_letters(&topic).await;
        letters.contains(&rejected.id) && letters.contains(&failing.id)
    })
    .await;
    for message in [&rejected, &failing] {
        eventually("the message settled", || {
            adapter.settled(&topic, message.id)
        })
        .await;
    }
    running.stop().await;
    let attempts = |id| -> Vec<u32> { seen.calls_of(id).iter().map(|c| c.attempt).collect() };
    assert_eq!(attempts(rejected.id), [1]);
    assert_eq!(attempts(failing.id), [1, 2, 3]);
    assert_eq!(effects::effects_of(&pool, rejected.id).await, 0);
    assert_eq!(effects::effects_of(&pool, failing.id).await, 0);
    assert_eq!(
        adapter.dead_letters(&topic).await.len(),
        2,
        "each dead-lettered once"
    );
}

/// The same message published twice (a relay that died before marking it sent) has one effect,
/// and one stored copy where the broker deduplicates by message id.
pub(crate) async fn duplicate_publish_has_one_effect<A: Adapter>(adapter: A, pool: PgPool) {
    let topic = setup(&adapter, &pool, "duplicate").await;
    let message = topic.message("published twice");
    publish(&adapter, message.clone()).await;
    publish(&adapter, message.clone()).await;
    let copies = adapter.stored_copies(&topic, message.id).await;
    if A::PROMISES.deduplicates_publishes {
        assert_eq!(copies, 1, "the broker deduplicates by message id");
    } else {
        assert_eq!(copies, 2);
    }
    let seen = Seen::default();
    let running = run(consumer(
        adapter.source(&topic).await,
        effects::handler(&pool, &seen, |_| Act::Succeed),
    ));
    eventually("every copy delivered", || async {
        seen.deliveries().len() == copies
    })
    .await;
    eventually("the message settled", || {
        adapter.settled(&topic, message.id)
    })
    .await;
    running.stop().await;
    assert_eq!(effects::effects_of(&pool, message.id).await, 1);
    assert_eq!(
        seen.calls_of(message.id).len(),
        1,
        "the duplicate was skipped"
    );
}

/// In ordered mode the messages of one key are handled in publish order, even when one of them
/// fails and is retried.
pub(crate) async fn per_key_order<A: Adapter>(adapter: A, pool: PgPool) {
    let topic = setup(&adapter, &pool, "order").await;
    let keys = ["a", "b", "c"];
    let mut published = Vec::new();
    for n in 0..6 {
        for key in keys {
            let message = topic.message(format!("{key}{n}")).with_key(key);
            publish(&adapter, message.clone()).await;
            published.push(message);
        }
    }
    let seen = Seen::default();
    let running = run(consumer(
        adapter.source(&topic).await,
        effects::handler(&pool, &seen, |d| {
            let payload = String::from_utf8_lossy(&d.message.payload).into_owned();
            if payload.ends_with('2') && d.attempt == 1 {
                Act::Fail(None)
            } else {
                Act::Succeed
            }
        }),
    )
    .ordered(true)
    .ordered_backoff(Backoff {
        base: Duration::from_millis(50),
        factor: 2.0,
        max: Duration::from_millis(200),
        jitter: 0.0,
    }));
    for message in &published {
        eventually("every message settled", || {
            adapter.settled(&topic, message.id)
        })
        .await;
    }
    running.stop().await;
    let mut per_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for payload in effects::effects(&pool).await {
        per_key
            .entry(payload[..1].to_owned())
            .or_default()
            .push(payload);
    }
    for key in keys {
        let expected: Vec<String> = (0..6).map(|n| format!("{key}{n}")).collect();
        assert_eq!(per_key[key], expected, "key {key}");
    }
}

/// The broker goes down while a delivery is in the handler: the publisher reports failures (not
/// success) while it is down, the source reconnects once it is back, the unsettled delivery comes
/// again, and what is published afterwards is consumed.
pub(crate) async fn reconnect_after_the_connection_drops<A: Adapter>(mut adapter: A, pool: PgPool) {
    let topic = setup(&adapter, &pool, "reconnect").await;
    let before = topic.message("in the handler when the broker dies");
    publish(&adapter, before.clone()).await;
    let publisher = adapter.publisher().await;
    let in_handler = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let seen = Seen::default();
    let before_id = before.id;
    let (entered, released) = (in_handler.clone(), release.clone());
    let held = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handler = effects::handler(&pool, &seen, move |d| match d.attempt {
        1 if d.message.id == before_id => Act::Fail(None),
        _ => Act::Succeed,
    });
    // The first delivery waits in the handler until the broker has died and come back.
    let handler = tower::ServiceBuilder::new()
        .then(move |result: Result<(), BoxError>| {
            let (entered, released) = (entered.clone(), released.clone());
            let hold = result.is_err() && !held.swap(true, std::sync::atomic::Ordering::SeqCst);
            async move {
                if hold {
                    entered.notify_one();
                    released.notified().await;
                }
                result
            }
        })
        .service(handler);
    let running = run(consumer(adapter.source(&topic).await, handler));
    tokio::time::timeout(PATIENCE, in_handler.notified())
        .await
        .expect("the first delivery reached the handler");

    adapter.kill().await;
    let during = topic.message("published while the broker is down");
    let answer = tokio::time::timeout(PATIENCE, publisher.clone().oneshot(during.clone()))
        .await
        .expect("the publisher answers while the broker is down");
    assert!(answer.is_err(), "a publish to a dead broker succeeded");
    adapter.restart().await;
    release.notify_one();

    let after = topic.message("published after the restart");
    publish(&adapter, after.clone()).await;
    for message in [&before, &after] {
        let what = format!("{:?} consumed after the restart", message.payload);
        eventually(&what, || async {
            effects::effects_of(&pool, message.id).await == 1
        })
        .await;
    }
    running.stop().await;
    let attempts: Vec<u32> = seen.calls_of(before.id).iter().map(|c| c.attempt).collect();
    assert!(attempts.len() >= 2 && attempts[0] == 1, "{attempts:?}");
    assert_eq!(
        effects::effects_of(&pool, during.id).await,
        0,
        "never stored"
    );
}
