//! Publishing one claimed batch: the publisher sends it (one by one per key, or as a batch),
//! then each row's outcome is read in key order.
//!
//! A publish that finds the broker [`Unavailable`] stops the batch: that row and every row not
//! yet attempted go back [`Held`](Outcome::Held), untouched, and the batch reports the error so
//! the relay opens its circuit (`circuit.rs`). Publishes already done keep their outcome. A row
//! after a failed row of its key is held too, even if a batch publisher sent it: it goes again
//! after the failed one, so no key's messages overtake each other.

use std::time::Duration;

use courier_core::batch::key_groups;
use tower::BoxError;

use super::metrics;
use super::{Claimed, Outcome};
use crate::publisher::{Marker, NotAttempted, PublishMode};
use crate::{Backoff, Message};

/// How the relay treats publish results.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PublishPolicy {
    pub(crate) timeout: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) max_in_flight: usize,
}

/// What publishing a batch came to.
#[derive(Debug)]
pub(crate) struct Published {
    /// One outcome per row, in the batch's order.
    pub(crate) outcomes: Vec<Outcome>,
    /// The first error that marked the broker [`Unavailable`], if any publish found it so.
    pub(crate) unavailable: Option<String>,
}

/// Publishes `batch` and returns one outcome per row, in the batch's order.
pub(crate) async fn publish_batch<P, M: PublishMode<P>>(
    mut publisher: P,
    batch: &[Claimed],
    policy: PublishPolicy,
) -> Published {
    // One span per row, opened before the publish: it continues the trace the row was enqueued
    // in, and the broker's message carries it as its parent.
    let spans: Vec<tracing::Span> = batch
        .iter()
        .map(|row| {
            let message = &row.message;
            let span = tracing::info_span!(
                "outbox.publish",
                message.id = %message.id,
                message.topic = %message.topic,
                message.key = message.key.as_deref(),
                attempt = message.attempts + 1,
            );
            courier_core::trace_context::adopt(&span, &message.headers);
            span
        })
        .collect();
    let messages: Vec<Message> = batch
        .iter()
        .zip(&spans)
        .map(|(row, span)| {
            let mut outgoing = row.message.clone();
            courier_core::trace_context::stamp(span, &mut outgoing.headers);
            outgoing
        })
        .collect();
    let groups = key_groups(&messages);
    let results = M::publish(
        &mut publisher,
        messages,
        policy.timeout,
        policy.max_in_flight,
    )
    .await;
    let mut results: Vec<Option<Result<Duration, BoxError>>> =
        results.into_iter().map(Some).collect();
    results.resize_with(batch.len(), || None);
    let mut outcomes: Vec<Outcome> = batch.iter().map(|_| Outcome::Held).collect();
    let mut unavailable: Option<String> = None;
    for group in groups {
        let mut held = false;
        for index in group {
            let result = results[index].take();
            if held {
                // The broker may have it already; it goes again after the failed row of its key.
                continue;
            }
            let message = &batch[index].message;
            let attempt = message.attempts + 1;
            let span = &spans[index];
            let outcome = match result {
                // A publisher that answered fewer outcomes than messages; `Batched` checks the count.
                None => Outcome::Held,
                Some(Err(error)) if NotAttempted::is_not_attempted(error.as_ref()) => Outcome::Held,
                Some(result) => {
                    let took = result.as_ref().ok().copied().unwrap_or_default();
                    match classify(result.map(drop), attempt, &policy) {
                        Verdict::Done(outcome) => {
                            span.in_scope(|| {
                                metrics::record_attempt(&message.topic, &outcome, took)
                            });
                            outcome
                        }
                        Verdict::Unavailable(error) => {
                            span.in_scope(|| {
                                tracing::warn!(%error, "broker unavailable; the message goes back untouched");
                                metrics::record_unavailable(&message.topic);
                            });
                            unavailable.get_or_insert(error);
                            Outcome::Held
                        }
                    }
                }
            };
            held = !matches!(outcome, Outcome::Published);
            outcomes[index] = outcome;
        }
    }
    Published {
        outcomes,
        unavailable,
    }
}

