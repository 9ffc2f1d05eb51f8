//! Publishing a batch: the contract ([`PublishBatch`]) and the pieces its implementations share.
//!
//! A batch holds messages in the order the relay claimed them, so each key's messages are in
//! sequence order. The answer is one outcome per message, in the batch's order. The contract on
//! order: a message must never be stored before an earlier message of its key in the same batch,
//! and once a message of a key failed, the later messages of that key should not be sent (their
//! outcome is then a [`NotAttempted`] error). A later message that was sent anyway (broker-lite
//! stores a whole batch in one request) is treated by the relay as not published: it goes again
//! after the failed one, and consumers drop the first copy by its id.
//!
//! The markers keep their meaning per message: an outcome carrying
//! [`Permanent`](crate::Permanent) fails that message for good, one carrying
//! [`Unavailable`] says the broker cannot be reached.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;

use crate::{Message, Unavailable};

/// A boxed error, as `tower::BoxError`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One outcome per message of a batch, in the batch's order.
pub type Outcomes<R> = Vec<Result<R, BoxError>>;

/// The future a [`PublishBatch`] returns.
pub type BatchFuture<R> = Pin<Box<dyn Future<Output = Outcomes<R>> + Send + 'static>>;

/// A publisher that takes a whole batch and answers one outcome per message.
///
/// The relay publishes through it with `Relay::batch_builder`; any `tower::Service<Message>`
/// still works through `Relay::builder`, which sends one message per call. A batch publisher
/// sends the batch the cheapest way its broker allows (broker-lite: one request and one group
/// commit; NATS and RabbitMQ: many publishes in flight, each ack checked), keeping the order
/// rules of the [module](self).
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use courier_core::{Message, batch::{BatchFuture, PublishBatch}};
///
/// #[derive(Clone)]
/// struct Printer;
///
/// impl PublishBatch for Printer {
///     type Response = ();
///     fn publish_batch(&mut self, messages: Vec<Message>) -> BatchFuture<()> {
///         Box::pin(async move {
///             println!("one request with {} messages", messages.len());
///             messages.iter().map(|_| Ok(())).collect()
///         })
///     }
/// }
///
/// let outcomes = Printer.publish_batch(vec![Message::new("t", "a"), Message::new("t", "b")]).await;
/// assert_eq!(outcomes.len(), 2);
/// # }
/// ```
pub trait PublishBatch {
    /// What a published message answers (a broker's send result, or `()`).
    type Response: Send + 'static;

    /// Publishes `messages`; exactly one outcome per message, in order.
    fn publish_batch(&mut self, messages: Vec<Message>) -> BatchFuture<Self::Response>;
}

/// A message of a batch that was not sent, so the broker never saw it; the relay gives it back
/// untouched (no attempt counted).
///
/// ```
/// use courier_core::batch::NotAttempted;
///
/// let error = NotAttempted::after_failure(Some("order-7"));
/// assert!(error.to_string().contains("order-7"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAttempted {
    reason: String,
}

impl NotAttempted {
    /// Not sent because an earlier message of `key` in the batch failed (so it cannot overtake it).
    pub fn after_failure(key: Option<&str>) -> Self {
        Self {
            reason: format!(
                "an earlier message of key {:?} in this batch failed",
                key.unwrap_or_default()
            ),
        }
    }

    /// Not sent because a publish of the batch found the broker unavailable.
    pub fn broker_unavailable() -> Self {
        Self {
            reason: "the broker was found unavailable during this batch".to_owned(),
        }
    }

    /// Whether `error`'s source chain holds a [`NotAttempted`].
    ///
    /// ```
    /// use courier_core::batch::{BoxError, NotAttempted};
    ///
    /// let error: BoxError = Box::new(NotAttempted::broker_unavailable());
    /// assert!(NotAttempted::is_not_attempted(error.as_ref()));
    /// ```
    pub fn is_not_attempted(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut next = Some(error);
        while let Some(error) = next {
            if error.is::<Self>() {
                return true;
            }
            next = error.source();
        }
        false
    }
}

impl fmt::Display for NotAttempted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not sent: {}", self.reason)
    }
}

impl std::error::Error for NotAttempted {}

/// The error of a call that failed for a whole batch, shared by every message's outcome. Its
/// source is the original error, so the markers in it still count for each message.
///
/// ```
/// use courier_core::{Unavailable, batch::{fail_all, BoxError}};
///
/// let outcomes = fail_all::<()>(Box::new(Unavailable::new("connection refused")), 3);
/// assert_eq!(outcomes.len(), 3);
/// let error = outcomes[2].as_ref().unwrap_err();
/// assert!(Unavailable::is_unavailable(error.as_ref()));
/// ```
#[derive(Debug, Clone)]
pub struct BatchCallFailed(Arc<BoxError>);

impl fmt::Display for BatchCallFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the batch failed: {}", self.0)
    }
}

impl std::error::Error for BatchCallFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref().as_ref())
    }
}

/// `n` outcomes, each the shared `error` (see [`BatchCallFailed`]).
pub fn fail_all<R>(error: BoxError, n: usize) -> Outcomes<R> {
    let shared = BatchCallFailed(Arc::new(error));
    (0..n)
        .map(|_| Err(Box::new(shared.clone()) as BoxError))
        .collect()
}

