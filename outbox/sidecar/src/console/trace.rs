//! `/console/trace?q=<message id or key>`: one message's whole life on one timeline.
//!
//! Where each step comes from:
//! - enqueued, publish attempts, sent: the outbox row (`outbox.messages`: `created_at`, key,
//!   headers, `attempts`, `last_attempt_at` + `last_error`, `sent_at` when kept for retention);
//! - gave up: the failure record (`outbox.failures`);
//! - stored (queue, offset, store time, flush mode), each delivery attempt per group, acks,
//!   retries, dead letter, redrive: broker-lite's admin API (`lookup_by_id`, `trace`,
//!   `describe`), the same calls `broker-lite trace` makes;
//! - handled: the consumer's idempotency record, when its table `courier_inbox.processed`
//!   (`courier_inbox_processed` on MySQL; the `courier-middleware` idempotency layer's table,
//!   created by the same migrations) is in this database. It is found by key: the message id,
//!   or `h:<value>` for a header-keyed layer, one lookup per header value of the message. The
//!   durable inbox (`courier_inbox.messages`, `courier_inbox.dead_letters`) is read the same
//!   way, by message id.
//!
//! MySQL shows the same steps from its tables of the same names with the prefixes `outbox_` and
//! `courier_inbox_` (see `trace_records`); only the key partition is Postgres's alone.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Console;
use super::broker::flush_mode;
use super::form::Fields;
use super::html::{self, esc, millis, table};
use super::trace_records::{self as records, ConsumerRecords, FailureRecord, OutboxRecord};
use crate::database::Database;

/// One step of the timeline.
struct Step {
    at: Option<DateTime<Utc>>,
    source: &'static str,
    what: String,
    detail: String,
}

fn ms(at: u64) -> Option<DateTime<Utc>> {
    i64::try_from(at)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
}

pub(crate) async fn page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let who = console.auth.who(&headers);
    let fields = Fields::parse(query.as_deref().unwrap_or(""));
    let q = fields.get("q").unwrap_or("");
    let mut body = format!(
        "<form method=\"get\" action=\"/console/trace\"><input name=\"q\" size=\"44\" \
         placeholder=\"message id or key\" value=\"{}\"> <button type=\"submit\">Trace</button></form>",
        esc(q)
    );
    if q.is_empty() {
        return html::page("Message trace", who.as_deref(), &body).into_response();
    }
    match Uuid::parse_str(q) {
        Ok(id) => {
            let steps = timeline(&console, id).await;
            body.push_str(&render(id, &steps));
        }
        Err(_) => body.push_str(&by_key(&console, q).await),
    }
    html::page("Message trace", who.as_deref(), &body).into_response()
}

fn render(id: Uuid, steps: &[Step]) -> String {
    let mut out = format!("<h2>Timeline of {id}</h2><ol class=\"timeline\" id=\"timeline\">");
    for step in steps {
        let _ = write!(
            out,
            "<li data-source=\"{}\"><span class=\"t\">{}</span><b>{}</b> [{}] {}</li>",
            step.source,
            step.at.map_or("-".to_owned(), |at| at.to_rfc3339()),
            esc(&step.what),
            step.source,
            esc(&step.detail)
        );
    }
    if steps.is_empty() {
        out.push_str("<li>nothing found: not in the outbox, the failure table, the broker or the consumer's records</li>");
    }
    out.push_str("</ol>");
    out
}

/// Every step known for `id`, oldest first (steps without a time last).
async fn timeline(console: &Console, id: Uuid) -> Vec<Step> {
    let mut steps = Vec::new();
    // Header values of the message, for header-keyed idempotency records.
    let mut header_values = BTreeSet::new();
    let outbox = match &console.database {
        Database::Postgres(pool) => records::outbox_postgres(pool, id).await,
        Database::MySql(pool) => records::outbox_mysql(pool, id).await,
    };
    match outbox {
        Ok(found) => outbox_steps(found, &mut steps, &mut header_values),
        Err(e) => steps.push(error_step("outbox", &e.into())),
    }
    match console.admin().await {
        Ok(admin) => {
            let flush = admin
                .describe()
                .await
                .map(|d| flush_mode(&d.flush_mode))
                .unwrap_or_else(|e| format!("flush mode unknown: {e}"));
            match admin.lookup_by_id(id).await {
                Ok(Some(m)) => {
                    header_values.extend(m.properties.values().cloned());
                    steps.push(Step {
                        at: ms(m.stored_timestamp_ms),
                        source: "broker",
                        what: "stored".into(),
                        detail: format!(
                            "topic {} queue {} offset {}, born {}, {flush}",
                            m.topic,
                            m.queue_id,
                            m.queue_offset,
                            millis(m.born_timestamp_ms)
                        ),
                    });
                }
                Ok(None) => steps.push(Step {
                    at: None,
                    source: "broker",
                    what: "not stored (or past retention)".into(),
                    detail: String::new(),
                }),
                Err(e) => steps.push(error_step("broker", &e.into())),
            }
            match admin.trace(id).await {
                Ok(events) => steps.extend(events.into_iter().map(|e| Step {
                    at: ms(e.timestamp_ms),
                    source: "broker",
                    what: e.event,
                    detail: e.detail,
                })),
                Err(e) => steps.push(error_step("broker", &e.into())),
            }
        }
        Err(what) => steps.push(Step {
            at: None,
            source: "broker",
            what: "broker not consulted".into(),
            detail: what,
        }),
    }
    let keys = records::idempotency_keys(id, &header_values);
    let (consumer, tables) = match &console.database {
        Database::Postgres(pool) => (
            records::consumer_postgres(pool, id, &keys).await,
            "courier_inbox.processed",
        ),
        Database::MySql(pool) => (
            records::consumer_mysql(pool, id, &keys).await,
            "courier_inbox_processed",
        ),
    };
    match consumer {
        Ok(found) => consumer_steps(found, tables, &mut steps),
        Err(e) => steps.push(error_step("consumer", &e.into())),
    }
    order(&mut steps);
    steps
}