/// What one publish result means for its row.
#[derive(Debug)]
enum Verdict {
    /// The message's own outcome (the broker answered, or the failure is the message's).
    Done(Outcome),
    /// The broker could not be reached; the error, for the log.
    Unavailable(String),
}

fn classify(result: Result<(), BoxError>, attempt: u32, policy: &PublishPolicy) -> Verdict {
    let error = match result {
        Ok(()) => return Verdict::Done(Outcome::Published),
        Err(error) => error,
    };
    let text = error_chain(error.as_ref());
    Verdict::Done(match Marker::of(error.as_ref()) {
        Some(Marker::Unavailable) => return Verdict::Unavailable(text),
        Some(Marker::Permanent) => {
            tracing::error!(error = %text, "permanent publish failure; moving to the failure table");
            Outcome::Failed { error: text }
        }
        None => retry_or_fail(text, attempt, policy),
    })
}

fn retry_or_fail(text: String, attempt: u32, policy: &PublishPolicy) -> Outcome {
    if attempt >= policy.max_attempts {
        tracing::error!(error = %text, attempt, "publish failed on the last attempt; moving to the failure table");
        Outcome::Failed { error: text }
    } else {
        let delay = policy.backoff.delay(attempt);
        tracing::warn!(error = %text, attempt, retry_in = ?delay, "publish failed; will retry");
        Outcome::Retry { error: text, delay }
    }
}

