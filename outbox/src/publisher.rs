//! What the relay publishes through: any `tower::Service<Message>` one message per call
//! ([`Relay::builder`](crate::Relay::builder)), or a [`PublishBatch`] that takes the whole batch
//! ([`Relay::batch_builder`](crate::Relay::batch_builder)); and the two marker errors a publisher
//! uses to tell the relay what a failure means. With a batch publisher the markers apply per
//! message: each message's outcome is read as below.
//!
//! | the error carries | meaning | the relay |
//! |---|---|---|
//! | nothing | this publish failed; another try may pass | counts an attempt, retries after the backoff |
//! | [`Permanent`] | the broker refuses this message for good | moves it to the failure table at once |
//! | [`Unavailable`] | the broker itself cannot be reached | counts nothing, pauses and probes the broker |
//!
//! The relay looks for the markers anywhere in the error's source chain, so layers that wrap
//! errors (retries, timeouts, tracing) keep them; when a chain holds both, the outer one decides.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use courier_core::batch::{BatchFuture, by_key, fail_all};
use tower::{BoxError, Service, ServiceExt};

use crate::Message;

pub use courier_core::batch::{NotAttempted, PublishBatch};

/// A service the relay hands each message to; `Ok` means the broker has it.
///
/// Implemented for every cloneable `tower::Service<Message>` whose error converts into a
/// [`BoxError`], so producer middleware (timeouts, retries, status checks, tracing) composes around a
/// broker client with ordinary tower layers. The relay clones the service once per ordering key in
/// a batch and drives the clones concurrently.
///
/// # Examples
///
/// ```
/// use courier_outbox::{Message, Publisher};
/// use tower::service_fn;
///
/// let publisher = service_fn(|message: Message| async move {
///     println!("publishing {} to {}", message.id, message.topic);
///     Ok::<_, tower::BoxError>(())
/// });
/// fn assert_publisher(_: impl Publisher) {}
/// assert_publisher(publisher);
/// ```
pub trait Publisher:
    Service<Message, Response: Send, Error: Into<BoxError>, Future: Send> + Clone + Send + 'static
{
}

impl<S> Publisher for S where
    S: Service<Message, Response: Send, Error: Into<BoxError>, Future: Send>
        + Clone
        + Send
        + 'static
{
}

pub use courier_core::{Permanent, Unavailable};

/// How the relay hands a batch to its publisher `P`; sealed. [`OneByOne`] (the default, from
/// [`Relay::builder`](crate::Relay::builder)) for any [`Publisher`], [`Batched`] (from
/// [`Relay::batch_builder`](crate::Relay::batch_builder)) for a [`PublishBatch`].
///
/// # Examples
///
/// ```
/// use courier_outbox::{Message, OneByOne, PublishMode};
///
/// fn assert_mode<P, M: PublishMode<P>>(_: &P) {}
/// let publisher = tower::service_fn(|_: Message| async { Ok::<_, tower::BoxError>(()) });
/// assert_mode::<_, OneByOne>(&publisher);
/// ```
pub trait PublishMode<P>: sealed::Sealed + Send + Sync + 'static {
    /// Publishes `messages`: per message, how long its publish took or why it failed. `timeout`
    /// bounds one publish call; `max_in_flight` the keys published at once one by one.
    #[doc(hidden)]
    fn publish(
        publisher: &mut P,
        messages: Vec<Message>,
        timeout: Duration,
        max_in_flight: usize,
    ) -> BatchFuture<Duration>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::OneByOne {}
    impl Sealed for super::Batched {}
}

/// The relay publishes one message per call: keys concurrently (up to its `max_in_flight`),
/// each key's messages in order, a failure holding that key's later messages, an
/// [`Unavailable`] broker stopping the batch. `publish_timeout` bounds each call.
///
/// ```
/// use courier_outbox::{Message, OneByOne, Relay, RelayBuilder};
///
/// # fn demo(pool: sqlx::SqlitePool) {
/// let publisher = tower::service_fn(|_: Message| async { Ok::<_, tower::BoxError>(()) });
/// let _: RelayBuilder<sqlx::Sqlite, _, OneByOne> = Relay::builder(pool, publisher);
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct OneByOne;