/// Oldest first, steps without a time last. The sources keep milliseconds (broker-lite) or
/// microseconds on different clocks, so a delivery can carry the same time as its "stored":
/// steps at the same time go in the order of a message's life.
fn order(steps: &mut [Step]) {
    steps.sort_by_key(|s| (s.at.is_none(), s.at, stage(s)));
}

/// Where a step comes in a message's life: enqueued, published, stored, delivered, handled,
/// settled, dead-lettered, redriven.
fn stage(step: &Step) -> u8 {
    let what = step.what.as_str();
    match step.source {
        _ if what == "enqueued" => 0,
        "outbox" if what.starts_with("publish attempt") => 1,
        "broker" if what == "stored" => 2,
        "outbox" | "failure" => 3,
        "broker" if matches!(what, "delivered" | "filtered") => 4,
        "consumer" if what.starts_with("stored in the inbox") => 5,
        "consumer" => 6,
        "broker" if matches!(what, "acked" | "nacked") => 7,
        "broker" if what == "dead-lettered" => 8,
        "broker" if what == "redriven" => 9,
        _ => 10,
    }
}

fn error_step(source: &'static str, error: &anyhow::Error) -> Step {
    Step {
        at: None,
        source,
        what: "could not be read".into(),
        detail: format!("{error:#}"),
    }
}

/// The steps of the outbox row and the failure record; the row's header values go to
/// `header_values`.
fn outbox_steps(
    (row, failure): (Option<OutboxRecord>, Option<FailureRecord>),
    steps: &mut Vec<Step>,
    header_values: &mut BTreeSet<String>,
) {
    if let Some(row) = row {
        header_values.extend(row.headers.values().cloned());
        let attempts = row.attempts;
        steps.push(Step {
            at: Some(row.created),
            source: "outbox",
            what: "enqueued".into(),
            detail: format!(
                "topic {}, key {}, partition {}, traceparent {}",
                row.topic,
                row.key.as_deref().unwrap_or("-"),
                row.partition.map_or("-".to_owned(), |p| p.to_string()),
                row.headers.get("traceparent").map_or("-", String::as_str)
            ),
        });
        if let (Some(error), Some(at)) = (row.last_error, row.last_attempt) {
            steps.push(Step {
                at: Some(at),
                source: "outbox",
                what: format!("publish attempt {attempts} failed"),
                // The outbox keeps only the last attempt's error; earlier ones are in the
                // relay's logs and its courier.publish spans.
                detail: format!(
                    "{error} (the last of {attempts} attempt(s); earlier errors are in the \
                     relay's logs)"
                ),
            });
        }
        match row.sent {
            Some(at) => steps.push(Step {
                at: Some(at),
                source: "outbox",
                what: "published".into(),
                detail: format!("after {attempts} attempt(s); row kept for the retention period"),
            }),
            None => steps.push(Step {
                at: Some(row.available),
                source: "outbox",
                what: "pending".into(),
                detail: format!("due at this time, {attempts} attempt(s) so far"),
            }),
        }
    }
    if let Some(failure) = failure {
        steps.push(Step {
            at: Some(failure.created),
            source: "failure",
            what: "enqueued".into(),
            detail: "(from the failure record)".into(),
        });
        steps.push(Step {
            at: Some(failure.failed),
            source: "failure",
            what: format!(
                "gave up after {} attempt(s): in the failure table",
                failure.attempts
            ),
            detail: failure.last_error,
        });
    }
}

