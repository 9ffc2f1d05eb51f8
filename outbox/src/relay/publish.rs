//! Publishing one claimed batch: keys in parallel, each key's messages in order.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tower::{BoxError, ServiceExt};
use tracing::Instrument;

use super::metrics;
use super::{Claimed, Outcome};
use crate::{Backoff, Permanent, Publisher};

/// How the relay treats publish results.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PublishPolicy {
    pub(crate) timeout: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) max_in_flight: usize,
}

/// Publishes `batch` and returns one outcome per row, in the batch's order.
///
/// Rows are grouped by key in sequence order; groups run concurrently, and inside a group a failure
/// holds every later row of that key so none overtakes it. Unkeyed rows are groups of one.
pub(crate) async fn publish_batch<P: Publisher>(
    publisher: P,
    batch: &[Claimed],
    policy: PublishPolicy,
) -> Vec<Outcome> {
    let mut outcomes: Vec<Option<Outcome>> = batch.iter().map(|_| None).collect();
    let mut results = futures::stream::iter(group_by_key(batch))
        .map(move |group| publish_group(publisher.clone(), batch, group, policy))
        .buffer_unordered(policy.max_in_flight);
    while let Some(group) = results.next().await {
        for (index, outcome) in group {
            outcomes[index] = Some(outcome);
        }
    }
    outcomes
        .into_iter()
        .map(|outcome| outcome.unwrap_or(Outcome::Held))
        .collect()
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
) -> Vec<(usize, Outcome)> {
    let mut outcomes = Vec::with_capacity(group.len());
    let mut held = false;
    for index in group {
        if held {
            outcomes.push((index, Outcome::Held));
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
        let started = Instant::now();
        let result = async {
            let ready = publisher.ready().await.map_err(Into::into)?;
            match tokio::time::timeout(policy.timeout, ready.call(message.clone())).await {
                Ok(result) => result.map(drop).map_err(Into::into),
                Err(_) => Err(BoxError::from(format!(
                    "publish timed out after {:?}",
                    policy.timeout
                ))),
            }
        }
        .instrument(span.clone())
        .await;
        let outcome = classify(result, attempt, &policy);
        span.in_scope(|| metrics::record_attempt(&message.topic, &outcome, started.elapsed()));
        held = !matches!(outcome, Outcome::Published);
        outcomes.push((index, outcome));
    }
    outcomes
}

fn classify(result: Result<(), BoxError>, attempt: u32, policy: &PublishPolicy) -> Outcome {
    let error = match result {
        Ok(()) => return Outcome::Published,
        Err(error) => error,
    };
    let text = error_chain(error.as_ref());
    if Permanent::is_permanent(error.as_ref()) {
        tracing::error!(error = %text, "permanent publish failure; moving to the failure table");
        Outcome::Failed { error: text }
    } else if attempt >= policy.max_attempts {
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
    use crate::Message;

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
    fn classifies_permanent_last_attempt_and_retry() {
        let policy = PublishPolicy {
            timeout: Duration::from_secs(1),
            max_attempts: 3,
            backoff: Backoff::default(),
            max_in_flight: 1,
        };
        let permanent: BoxError = Box::new(Permanent::new("no such topic"));
        assert!(matches!(
            classify(Err(permanent), 1, &policy),
            Outcome::Failed { .. }
        ));
        assert!(matches!(
            classify(Err("down".into()), 3, &policy),
            Outcome::Failed { .. }
        ));
        assert!(matches!(
            classify(Err("down".into()), 2, &policy),
            Outcome::Retry { .. }
        ));
        assert!(matches!(classify(Ok(()), 3, &policy), Outcome::Published));
    }

    #[test]
    fn error_chain_keeps_the_root_cause() {
        let error = Permanent::new("topic missing");
        assert_eq!(error_chain(&error), "permanent failure: topic missing");
    }
}
