//! `/console`: the outbox at a glance.

use std::fmt::Write;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use courier_outbox::CircuitState;

use super::Console;
use super::html::{self, esc, table};
use crate::database::Database;

/// The published counter at one moment.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RateSample {
    at: Option<Instant>,
    published: f64,
    /// Messages per second between the two latest samples.
    rate: Option<f64>,
}

impl RateSample {
    /// The sample at start: nothing published yet, so the first look shows the rate since start.
    pub(crate) fn at_start() -> Self {
        Self {
            at: Some(Instant::now()),
            published: 0.0,
            rate: None,
        }
    }
}

/// The sum of a Prometheus counter over its labels, from the text exposition.
fn counter_total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        // Not `sum()`: an empty f64 sum is -0.0, shown as "-0".
        .fold(0.0, |total, value| total + value)
}

impl Console {
    /// Publishes per second since the previous look (at least a second apart).
    fn publish_rate(&self, published: f64) -> Option<f64> {
        let mut sample = self.rate.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match sample.at {
            Some(at) if now.duration_since(at).as_secs_f64() >= 1.0 => {
                let seconds = now.duration_since(at).as_secs_f64();
                sample.rate = Some(((published - sample.published) / seconds).max(0.0));
                sample.at = Some(now);
                sample.published = published;
            }
            Some(_) => {}
            None => {
                sample.at = Some(now);
                sample.published = published;
            }
        }
        sample.rate
    }
}

pub(crate) async fn page(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let who = console.auth.who(&headers);
    let metrics = console.metrics.render();
    let published = counter_total(&metrics, "outbox_published_total");
    let failed = counter_total(&metrics, "outbox_failed_total");
    let rate = console.publish_rate(published);
    let mut body = String::new();
    let db = match &console.database {
        Database::Postgres(pool) => postgres(pool).await,
        Database::MySql(pool) => mysql(pool).await,
    };
    let stats = match db {
        Ok(stats) => stats,
        Err(error) => {
            let _ = write!(
                body,
                "<p class=\"notice\">Cannot read the outbox: {}</p>",
                esc(&format!("{error:#}"))
            );
            Stats::default()
        }
    };
    let card = |label: &str, value: String, id: &str| {
        format!(
            "<div class=\"card\" id=\"{id}\">{}<b>{}</b></div>",
            esc(label),
            esc(&value)
        )
    };
    body.push_str(&card("Backlog", stats.backlog.to_string(), "backlog"));
    body.push_str(&card(
        "Oldest due age",
        format!("{:.1} s", stats.oldest_due_age_seconds),
        "oldest-due",
    ));
    body.push_str(&card(
        "Publish rate (since the last look)",
        rate.map_or("measuring… (reload)".to_owned(), |r| format!("{r:.1} /s")),
        "rate",
    ));
    body.push_str(&card(
        "Published / failed since start",
        format!("{published} / {failed}"),
        "published",
    ));
    body.push_str(&card(
        "Failure table",
        stats.failures.to_string(),
        "failures",
    ));
    match &console.relay {
        Some((state, circuit)) => {
            let state = *state.borrow();
            let (class, circuit_text) = match *circuit.borrow() {
                CircuitState::Closed => ("ok", "closed: publishing"),
                CircuitState::Open => ("bad", "open: broker unavailable, relay paused"),
                _ => ("bad", "half-open: probing the broker"),
            };
            let _ = write!(
                body,
                "<div class=\"card\" id=\"circuit\">Broker circuit<b class=\"{class}\">{}</b></div>\
                 <div class=\"card\">Relay <i>{}</i><b>{}</b></div>",
                esc(circuit_text),
                esc(&console.relay_name),
                esc(&format!("{state:?}"))
            );
        }
        None => body.push_str(
            "<div class=\"card\" id=\"circuit\">Relay and broker circuit<b>in another process</b>\
             console-only mode: see the relay's own /readyz and metrics</div>",
        ),
    }
    body.push_str("<h2>Per topic</h2>");
    let rows: Vec<Vec<String>> = stats
        .topics
        .iter()
        .map(|(topic, pending, failures)| {
            vec![
                format!(
                    "<a href=\"/console/failures?topic={}\">{}</a>",
                    html::url(topic),
                    esc(topic)
                ),
                format!("<span class=\"num\">{pending}</span>"),
                format!("<span class=\"num\">{failures}</span>"),
            ]
        })
        .collect();
    body.push_str(&table(&["topic", "pending", "failed"], &rows));
    body.push_str("<h2>Relay instances</h2>");
    let rows: Vec<Vec<String>> = stats
        .relays
        .iter()
        .map(|(name, what, partitions)| vec![esc(name), esc(what), esc(partitions)])
        .collect();
    let headers = match console.database {
        Database::Postgres(_) => [
            "relay (application_name)",
            "backend pid",
            "key partitions owned",
        ],
        Database::MySql(_) => ["relay (lease owner)", "rows leased now", "leased until"],
    };
    body.push_str(&table(&headers, &rows));
    if matches!(console.database, Database::MySql(_)) {
        body.push_str(
            "<p>On MySQL relays lease the rows they claim rather than own key partitions: a \
             relay is listed while it holds a lease (between its claim and the outcome of its \
             batch).</p>",
        );
    }
    body.push_str("<h2>Recent console actions</h2><ul>");
    for line in console.recent.lines() {
        let _ = write!(body, "<li>{}</li>", esc(&line));
    }
    body.push_str("</ul>");
    if console.auth.open_writes() {
        body.push_str(
            "<p class=\"notice\">No console token is configured: write actions are open to \
             local processes (loopback only).</p>",
        );
    }
    html::page("Outbox", who.as_deref(), &body).into_response()
}

