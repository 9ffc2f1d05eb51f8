//! Publishing one claimed batch: keys in parallel, each key's messages in order.
//!
//! A publish that finds the broker [`Unavailable`] stops the batch: that row and every row not
//! yet attempted go back [`Held`](Outcome::Held), untouched, and the batch reports the error so
//! the relay opens its circuit (`circuit.rs`). Publishes already in flight finish and keep their
//! outcome.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tower::{BoxError, ServiceExt};
use tracing::Instrument;

use super::metrics;
use super::{Claimed, Outcome};
use crate::publisher::Marker;
use crate::{Backoff, Publisher};

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
///
/// Rows are grouped by key in sequence order; groups run concurrently, and inside a group a failure
/// holds every later row of that key so none overtakes it. Unkeyed rows are groups of one.
pub(crate) async fn publish_batch<P: Publisher>(
    publisher: P,
    batch: &[Claimed],
    policy: PublishPolicy,
) -> Published {
    let mut outcomes: Vec<Option<Outcome>> = batch.iter().map(|_| None).collect();
    // Shared by the groups: once set, none of them starts another publish.
    let unavailable = Mutex::new(None);
    let shared = &unavailable;
    // `move`: the stream owns the publisher (a reference would need it to be `Sync`).
    let mut results = futures::stream::iter(group_by_key(batch))
        .map(move |group| publish_group(publisher.clone(), batch, group, policy, shared))
        .buffer_unordered(policy.max_in_flight);
    while let Some(group) = results.next().await {
        for (index, outcome) in group {
            outcomes[index] = Some(outcome);
        }
    }
    drop(results);
    Published {
        outcomes: outcomes
            .into_iter()
            .map(|outcome| outcome.unwrap_or(Outcome::Held))
            .collect(),
        unavailable: unavailable.into_inner().unwrap_or_else(|e| e.into_inner()),
    }
}

/// Indices of `batch`, grouped by key, each group in batch (sequence) order.
fn group_by_key(batch: &[Claimed]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut by_key: HashMap<&str, usize> = HashMap::new();
    for (index, row) in batch.iter().enumerate() {
        match row.message.key.as_deref() {
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

async fn publish_group<P: Publisher>(
    mut publisher: P,
    batch: &[Claimed],
    group: Vec<usize>,
    policy: PublishPolicy,
    unavailable: &Mutex<Option<String>>,
) -> Vec<(usize, Outcome)> {
    let mut outcomes = Vec::with_capacity(group.len());
    let mut held = false;
    for index in group {
        if held || broker_down(unavailable) {
            outcomes.push((index, Outcome::Held));
            held = true;
            continue;
        }
        let message = &batch[index].message;
        let attempt = message.attempts + 1;
        let span = tracing::info_span!(
            "outbox.publish",
            message.id = %message.id,
            message.topic = %message.topic,
            message.key = message.key.as_deref(),
            attempt,
        );
        // Continues the trace the row was enqueued in; the broker's message is this span's child.
        let mut outgoing = message.clone();
        courier_core::trace_context::adopt(&span, &message.headers);
        courier_core::trace_context::stamp(&span, &mut outgoing.headers);
        let started = Instant::now();
        let result = async {
            let ready = publisher.ready().await.map_err(Into::into)?;
            match tokio::time::timeout(policy.timeout, ready.call(outgoing)).await {
                Ok(result) => result.map(drop).map_err(Into::into),
                Err(_) => Err(BoxError::from(format!(
                    "publish timed out after {:?}",
                    policy.timeout
                ))),
            }
        }
        .instrument(span.clone())
        .await;
        let outcome = match classify(result, attempt, &policy) {
            Verdict::Done(outcome) => {
                span.in_scope(|| {
                    metrics::record_attempt(&message.topic, &outcome, started.elapsed())
                });
                outcome
            }
            Verdict::Unavailable(error) => {
                span.in_scope(|| {
                    tracing::warn!(%error, "broker unavailable; the message goes back untouched");
                    metrics::record_unavailable(&message.topic);
                });
                let mut first = unavailable.lock().unwrap_or_else(|e| e.into_inner());
                first.get_or_insert(error);
                Outcome::Held
            }
        };
        held = !matches!(outcome, Outcome::Published);
        outcomes.push((index, outcome));
    }
    outcomes
}

/// Whether a publish of this batch already found the broker unavailable.
fn broker_down(unavailable: &Mutex<Option<String>>) -> bool {
    unavailable
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_some()
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
    use crate::{Message, Permanent, Unavailable};

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

    #[test]
    fn groups_keep_sequence_order_per_key() {
        let batch = [
            row(1, Some("a")),
            row(2, None),
            row(3, Some("b")),
            row(4, Some("a")),
            row(5, None),
        ];
        let seqs: Vec<Vec<i64>> = group_by_key(&batch)
            .iter()
            .map(|g| g.iter().map(|&i| batch[i].seq).collect())
            .collect();
        assert_eq!(seqs, vec![vec![1, 4], vec![2], vec![3], vec![5]]);
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
