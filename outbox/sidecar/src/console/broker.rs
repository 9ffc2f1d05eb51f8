//! `/console/broker`: broker-lite's topics, consumer groups, lag per queue, and dead letters with
//! redrive, through its admin client.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use broker_lite_client::protocol::FlushMode;

use super::Console;
use super::html::{self, esc, millis, table};

/// Dead letters listed per group.
const DEAD_LETTERS_SHOWN: u32 = 50;

/// broker-lite's flush mode in words.
pub(crate) fn flush_mode(mode: &FlushMode) -> String {
    match mode {
        FlushMode::Sync => "SYNC_FLUSH (fsync before the ack)".to_owned(),
        FlushMode::Async { interval } => {
            format!("ASYNC_FLUSH every {interval:?} (acked messages can be lost in a crash)")
        }
    }
}

pub(crate) async fn page(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let who = console.auth.who(&headers);
    let admin = match console.admin().await {
        Ok(admin) => admin,
        Err(what) => {
            return html::page(
                "Broker",
                who.as_deref(),
                &format!("<p class=\"notice\">{}</p>", esc(&what)),
            )
            .into_response();
        }
    };
    let mut body = String::new();
    match admin.describe().await {
        Ok(d) => {
            let _ = write!(
                body,
                "<p>broker-lite {} · {} · retention {} h · authentication {}</p>",
                esc(&d.version),
                esc(&flush_mode(&d.flush_mode)),
                d.retention_ms / 3_600_000,
                if d.authentication { "on" } else { "off" }
            );
        }
        Err(e) => {
            let _ = write!(
                body,
                "<p class=\"notice\">describe: {}</p>",
                esc(&e.to_string())
            );
        }
    }
    body.push_str("<h2>Topics</h2>");
    match admin.topics().await {
        Ok(topics) => {
            let rows: Vec<Vec<String>> = topics
                .iter()
                .map(|t| vec![esc(&t.name), t.queues.to_string()])
                .collect();
            body.push_str(&table(&["topic", "queues"], &rows));
        }
        Err(e) => {
            let _ = write!(body, "<p class=\"notice\">{}</p>", esc(&e.to_string()));
        }
    }
    let groups = match admin.groups().await {
        Ok(groups) => groups,
        Err(e) => {
            let _ = write!(body, "<p class=\"notice\">{}</p>", esc(&e.to_string()));
            Vec::new()
        }
    };
    body.push_str("<h2>Consumer groups</h2>");
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| {
            vec![
                esc(&g.name),
                esc(&format!("{:?}", g.model)),
                esc(&g.topics.join(", ")),
                esc(&g.members.join(", ")),
            ]
        })
        .collect();
    body.push_str(&table(&["group", "model", "topics", "members"], &rows));
    for group in &groups {
        let _ = write!(body, "<h3>Group {}: lag per queue</h3>", esc(&group.name));
        match admin.lag(&group.name).await {
            Ok(lags) => {
                let rows: Vec<Vec<String>> = lags
                    .iter()
                    .map(|l| {
                        vec![
                            esc(&l.topic),
                            l.queue_id.to_string(),
                            esc(l.consumer_id.as_deref().unwrap_or("-")),
                            l.committed.to_string(),
                            l.max.to_string(),
                            l.lag.to_string(),
                            l.unsettled.to_string(),
                        ]
                    })
                    .collect();
                body.push_str(&table(
                    &[
                        "topic",
                        "queue",
                        "consumer",
                        "committed",
                        "max offset",
                        "lag",
                        "unsettled",
                    ],
                    &rows,
                ));
            }
            Err(e) => {
                let _ = write!(body, "<p class=\"notice\">{}</p>", esc(&e.to_string()));
            }
        }
        match admin.dead_letters(&group.name, DEAD_LETTERS_SHOWN).await {
            Ok(letters) => {
                let _ = write!(
                    body,
                    "<h3>Group {}: dead letters ({}{})</h3>",
                    esc(&group.name),
                    letters.len(),
                    if letters.len() == DEAD_LETTERS_SHOWN as usize {
                        " shown"
                    } else {
                        ""
                    }
                );
                if letters.is_empty() {
                    continue;
                }
                let form = format!("redrive-{}", esc(&group.name));
                let rows: Vec<Vec<String>> = letters
                    .iter()
                    .map(|m| {
                        vec![
                            format!(
                                "<input type=\"checkbox\" name=\"id\" value=\"{}\" form=\"{form}\">",
                                m.message_id
                            ),
                            format!(
                                "<a href=\"/console/trace?q={}\">{}</a>",
                                m.message_id, m.message_id
                            ),
                            esc(&m.topic),
                            esc(m.key.as_deref().unwrap_or("-")),
                            esc(&millis(m.stored_timestamp_ms)),
                        ]
                    })
                    .collect();
                body.push_str(&table(&["", "id", "topic", "key", "stored"], &rows));
                let _ = write!(
                    body,
                    "<form method=\"post\" action=\"/console/broker/redrive\" id=\"{form}\">\
                     <input type=\"hidden\" name=\"group\" value=\"{}\">\
                     <button class=\"primary\" name=\"scope\" value=\"selected\">Redrive selected</button>\
                     <button class=\"primary\" name=\"scope\" value=\"all\" \
                     onclick=\"return confirm('Redrive every dead letter of this group?')\">Redrive all</button></form>",
                    esc(&group.name)
                );
            }
            Err(e) => {
                let _ = write!(body, "<p class=\"notice\">{}</p>", esc(&e.to_string()));
            }
        }
    }
    html::page("Broker", who.as_deref(), &body).into_response()
}
