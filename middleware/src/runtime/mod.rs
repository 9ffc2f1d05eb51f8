//! The consumer runtime: pulls from a [`DeliverySource`], drives a handler stack, settles each
//! delivery according to the handler's answer.

mod ordered;
mod settle;

use std::sync::Arc;
use std::time::Duration;

use courier_core::Backoff;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::{BoxError, Service};

use crate::{ConsumeModel, Delivery, DeliverySource};
use ordered::Chains;

/// Settings of a [`Consumer`]; see the builder methods for each.
#[derive(Debug, Clone)]
struct Config {
    group: String,
    concurrency: usize,
    batch_size: usize,
    poll_wait: Duration,
    ordered: bool,
    ordered_backoff: Backoff,
    max_deliveries: u32,
    consume_timeout: Duration,
    declared_idempotent: bool,
}

/// Drives a handler (`tower::Service<Delivery>`) from a [`DeliverySource`].
///
/// - **Settling** (safeguards C1, C2, C8): `Ok` acks; an error is classified by
///   [`Disposition`](crate::Disposition): retryable errors nack (with the delay the handler asked
///   for), [`Reject`](crate::Reject) dead-letters at once, and a retryable failure of the
///   `max_deliveries`-th delivery (default 16) dead-letters too. A panic is caught here as well (add
///   [`CatchPanicLayer`](crate::CatchPanicLayer) to see it in your own layers) and redelivers, and
///   so is a call that outlives the consume timeout (15 minutes by default, C3). No
///   path acks a failed delivery. If settling itself fails the broker keeps the message and
///   redelivers it after its own timeout.
/// - **Bounded concurrency**: at most `concurrency` deliveries in flight (default 16); the runtime
///   pulls only as many as it has room for, at most `batch_size` per pull (default 1, C6).
/// - **Ordered mode**: one delivery in flight per ordering key (the message key, else the queue),
///   in the order the source handed them out. A retryable failure is retried in place after a
///   backoff (1 s doubling to 60 s, or the delay of a [`Retry`](crate::Retry)), holding the key,
///   so later messages of the key cannot overtake it; after `max_deliveries` attempts it is
///   dead-lettered and the key moves on.
/// - **Graceful shutdown**: when the token is cancelled the runtime stops pulling (an outstanding
///   long poll is dropped, so `pull` must be cancel safe), lets every delivery in flight finish and
///   settle, then returns.
/// - **Broadcasting** (C5): with a source in [`ConsumeModel::Broadcasting`] every group member runs
///   the side effects; the runtime warns unless the stack contains the
///   [`Idempotency`](crate::Idempotency) layer or you [`declare_idempotent`](ConsumerBuilder::declare_idempotent).
///
/// Metrics (L3), labelled by `group`: `courier_consumer_acks_total`,
/// `courier_consumer_redeliveries_total`, `courier_consumer_dead_letters_total`,
/// `courier_consumer_settle_failures_total`.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// use courier_middleware::{CatchPanicLayer, ConsumeTimeoutLayer, Consumer, Delivery, MemorySource};
/// use courier_core::Message;
/// use tokio_util::sync::CancellationToken;
/// use tower::ServiceBuilder;
///
/// let source = MemorySource::new("billing");
/// source.push(Message::new("orders", "{}"));
/// let handler = ServiceBuilder::new()
///     .layer(CatchPanicLayer::new())
///     .layer(ConsumeTimeoutLayer::default())
///     .service_fn(|delivery: Delivery| async move {
///         println!("handling {}", delivery.message.id);
///         Ok::<_, tower::BoxError>(())
///     });
/// let shutdown = CancellationToken::new();
/// let consumer = Consumer::builder(source.clone(), handler).build();
/// let running = tokio::spawn(consumer.run(shutdown.clone()));
/// source.wait_until(|s| s.acked().len() == 1).await;
/// shutdown.cancel();
/// running.await.unwrap();
/// # }
/// ```
#[derive(Debug)]
pub struct Consumer<S, H> {
    source: Arc<S>,
    handler: H,
    config: Config,
}