/// "outer: inner: innermost", so the failure table keeps the root cause.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(source) = next {
        let part = source.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = source.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Batched, OneByOne, Permanent, Unavailable};
    use courier_core::batch::BatchFuture;
    use std::sync::Arc;

    fn row(seq: i64, key: Option<&str>) -> Claimed {
        let mut message = Message::new("t", "");
        message.key = key.map(str::to_owned);
        Claimed {
            seq,
            message,
            last_error: None,
            last_attempt_at: None,
        }
    }

    fn policy() -> PublishPolicy {
        PublishPolicy {
            timeout: Duration::from_secs(5),
            max_attempts: 3,
            backoff: Backoff::default(),
            max_in_flight: 4,
        }
    }

    /// A batch publisher that sends every message and answers what `answer` says for each.
    #[derive(Clone)]
    struct Scripted(Arc<Answer>);

    type Answer = dyn Fn(&Message) -> Result<(), BoxError> + Send + Sync;

    impl crate::PublishBatch for Scripted {
        type Response = ();
        fn publish_batch(&mut self, messages: Vec<Message>) -> BatchFuture<()> {
            let outcomes = messages.iter().map(|m| (self.0)(m)).collect();
            Box::pin(async move { outcomes })
        }
    }

    fn scripted(f: impl Fn(&Message) -> Result<(), BoxError> + Send + Sync + 'static) -> Scripted {
        Scripted(Arc::new(f))
    }

    fn keyed(seq: i64, key: &str, body: &'static str) -> Claimed {
        let mut row = row(seq, Some(key));
        row.message.payload = body.into();
        row
    }

    #[tokio::test]
    async fn each_message_of_a_batch_has_its_own_outcome() {
        let batch = [
            keyed(1, "a", "permanent"),
            keyed(2, "b", "ok"),
            keyed(3, "c", "flaky"),
            keyed(4, "d", "down"),
            keyed(5, "e", "skipped"),
        ];
        let publisher = scripted(|m| match m.payload.as_ref() {
            b"permanent" => Err(Permanent::new("too large").into()),
            b"flaky" => Err("flaky".into()),
            b"down" => Err(Unavailable::new("refused").into()),
            b"skipped" => Err(NotAttempted::broker_unavailable().into()),
            _ => Ok(()),
        });
        let published = publish_batch::<_, Batched>(publisher, &batch, policy()).await;
        let o = &published.outcomes;
        assert!(matches!(o[0], Outcome::Failed { .. }), "{o:?}");
        assert!(matches!(o[1], Outcome::Published), "{o:?}");
        assert!(matches!(o[2], Outcome::Retry { .. }), "{o:?}");
        assert!(matches!(o[3], Outcome::Held), "{o:?}");
        assert!(matches!(o[4], Outcome::Held), "{o:?}");
        assert!(published.unavailable.unwrap().contains("refused"));
    }

    #[tokio::test]
    async fn a_failed_head_holds_the_followers_a_batch_publisher_sent_anyway() {
        let batch = [
            keyed(1, "a", "fails"),
            keyed(2, "b", "ok"),
            keyed(3, "a", "ok"),
            keyed(4, "a", "ok"),
        ];
        let publisher = scripted(|m| match m.payload.as_ref() {
            b"fails" => Err("broker error".into()),
            _ => Ok(()),
        });
        let o = publish_batch::<_, Batched>(publisher, &batch, policy())
            .await
            .outcomes;
        assert!(matches!(o[0], Outcome::Retry { .. }), "{o:?}");
        assert!(matches!(o[1], Outcome::Published), "{o:?}");
        assert!(matches!(o[2], Outcome::Held), "{o:?}");
        assert!(matches!(o[3], Outcome::Held), "{o:?}");
    }

    #[tokio::test]
    async fn a_plain_service_publishes_one_by_one_and_stops_a_failed_key() {
        let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = sent.clone();
        let service = tower::service_fn(move |m: Message| {
            log.lock().unwrap().push(m.payload.clone());
            async move {
                if m.payload == "fails" {
                    Err::<(), BoxError>("broker error".into())
                } else {
                    Ok(())
                }
            }
        });
        let batch = [
            keyed(1, "a", "fails"),
            keyed(2, "b", "b1"),
            keyed(3, "a", "a2"),
        ];
        let o = publish_batch::<_, OneByOne>(service, &batch, policy())
            .await
            .outcomes;
        assert!(matches!(o[0], Outcome::Retry { .. }), "{o:?}");
        assert!(matches!(o[1], Outcome::Published), "{o:?}");
        assert!(matches!(o[2], Outcome::Held), "{o:?}");
        let mut sent = sent.lock().unwrap().clone();
        sent.sort();
        assert_eq!(
            sent,
            ["b1", "fails"],
            "a2 must not be sent after its key failed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_that_outlives_the_timeout_fails_every_message() {
        #[derive(Clone)]
        struct Stuck;
        impl crate::PublishBatch for Stuck {
            type Response = ();
            fn publish_batch(&mut self, _: Vec<Message>) -> BatchFuture<()> {
                Box::pin(std::future::pending())
            }
        }
        let batch = [keyed(1, "a", "x"), keyed(2, "b", "y")];
        let o = publish_batch::<_, Batched>(Stuck, &batch, policy())
            .await
            .outcomes;
        for outcome in &o {
            match outcome {
                Outcome::Retry { error, .. } => assert!(error.contains("timed out"), "{error}"),
                other => panic!("expected a retry, got {other:?}"),
            }
        }
    }

    #[test]
    fn classifies_permanent_unavailable_last_attempt_and_retry() {
        let policy = PublishPolicy {
            timeout: Duration::from_secs(1),
            max_attempts: 3,
            backoff: Backoff::default(),
            max_in_flight: 1,
        };
        let outcome = |result, attempt| match classify(result, attempt, &policy) {
            Verdict::Done(outcome) => Some(outcome),
            Verdict::Unavailable(_) => None,
        };
        let permanent: BoxError = Box::new(Permanent::new("no such topic"));
        assert!(matches!(
            outcome(Err(permanent), 1),
            Some(Outcome::Failed { .. })
        ));
        // Even on what would be the last attempt: the broker's outage is not the message's.
        let unavailable: BoxError = Box::new(Unavailable::new("connection refused"));
        assert!(outcome(Err(unavailable), 3).is_none());
        assert!(matches!(
            outcome(Err("down".into()), 3),
            Some(Outcome::Failed { .. })
        ));
        assert!(matches!(
            outcome(Err("down".into()), 2),
            Some(Outcome::Retry { .. })
        ));
        assert!(matches!(outcome(Ok(()), 3), Some(Outcome::Published)));
    }

    #[test]
    fn error_chain_keeps_the_root_cause() {
        let error = Permanent::new("topic missing");
        assert_eq!(error_chain(&error), "permanent failure: topic missing");
    }
}