/// What the overview reads from the database.
#[derive(Debug, Default)]
struct Stats {
    backlog: i64,
    oldest_due_age_seconds: f64,
    failures: i64,
    /// (topic, pending, failed)
    topics: Vec<(String, i64, i64)>,
    /// Postgres: (application_name, backend pid, partitions owned); MySQL: (lease owner, rows
    /// leased, until when).
    relays: Vec<(String, String, String)>,
}

async fn postgres(pool: &sqlx::PgPool) -> anyhow::Result<Stats> {
    let (backlog, oldest): (i64, f64) = sqlx::query_as(
        "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(available_at)
                    FILTER (WHERE available_at <= now())), 0)::float8
         FROM outbox.messages WHERE sent_at IS NULL",
    )
    .fetch_one(pool)
    .await?;
    let failures: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.failures")
        .fetch_one(pool)
        .await?;
    let topics = sqlx::query_as(
        "SELECT topic, sum(pending)::int8, sum(failed)::int8 FROM (
             SELECT topic, count(*) AS pending, 0 AS failed FROM outbox.messages
              WHERE sent_at IS NULL GROUP BY topic
             UNION ALL
             SELECT topic, 0, count(*) FROM outbox.failures GROUP BY topic) t
         GROUP BY topic ORDER BY topic",
    )
    .fetch_all(pool)
    .await?;
    // Relays hold a shared membership lock and one exclusive advisory lock per owned key
    // partition, in the lock space courier's Postgres store uses (see
    // `courier_outbox` store/postgres/partitions.rs: space 0x0c0a7001, membership 1 << 20).
    let relays = sqlx::query_as(
        "SELECT COALESCE(a.application_name, ''), l.pid::text,
                COALESCE(string_agg(l.objid::text, ', ' ORDER BY l.objid)
                         FILTER (WHERE l.objid < 64), '-')
         FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'advisory' AND l.classid = 202010625
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND l.objsubid = 2 AND l.granted
         GROUP BY a.application_name, l.pid ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await?;
    Ok(Stats {
        backlog,
        oldest_due_age_seconds: oldest,
        failures,
        topics,
        relays,
    })
}

async fn mysql(pool: &sqlx::MySqlPool) -> anyhow::Result<Stats> {
    let (backlog, oldest): (i64, f64) = sqlx::query_as(
        "SELECT COUNT(*), CAST(COALESCE(TIMESTAMPDIFF(MICROSECOND,
                    MIN(CASE WHEN available_at <= NOW(6) THEN available_at END), NOW(6)), 0) / 1e6 AS DOUBLE)
         FROM outbox_messages WHERE sent_at IS NULL",
    )
    .fetch_one(pool)
    .await?;
    let failures: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox_failures")
        .fetch_one(pool)
        .await?;
    // A lease owner is `<relay name>/<instance id>/<claim number>`: one line per instance.
    let relays: Vec<(String, i64, DateTime<Utc>)> = sqlx::query_as(
        "SELECT SUBSTRING_INDEX(lease_owner, '/', 2), COUNT(*), MAX(leased_until)
         FROM outbox_messages WHERE leased_until > UTC_TIMESTAMP(6)
         GROUP BY SUBSTRING_INDEX(lease_owner, '/', 2) ORDER BY 1",
    )
    .fetch_all(pool)
    .await?;
    let relays = relays
        .into_iter()
        .map(|(owner, rows, until)| (owner, rows.to_string(), until.to_rfc3339()))
        .collect();
    let topics = sqlx::query_as(
        // Topics are `ascii_bin`, which a UNION hands back as binary: cast to text.
        "SELECT CAST(topic AS CHAR), CAST(SUM(pending) AS SIGNED), CAST(SUM(failed) AS SIGNED) FROM (
             SELECT topic, COUNT(*) AS pending, 0 AS failed FROM outbox_messages
              WHERE sent_at IS NULL GROUP BY topic
             UNION ALL
             SELECT topic, 0, COUNT(*) FROM outbox_failures GROUP BY topic) t
         GROUP BY topic ORDER BY topic",
    )
    .fetch_all(pool)
    .await?;
    Ok(Stats {
        backlog,
        oldest_due_age_seconds: oldest,
        failures,
        topics,
        relays,
    })
}

#[cfg(test)]
mod tests {
    use super::counter_total;

    #[test]
    fn a_counter_is_summed_over_its_labels() {
        let text = "# TYPE outbox_published_total counter\n\
                    outbox_published_total{topic=\"a\"} 3\n\
                    outbox_published_total{topic=\"b\"} 4\n\
                    outbox_published_total_other 9\n";
        assert_eq!(counter_total(text, "outbox_published_total"), 7.0);
    }
}