impl<S: Publisher> PublishMode<S> for OneByOne {
    fn publish(
        publisher: &mut S,
        messages: Vec<Message>,
        timeout: Duration,
        max_in_flight: usize,
    ) -> BatchFuture<Duration> {
        // In a mutex so the shared closure is `Sync` whatever the service's `Sync`.
        let service = Mutex::new(publisher.clone());
        Box::pin(async move {
            let service = &service;
            by_key(messages, max_in_flight, move |message| {
                let mut service = service.lock().unwrap_or_else(|e| e.into_inner()).clone();
                async move {
                    let started = Instant::now();
                    let ready = service.ready().await.map_err(Into::into)?;
                    match tokio::time::timeout(timeout, ready.call(message)).await {
                        Ok(result) => result.map(|_| started.elapsed()).map_err(Into::into),
                        Err(_) => Err(BoxError::from(format!(
                            "publish timed out after {timeout:?}"
                        ))),
                    }
                }
            })
            .await
        })
    }
}

/// The relay hands each batch to a [`PublishBatch`] in one call (broker-lite: one request, one
/// group commit). `publish_timeout` bounds the whole call; when it runs out, every message of
/// the batch failed this attempt.
///
/// ```
/// use courier_core::batch::BatchFuture;
/// use courier_outbox::{Batched, Message, PublishBatch, Relay, RelayBuilder};
///
/// #[derive(Clone)]
/// struct Sink;
/// impl PublishBatch for Sink {
///     type Response = ();
///     fn publish_batch(&mut self, messages: Vec<Message>) -> BatchFuture<()> {
///         Box::pin(async move { messages.iter().map(|_| Ok(())).collect() })
///     }
/// }
/// # fn demo(pool: sqlx::SqlitePool) {
/// let _: RelayBuilder<sqlx::Sqlite, Sink, Batched> = Relay::batch_builder(pool, Sink);
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Batched;

impl<S> PublishMode<S> for Batched
where
    S: PublishBatch + Clone + Send + 'static,
{
    fn publish(
        publisher: &mut S,
        messages: Vec<Message>,
        timeout: Duration,
        _max_in_flight: usize,
    ) -> BatchFuture<Duration> {
        let count = messages.len();
        let call = publisher.publish_batch(messages);
        Box::pin(async move {
            let started = Instant::now();
            match tokio::time::timeout(timeout, call).await {
                Ok(outcomes) if outcomes.len() == count => {
                    let took = started.elapsed();
                    outcomes.into_iter().map(|o| o.map(|_| took)).collect()
                }
                Ok(outcomes) => fail_all(
                    format!(
                        "the batch publisher answered {} outcomes for {count} messages; every message counts as failed",
                        outcomes.len()
                    )
                    .into(),
                    count,
                ),
                Err(_) => fail_all(
                    format!("publishing the batch timed out after {timeout:?}").into(),
                    count,
                ),
            }
        })
    }
}

/// The marker that decides how the relay treats a publish error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Marker {
    Permanent,
    Unavailable,
}

impl Marker {
    /// The outermost marker in `error`'s source chain: the layer closest to the relay knows best
    /// (a retry layer that gave up on an unavailable broker may call the message permanent).
    pub(crate) fn of(error: &(dyn std::error::Error + 'static)) -> Option<Self> {
        let mut next = Some(error);
        while let Some(error) = next {
            if error.is::<Permanent>() {
                return Some(Self::Permanent);
            }
            if error.is::<Unavailable>() {
                return Some(Self::Unavailable);
            }
            next = error.source();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outer_marker_decides() {
        let unavailable_inside = Permanent::new(Unavailable::new("refused"));
        assert_eq!(Marker::of(&unavailable_inside), Some(Marker::Permanent));
        let permanent_inside = Unavailable::new(Permanent::new("too large"));
        assert_eq!(Marker::of(&permanent_inside), Some(Marker::Unavailable));
        let plain = std::io::Error::other("flaky");
        assert_eq!(Marker::of(&plain), None);
    }
}