/// The steps of the consumer's records (`None`: its tables are not in this database).
fn consumer_steps(records: Option<ConsumerRecords>, tables: &str, steps: &mut Vec<Step>) {
    let Some(records) = records else {
        steps.push(Step {
            at: None,
            source: "consumer",
            what: "no idempotency table in this database".into(),
            detail: format!("{tables} is not here: the consumer keeps its records elsewhere"),
        });
        return;
    };
    if records.processed.is_empty() {
        steps.push(Step {
            at: None,
            source: "consumer",
            what: "no idempotency record".into(),
            detail: "no consumer group has committed a handler for this message (yet)".into(),
        });
    }
    for (group, key, at) in records.processed {
        steps.push(Step {
            at: Some(at),
            source: "consumer",
            what: format!("handled by group {group}"),
            detail: format!("idempotency record {key} in {tables}"),
        });
    }
    for (group, received, attempts, done, error) in records.inbox {
        steps.push(Step {
            at: Some(received),
            source: "consumer",
            what: format!("stored in the inbox of group {group}"),
            detail: format!(
                "{attempts} attempt(s){}",
                error.map_or(String::new(), |e| format!(", last error: {e}"))
            ),
        });
        if let Some(at) = done {
            steps.push(Step {
                at: Some(at),
                source: "consumer",
                what: format!("inbox handler done (group {group})"),
                detail: String::new(),
            });
        }
    }
    for (group, at, error) in records.dead {
        steps.push(Step {
            at: Some(at),
            source: "consumer",
            what: format!("inbox dead letter (group {group})"),
            detail: error,
        });
    }
}

/// The messages with key `key`: from the outbox, the failure table and the broker.
async fn by_key(console: &Console, key: &str) -> String {
    // id -> (topic, where)
    let mut found: BTreeMap<Uuid, (String, BTreeSet<&'static str>)> = BTreeMap::new();
    let mut notes = String::new();
    let rows: anyhow::Result<Vec<(Uuid, String, &'static str)>> = match &console.database {
        Database::Postgres(pool) => sqlx::query_as::<_, (Uuid, String, bool)>(
            "SELECT id, topic, true FROM outbox.messages WHERE key = $1
             UNION ALL SELECT id, topic, false FROM outbox.failures WHERE key = $1 LIMIT 200",
        )
        .bind(key)
        .fetch_all(pool)
        .await
        .map(|rows| {
            rows.into_iter()
                .map(|(id, topic, outbox)| (id, topic, if outbox { "outbox" } else { "failure" }))
                .collect()
        })
        .map_err(Into::into),
        Database::MySql(pool) => sqlx::query_as::<_, (Uuid, String, bool)>(
            "SELECT id, CAST(topic AS CHAR), TRUE FROM outbox_messages WHERE `key` = ?
             UNION ALL SELECT id, CAST(topic AS CHAR), FALSE FROM outbox_failures WHERE `key` = ?
             LIMIT 200",
        )
        .bind(key)
        .bind(key)
        .fetch_all(pool)
        .await
        .map(|rows| {
            rows.into_iter()
                .map(|(id, topic, outbox)| (id, topic, if outbox { "outbox" } else { "failure" }))
                .collect()
        })
        .map_err(Into::into),
    };
    match rows {
        Ok(rows) => {
            for (id, topic, source) in rows {
                found
                    .entry(id)
                    .or_insert((topic, BTreeSet::new()))
                    .1
                    .insert(source);
            }
        }
        Err(e) => {
            let _ = write!(
                notes,
                "<p class=\"notice\">outbox: {}</p>",
                esc(&format!("{e:#}"))
            );
        }
    }
    if let Ok(admin) = console.admin().await {
        let topics: Vec<String> = match admin.topics().await {
            Ok(topics) => topics.into_iter().map(|t| t.name).collect(),
            Err(_) => found.values().map(|(t, _)| t.clone()).collect(),
        };
        for topic in topics {
            if let Ok(messages) = admin.lookup_by_key(&topic, key, 50).await {
                for m in messages {
                    found
                        .entry(m.message_id)
                        .or_insert((m.topic, BTreeSet::new()))
                        .1
                        .insert("broker");
                }
            }
        }
    }
    let rows: Vec<Vec<String>> = found
        .iter()
        .map(|(id, (topic, sources))| {
            vec![
                format!("<a href=\"/console/trace?q={id}\">{id}</a>"),
                esc(topic),
                esc(&sources.iter().copied().collect::<Vec<_>>().join(", ")),
            ]
        })
        .collect();
    format!(
        "{notes}<h2>Messages with key {}</h2>{}",
        esc(key),
        table(&["id", "topic", "found in"], &rows)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(at: Option<DateTime<Utc>>, source: &'static str, what: &str) -> Step {
        Step {
            at,
            source,
            what: what.into(),
            detail: String::new(),
        }
    }

    #[test]
    fn steps_of_the_same_millisecond_keep_the_order_of_a_message_life() {
        let t0 = DateTime::from_timestamp_millis(1_800_000_000_000);
        let t1 = DateTime::from_timestamp_millis(1_800_000_000_001);
        // As the sources are read: outbox, broker lookup, broker trace, consumer.
        let mut steps = vec![
            step(t0, "outbox", "published"),
            step(None, "consumer", "no idempotency record"),
            step(t1, "consumer", "handled by group billing"),
            step(t1, "broker", "acked"),
            step(t0, "broker", "stored"),
            step(t0, "outbox", "enqueued"),
            step(t1, "broker", "delivered"),
        ];
        order(&mut steps);
        let order: Vec<_> = steps
            .iter()
            .map(|s| format!("{} {}", s.source, s.what))
            .collect();
        assert_eq!(
            order,
            [
                "outbox enqueued",
                "broker stored",
                "outbox published",
                "broker delivered",
                "consumer handled by group billing",
                "broker acked",
                "consumer no idempotency record",
            ]
        );
    }
}