/// Indices of `messages` grouped by key, each group in batch order; unkeyed messages are groups
/// of one. Groups come in the order of their first message.
///
/// ```
/// use courier_core::{Message, batch::key_groups};
///
/// let m = |key: &str| Message::new("t", "").with_key(key);
/// let groups = key_groups(&[m("a"), Message::new("t", ""), m("b"), m("a")]);
/// assert_eq!(groups, vec![vec![0, 3], vec![1], vec![2]]);
/// ```
pub fn key_groups(messages: &[Message]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut by_key: HashMap<&str, usize> = HashMap::new();
    for (index, message) in messages.iter().enumerate() {
        match message.key.as_deref() {
            None => groups.push(vec![index]),
            Some(key) => match by_key.get(key) {
                Some(&group) => groups[group].push(index),
                None => {
                    by_key.insert(key, groups.len());
                    groups.push(vec![index]);
                }
            },
        }
    }
    groups
}

/// Publishes a batch one message per `publish` call: keys concurrently (at most `max_in_flight`
/// at once), each key's messages one after the other. A failure stops its key (the later
/// messages are [`NotAttempted`]); an [`Unavailable`] error stops the batch (nothing more
/// starts; publishes in flight finish). The one-by-one fallback of the relay, and the way
/// pipelining adapters keep per-key order while many publishes are in flight.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use courier_core::{Message, batch::{by_key, BoxError, NotAttempted}};
///
/// let m = |key: &str, body: &'static str| Message::new("t", body).with_key(key);
/// let batch = vec![m("a", "fails"), m("a", "follower"), m("b", "other key")];
/// let outcomes = by_key(batch, 8, |message| async move {
///     if message.payload == "fails" { Err(BoxError::from("refused")) } else { Ok(()) }
/// })
/// .await;
/// assert!(outcomes[0].is_err());
/// assert!(NotAttempted::is_not_attempted(outcomes[1].as_ref().unwrap_err().as_ref()));
/// assert!(outcomes[2].is_ok());
/// # }
/// ```
pub async fn by_key<R, F, Fut>(
    messages: Vec<Message>,
    max_in_flight: usize,
    publish: F,
) -> Outcomes<R>
where
    F: Fn(Message) -> Fut,
    Fut: Future<Output = Result<R, BoxError>>,
{
    let groups = key_groups(&messages);
    let mut slots: Vec<Option<Message>> = messages.into_iter().map(Some).collect();
    let mut outcomes: Vec<Option<Result<R, BoxError>>> = slots.iter().map(|_| None).collect();
    let stopped = AtomicBool::new(false);
    let (stopped, publish) = (&stopped, &publish);
    let work: Vec<Vec<(usize, Message)>> = groups
        .into_iter()
        .map(|group| {
            group
                .into_iter()
                .map(|index| (index, slots[index].take().expect("each index once")))
                .collect()
        })
        .collect();
    let mut results = futures::stream::iter(work)
        .map(|group| async move {
            let mut done = Vec::with_capacity(group.len());
            let mut failed = false;
            for (index, message) in group {
                if failed {
                    done.push((
                        index,
                        Err(NotAttempted::after_failure(message.key.as_deref()).into()),
                    ));
                    continue;
                }
                if stopped.load(Ordering::SeqCst) {
                    done.push((index, Err(NotAttempted::broker_unavailable().into())));
                    failed = true;
                    continue;
                }
                let result = publish(message).await;
                if let Err(error) = &result {
                    failed = true;
                    if Unavailable::is_unavailable(error.as_ref()) {
                        stopped.store(true, Ordering::SeqCst);
                    }
                }
                done.push((index, result));
            }
            done
        })
        .buffer_unordered(max_in_flight.max(1));
    while let Some(group) = results.next().await {
        for (index, outcome) in group {
            outcomes[index] = Some(outcome);
        }
    }
    drop(results);
    outcomes
        .into_iter()
        .map(|outcome| outcome.expect("every message has an outcome"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn keyed(key: &str, body: &'static str) -> Message {
        Message::new("t", body).with_key(key)
    }

    #[tokio::test]
    async fn an_unavailable_broker_stops_every_key_and_a_failure_only_its_own() {
        let sent = Mutex::new(Vec::new());
        let batch = vec![
            keyed("a", "a1"),
            keyed("b", "down"),
            keyed("a", "a2"),
            keyed("c", "c1"),
        ];
        // One in flight: groups run in order a, b, c.
        let outcomes = by_key(batch, 1, |message| {
            sent.lock().unwrap().push(message.payload.clone());
            async move {
                if message.payload == "down" {
                    Err(BoxError::from(Unavailable::new("refused")))
                } else {
                    Ok(())
                }
            }
        })
        .await;
        assert_eq!(*sent.lock().unwrap(), ["a1", "a2", "down"]);
        assert!(outcomes[0].is_ok() && outcomes[2].is_ok());
        assert!(Unavailable::is_unavailable(
            outcomes[1].as_ref().unwrap_err().as_ref()
        ));
        let c = outcomes[3].as_ref().unwrap_err();
        assert!(NotAttempted::is_not_attempted(c.as_ref()), "{c}");
    }

    #[test]
    fn a_shared_failure_keeps_its_markers_for_each_message() {
        let outcomes = fail_all::<()>(Box::new(crate::Permanent::new("too large")), 2);
        for outcome in &outcomes {
            let error = outcome.as_ref().unwrap_err();
            assert!(crate::Permanent::is_permanent(error.as_ref()));
            assert!(error.to_string().contains("too large"));
        }
    }
}