/// Builds a [`Consumer`]; every setting has a default.
#[derive(Debug)]
#[must_use]
pub struct ConsumerBuilder<S, H> {
    source: S,
    handler: H,
    config: Config,
}

/// At most this many deliveries in flight unless configured: 16.
pub const DEFAULT_CONCURRENCY: usize = 16;
/// Deliveries of one message before a retryable failure dead-letters it: 16, as RocketMQ's
/// `maxReconsumeTimes`.
pub const DEFAULT_MAX_DELIVERIES: u32 = 16;

impl<S, H> Consumer<S, H>
where
    S: DeliverySource,
    H: Service<Delivery> + Clone + Send + 'static,
    H::Error: Into<BoxError>,
    H::Future: Send + 'static,
    H::Response: Send + 'static,
{
    /// A builder for a consumer of `source` running `handler`.
    pub fn builder(source: S, handler: H) -> ConsumerBuilder<S, H> {
        let group = source.group().unwrap_or_default().to_owned();
        ConsumerBuilder {
            source,
            handler,
            config: Config {
                group,
                concurrency: DEFAULT_CONCURRENCY,
                batch_size: 1,
                poll_wait: Duration::from_secs(5),
                ordered: false,
                ordered_backoff: Backoff {
                    base: Duration::from_secs(1),
                    factor: 2.0,
                    max: Duration::from_secs(60),
                    jitter: 0.0,
                },
                max_deliveries: DEFAULT_MAX_DELIVERIES,
                consume_timeout: crate::DEFAULT_CONSUME_TIMEOUT,
                declared_idempotent: false,
            },
        }
    }

    /// Whether the handler stack was declared to deduplicate deliveries
    /// ([`ConsumerBuilder::declare_idempotent`]). The runtime cannot see inside a handler's
    /// type, so this is what the builder was told, not a guess.
    pub fn is_idempotent(&self) -> bool {
        self.config.declared_idempotent
    }

    /// The consumer group named in logs and metrics.
    pub fn group(&self) -> &str {
        &self.config.group
    }

    /// Runs until `shutdown` is cancelled and the deliveries in flight are settled.
    pub async fn run(self, shutdown: CancellationToken) {
        let Self {
            source,
            handler,
            config,
            ..
        } = self;
        let config = Arc::new(config);
        let room = Arc::new(Semaphore::new(config.concurrency));
        let mut tasks = JoinSet::new();
        let mut chains = Chains::default();
        let mut pull_failures = 0_u32;
        tracing::info!(group = %config.group, concurrency = config.concurrency,
            batch_size = config.batch_size, ordered = config.ordered, "consumer started");
        loop {
            while tasks.try_join_next().is_some() {}
            let first = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                permit = room.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let mut permits = vec![first];
            while permits.len() < config.batch_size {
                match room.clone().try_acquire_owned() {
                    Ok(permit) => permits.push(permit),
                    Err(_) => break,
                }
            }
            let pulled = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                pulled = source.pull(permits.len(), config.poll_wait) => pulled,
            };
            let pulled = match pulled {
                Ok(pulled) => {
                    pull_failures = 0;
                    pulled
                }
                Err(error) => {
                    pull_failures += 1;
                    let error: BoxError = error.into();
                    let pause = Duration::from_millis(100 * 2_u64.pow(pull_failures.min(8)));
                    tracing::warn!(%error, ?pause, "pulling deliveries failed; trying again");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(pause) => continue,
                    }
                }
            };
            for (item, permit) in pulled.into_iter().zip(permits) {
                let after = if config.ordered {
                    item.delivery.ordering_key().map(|key| chains.link(key))
                } else {
                    None
                };
                let source = source.clone();
                let handler = handler.clone();
                let config = config.clone();
                tasks.spawn(async move {
                    let done = match after {
                        Some((previous, done)) => {
                            // The previous delivery of this key has finished (or its task died).
                            if let Some(previous) = previous {
                                let _ = previous.await;
                            }
                            Some(done)
                        }
                        None => None,
                    };
                    settle::handle(&*source, handler, item, &config).await;
                    drop(done);
                    drop(permit);
                });
            }
        }
        tracing::info!(group = %config.group, in_flight = tasks.len(),
            "consumer stopping: finishing deliveries in flight");
        while let Some(joined) = tasks.join_next().await {
            if let Err(error) = joined {
                tracing::error!(%error, "a delivery task failed");
            }
        }
        tracing::info!(group = %config.group, "consumer stopped");
    }
}

