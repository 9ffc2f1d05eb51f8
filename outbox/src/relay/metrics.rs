//! Metric names and recording, through the `metrics` facade.
//!
//! | name | kind | labels | meaning |
//! |---|---|---|---|
//! | `outbox_published_total` | counter | `topic` | messages the broker accepted |
//! | `outbox_failed_total` | counter | `topic` | messages moved to the failure table |
//! | `outbox_publish_attempts_total` | counter | `topic`, `outcome` | every publish attempt that counted (`published`, `retry`, `failed`) |
//! | `outbox_broker_unavailable_total` | counter | `topic` | publish calls that found the broker unavailable (no attempt counted) |
//! | `outbox_broker_circuit_open` | gauge | | 1 while the relay is paused because the broker is unavailable, else 0 |
//! | `outbox_publish_duration_seconds` | histogram | `topic` | time of one publish call |
//! | `outbox_backlog` | gauge | | pending messages, due or not |
//! | `outbox_oldest_due_age_seconds` | gauge | | how long the oldest due message has waited |

use std::time::Duration;

use super::{Backlog, Outcome};

pub(crate) fn record_attempt(topic: &str, outcome: &Outcome, took: Duration) {
    let label = match outcome {
        Outcome::Published => "published",
        Outcome::Retry { .. } => "retry",
        Outcome::Failed { .. } => "failed",
        Outcome::Held => return,
    };
    // One allocation shared by the three series (cloning a shared label is a reference count).
    let topic = metrics::SharedString::from_shared(std::sync::Arc::<str>::from(topic));
    metrics::counter!("outbox_publish_attempts_total", "topic" => topic.clone(), "outcome" => label)
        .increment(1);
    metrics::histogram!("outbox_publish_duration_seconds", "topic" => topic.clone())
        .record(took.as_secs_f64());
    match outcome {
        Outcome::Published => {
            metrics::counter!("outbox_published_total", "topic" => topic).increment(1);
        }
        Outcome::Failed { .. } => {
            metrics::counter!("outbox_failed_total", "topic" => topic).increment(1);
        }
        _ => {}
    }
}

pub(crate) fn record_backlog(backlog: Backlog) {
    metrics::gauge!("outbox_backlog").set(backlog.pending as f64);
    metrics::gauge!("outbox_oldest_due_age_seconds").set(backlog.oldest_due_age.as_secs_f64());
}

pub(crate) fn record_unavailable(topic: &str) {
    metrics::counter!("outbox_broker_unavailable_total", "topic" => topic.to_owned()).increment(1);
}

pub(crate) fn record_circuit(open: bool) {
    metrics::gauge!("outbox_broker_circuit_open").set(if open { 1.0 } else { 0.0 });
}