impl<S, H> ConsumerBuilder<S, H>
where
    S: DeliverySource,
    H: Service<Delivery> + Clone + Send + 'static,
    H::Error: Into<BoxError>,
    H::Future: Send + 'static,
    H::Response: Send + 'static,
{
    /// The consumer group's name, for logs and metrics (deliveries carry their own group). By
    /// default the source's ([`DeliverySource::group`]), so it is only needed for a source that
    /// does not know its group.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.config.group = group.into();
        self
    }

    /// At most `n` deliveries in flight (at least 1). Default [`DEFAULT_CONCURRENCY`].
    pub fn concurrency(mut self, n: usize) -> Self {
        self.config.concurrency = n.max(1);
        self
    }

    /// At most `n` deliveries per pull (at least 1). Default 1, for precise control (C6).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.config.batch_size = n.max(1);
        self
    }

    /// How long one pull waits for deliveries (long poll). Default 5 s.
    pub fn poll_wait(mut self, wait: Duration) -> Self {
        self.config.poll_wait = wait;
        self
    }

    /// One delivery in flight per ordering key (message key, else queue). Default off.
    pub fn ordered(mut self, ordered: bool) -> Self {
        self.config.ordered = ordered;
        self
    }

    /// The pause before an ordered delivery is retried in place. Default 1 s doubling to 60 s.
    pub fn ordered_backoff(mut self, backoff: Backoff) -> Self {
        self.config.ordered_backoff = backoff;
        self
    }

    /// A retryable failure of delivery number `n` dead-letters the message. Default
    /// [`DEFAULT_MAX_DELIVERIES`].
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.config.max_deliveries = n.max(1);
        self
    }

    /// A handler call running longer than `timeout` is abandoned (its future dropped) and the
    /// delivery redelivered (C3). Default [`DEFAULT_CONSUME_TIMEOUT`](crate::DEFAULT_CONSUME_TIMEOUT),
    /// 15 minutes; a [`ConsumeTimeoutLayer`](crate::ConsumeTimeoutLayer) in the stack can set a
    /// shorter one per handler.
    pub fn consume_timeout(mut self, timeout: Duration) -> Self {
        self.config.consume_timeout = timeout;
        self
    }

    /// Declares that the handler deduplicates redeliveries: its stack has the
    /// [`Idempotency`](crate::Idempotency) layer, or it deduplicates by other means. Without it a
    /// broadcasting source logs a warning (C5). `courier::App` declares the handlers it wraps in
    /// the layer itself.
    pub fn declare_idempotent(mut self) -> Self {
        self.config.declared_idempotent = true;
        self
    }

    /// The consumer. Warns when a broadcasting source feeds a handler not known to be idempotent
    /// (C5), and when `batch_size` exceeds `concurrency` (the extra room is never used).
    pub fn build(self) -> Consumer<S, H> {
        let mut config = self.config;
        if config.batch_size > config.concurrency {
            tracing::warn!(
                batch_size = config.batch_size,
                concurrency = config.concurrency,
                "batch size is larger than the concurrency; pulls are capped at the concurrency"
            );
            config.batch_size = config.concurrency;
        }
        let consumer = Consumer {
            source: Arc::new(self.source),
            handler: self.handler,
            config,
        };
        if consumer.source.model() == ConsumeModel::Broadcasting && !consumer.is_idempotent() {
            tracing::warn!(
                group = %consumer.config.group,
                "broadcasting consumer whose handler is not declared idempotent: every member \
                 runs the handler's side effects, and redeliveries repeat them; add \
                 IdempotencyLayer and call declare_idempotent() on the consumer builder"
            );
        }
        consumer
    }
}
