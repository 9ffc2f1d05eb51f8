//! `/console/failures`: the failure table. Filter it, look at one message (headers, payload as
//! text, JSON or hex), and replay or purge one, a selection or everything matching the filter,
//! always through a confirmation page that shows how many messages the action touches.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use courier_outbox::{FailedMessage, FailureFilter, Failures};
use uuid::Uuid;

use super::Console;
use super::form::Fields;
use super::html::{self, esc, table};
use crate::database::with_pool;

/// Rows shown on the list page.
const PAGE_ROWS: u32 = 200;
use super::actions::CHUNK;
/// The filter fields, carried from the list to the confirmation and the action.
const FILTER_FIELDS: [&str; 5] = ["topic", "key", "error", "since", "until"];

/// An RFC 3339 time or a date (midnight UTC), or a browser's `datetime-local` value (UTC).
fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(at) = chrono::NaiveDateTime::parse_from_str(text, format) {
            return Ok(at.and_utc());
        }
    }
    if let Ok(day) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(day.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    Err(format!(
        "{text:?} is not a time: write it like 2026-11-30T08:00:00Z (RFC 3339) or 2026-11-30"
    ))
}

/// The filter the fields describe; ids only when `with_ids`.
fn filter(fields: &Fields, with_ids: bool) -> Result<FailureFilter, String> {
    let mut filter = FailureFilter::all();
    if with_ids {
        let ids = fields
            .all("id")
            .map(|id| Uuid::parse_str(id).map_err(|_| format!("{id:?} is not a message id")))
            .collect::<Result<Vec<_>, _>>()?;
        if ids.is_empty() {
            return Err("no message selected: tick at least one row".to_owned());
        }
        filter = filter.ids(ids);
    }
    if let Some(topic) = fields.get("topic") {
        filter = filter.topic(topic);
    }
    if let Some(key) = fields.get("key") {
        filter = filter.key(key);
    }
    if let Some(text) = fields.get("error") {
        filter = filter.error_contains(text);
    }
    if let Some(at) = fields.get("since") {
        filter = filter.failed_after(parse_time(at)?);
    }
    if let Some(at) = fields.get("until") {
        filter = filter.failed_before(parse_time(at)?);
    }
    Ok(filter)
}

/// The selection in words, for the audit log: the filter fields set (`topic=payments
/// error=timed out`), and how many ids were ticked; "everything" when nothing narrows it.
fn describe(fields: &Fields, with_ids: bool) -> String {
    let mut parts: Vec<String> = FILTER_FIELDS
        .iter()
        .filter_map(|name| fields.get(name).map(|value| format!("{name}={value}")))
        .collect();
    if with_ids {
        parts.insert(0, format!("{} id(s)", fields.all("id").count()));
    }
    if parts.is_empty() {
        "everything".to_owned()
    } else {
        parts.join(" ")
    }
}

/// Hidden inputs that carry the filter fields.
fn hidden_filter(fields: &Fields) -> String {
    let mut out = String::new();
    for name in FILTER_FIELDS {
        if let Some(value) = fields.get(name) {
            let _ = write!(
                out,
                "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
                esc(value)
            );
        }
    }
    out
}

async fn list_failures(
    console: &Console,
    filter: &FailureFilter,
) -> anyhow::Result<Vec<FailedMessage>> {
    let failures = Failures::new();
    Ok(with_pool!(&console.database, |pool| failures
        .list(pool, filter)
        .await)?)
}

fn bad_request(what: &str) -> Response {
    html::error(StatusCode::BAD_REQUEST, "Invalid request", what)
}

fn database_error(error: &anyhow::Error) -> Response {
    html::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "Database unavailable",
        &format!("{error:#}: check the database and reload"),
    )
}

/// `GET /console/failures?topic=&key=&error=&since=&until=`
pub(crate) async fn list(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let fields = Fields::parse(query.as_deref().unwrap_or(""));
    let selection = match filter(&fields, false) {
        Ok(filter) => filter,
        Err(what) => return bad_request(&what),
    };
    let shown = match list_failures(&console, &selection.clone().limit(PAGE_ROWS)).await {
        Ok(shown) => shown,
        Err(error) => return database_error(&error),
    };
    let value = |name: &str| esc(fields.get(name).unwrap_or(""));
    let mut body = format!(
        "<form method=\"get\" action=\"/console/failures\" id=\"filter\">\
         <input name=\"topic\" placeholder=\"topic\" value=\"{}\">\
         <input name=\"key\" placeholder=\"key\" value=\"{}\">\
         <input name=\"error\" placeholder=\"error contains\" value=\"{}\">\
         <input name=\"since\" placeholder=\"failed since (RFC 3339)\" value=\"{}\">\
         <input name=\"until\" placeholder=\"failed before\" value=\"{}\">\
         <button type=\"submit\">Filter</button> <a href=\"/console/failures\">clear</a></form>",
        value("topic"),
        value("key"),
        value("error"),
        value("since"),
        value("until"),
    );
    let rows: Vec<Vec<String>> = shown
        .iter()
        .map(|failed| {
            let m = &failed.message;
            vec![
                format!(
                    "<input type=\"checkbox\" name=\"id\" value=\"{}\" form=\"selected\">",
                    m.id
                ),
                format!(
                    "<a href=\"/console/failures/message?id={}\">{}</a>",
                    m.id, m.id
                ),
                esc(&m.topic),
                esc(m.key.as_deref().unwrap_or("-")),
                m.attempts.to_string(),
                esc(&failed.failed_at.to_rfc3339()),
                esc(&failed.last_error),
                format!("<a href=\"/console/trace?q={}\">trace</a>", m.id),
            ]
        })
        .collect();
    let _ = write!(
        body,
        "<p id=\"shown\">{} failed message(s) shown{}</p>",
        shown.len(),
        if shown.len() == PAGE_ROWS as usize {
            " (the first 200: narrow the filter)"
        } else {
            ""
        }
    );
    body.push_str(&table(
        &[
            "",
            "id",
            "topic",
            "key",
            "attempts",
            "failed at",
            "last error",
            "",
        ],
        &rows,
    ));
    let hidden = hidden_filter(&fields);
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/console/failures/confirm\" id=\"selected\" class=\"inline\">\
         <input type=\"hidden\" name=\"scope\" value=\"selected\">\
         <button class=\"primary\" name=\"action\" value=\"replay\">Replay selected…</button>\
         <button class=\"danger\" name=\"action\" value=\"purge\">Purge selected…</button></form> \
         <form method=\"post\" action=\"/console/failures/confirm\" class=\"inline\">{hidden}\
         <input type=\"hidden\" name=\"scope\" value=\"matching\">\
         <button class=\"primary\" name=\"action\" value=\"replay\" id=\"replay-matching\">Replay all matching…</button>\
         <button class=\"danger\" name=\"action\" value=\"purge\">Purge all matching…</button></form>"
    );
    html::page("Failures", console.auth.who(&headers).as_deref(), &body).into_response()
}

/// `GET /console/failures/message?id=…&view=text|json|hex`
pub(crate) async fn show(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let fields = Fields::parse(query.as_deref().unwrap_or(""));
    let Some(id) = fields.get("id").and_then(|id| Uuid::parse_str(id).ok()) else {
        return bad_request("give the message id: /console/failures/message?id=<uuid>");
    };
    let found = match list_failures(&console, &FailureFilter::all().ids([id])).await {
        Ok(found) => found,
        Err(error) => return database_error(&error),
    };
    let Some(failed) = found.first() else {
        return html::error(
            StatusCode::NOT_FOUND,
            "Not in the failure table",
            &format!(
                "No failed message has id {id}: it was replayed or purged. Trace it to see where it is."
            ),
        );
    };
    let m = &failed.message;
    let mut body = table(
        &["field", "value"],
        &[
            vec!["id".into(), m.id.to_string()],
            vec!["topic".into(), esc(&m.topic)],
            vec!["key".into(), esc(m.key.as_deref().unwrap_or("-"))],
            vec!["tag".into(), esc(m.tag.as_deref().unwrap_or("-"))],
            vec!["created at".into(), esc(&m.created_at.to_rfc3339())],
            vec!["attempts".into(), m.attempts.to_string()],
            vec!["failed at".into(), esc(&failed.failed_at.to_rfc3339())],
            vec!["last error".into(), esc(&failed.last_error)],
        ],
    );
    body.push_str("<h2>Headers</h2>");
    let headers_rows: Vec<Vec<String>> = m
        .headers
        .iter()
        .map(|(k, v)| vec![esc(k), esc(v)])
        .collect();
    body.push_str(&table(&["header", "value"], &headers_rows));
    let view = fields.get("view").unwrap_or("auto");
    let _ = write!(
        body,
        "<h2>Payload ({} bytes)</h2><p>as <a href=\"?id={id}&view=text\">text</a> · \
         <a href=\"?id={id}&view=json\">JSON</a> · <a href=\"?id={id}&view=hex\">hex</a></p>\
         <pre id=\"payload\">{}</pre>",
        m.payload.len(),
        esc(&render_payload(&m.payload, view))
    );
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/console/failures/confirm\" class=\"inline\">\
         <input type=\"hidden\" name=\"scope\" value=\"selected\"><input type=\"hidden\" name=\"id\" value=\"{id}\">\
         <button class=\"primary\" name=\"action\" value=\"replay\">Replay…</button>\
         <button class=\"danger\" name=\"action\" value=\"purge\">Purge…</button></form> \
         <a href=\"/console/trace?q={id}\">trace this message</a>"
    );
    html::page(
        &format!("Failed message {id}"),
        console.auth.who(&headers).as_deref(),
        &body,
    )
    .into_response()
}

/// The payload as `view` says: `text` (lossy UTF-8), `json` (pretty-printed, or why not), `hex`
/// (a dump, 16 bytes a line), or `auto` (JSON if it parses, else text if UTF-8, else hex).
fn render_payload(payload: &[u8], view: &str) -> String {
    let json = || {
        serde_json::from_slice::<serde_json::Value>(payload)
            .map(|v| serde_json::to_string_pretty(&v).unwrap_or_default())
    };
    match view {
        "text" => String::from_utf8_lossy(payload).into_owned(),
        "json" => json().unwrap_or_else(|e| format!("not JSON: {e}")),
        "hex" => hex_dump(payload),
        _ => json()
            .ok()
            .or_else(|| String::from_utf8(payload.to_vec()).ok())
            .unwrap_or_else(|| hex_dump(payload)),
    }
}

fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (line, chunk) in bytes.chunks(16).enumerate() {
        let _ = write!(out, "{:08x}  ", line * 16);
        for b in chunk {
            let _ = write!(out, "{b:02x} ");
        }
        for _ in chunk.len()..16 {
            out.push_str("   ");
        }
        out.push(' ');
        out.extend(chunk.iter().map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        }));
        out.push('\n');
    }
    out
}

/// What a confirmation or an action is about.
struct Request {
    replay: bool,
    selected: bool,
    filter: FailureFilter,
}

fn request(fields: &Fields) -> Result<Request, String> {
    let replay = match fields.get("action") {
        Some("replay") => true,
        Some("purge") => false,
        _ => return Err("the action must be replay or purge".to_owned()),
    };
    let selected = match fields.get("scope") {
        Some("selected") => true,
        Some("matching") => false,
        _ => return Err("the scope must be selected or matching".to_owned()),
    };
    Ok(Request {
        replay,
        selected,
        filter: filter(fields, selected)?,
    })
}

/// `POST /console/failures/confirm`: how many messages the action would touch, and a button to
/// do it.
pub(crate) async fn confirm(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let (who, fields) = match console.write_form(&headers, &body) {
        Ok(form) => form,
        Err(refused) => return *refused,
    };
    let wanted = match request(&fields) {
        Ok(wanted) => wanted,
        Err(what) => return bad_request(&what),
    };
    let count = match list_failures(&console, &wanted.filter).await {
        Ok(found) => found.len(),
        Err(error) => return database_error(&error),
    };
    let verb = if wanted.replay { "Replay" } else { "Purge" };
    let effect = if wanted.replay {
        "They go back into the outbox and the relay publishes them again."
    } else {
        "They are deleted for good and will not be published."
    };
    let mut carried = hidden_filter(&fields);
    if wanted.selected {
        for id in fields.all("id") {
            let _ = write!(
                carried,
                "<input type=\"hidden\" name=\"id\" value=\"{}\">",
                esc(id)
            );
        }
    }
    let page_body = format!(
        "<p id=\"confirm-count\">{verb} <b>{count}</b> failed message(s)? {effect}</p>\
         <form method=\"post\" action=\"/console/failures/apply\">{carried}\
         <input type=\"hidden\" name=\"action\" value=\"{}\">\
         <input type=\"hidden\" name=\"scope\" value=\"{}\">\
         <button class=\"{}\" id=\"confirm\" type=\"submit\">{verb} {count} message(s)</button> \
         <a href=\"/console/failures\">cancel</a></form>",
        if wanted.replay { "replay" } else { "purge" },
        if wanted.selected {
            "selected"
        } else {
            "matching"
        },
        if wanted.replay { "primary" } else { "danger" },
    );
    html::page(&format!("Confirm: {verb}"), Some(&who), &page_body).into_response()
}

/// `POST /console/failures/apply`: replays or purges, in chunks, and reports what it did. More
/// than one chunk runs in the background, answered with a redirect to its progress page.
pub(crate) async fn apply(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let (who, fields) = match console.write_form(&headers, &body) {
        Ok(form) => form,
        Err(refused) => return *refused,
    };
    let wanted = match request(&fields) {
        Ok(wanted) => wanted,
        Err(what) => return bad_request(&what),
    };
    let ids: Vec<Uuid> = match list_failures(&console, &wanted.filter).await {
        Ok(found) => found.iter().map(|f| f.message.id).collect(),
        Err(error) => return database_error(&error),
    };
    let action = super::actions::Action {
        replay: wanted.replay,
        scope: if wanted.selected {
            "selected"
        } else {
            "matching a filter"
        },
        filter: describe(&fields, wanted.selected),
        who,
    };
    if ids.len() <= CHUNK {
        return match action.run(&console, &ids, None).await {
            Ok(body) => html::page("Done", Some(&action.who), &body).into_response(),
            Err(error) => database_error(&error),
        };
    }
    let (id, job) = console.jobs.start(
        format!(
            "{} {} message(s)",
            if action.replay { "replay" } else { "purge" },
            ids.len()
        ),
        Some(ids.len() as u64),
    );
    tokio::spawn(async move {
        let body = match action.run(&console, &ids, Some(&job)).await {
            Ok(body) => body,
            Err(error) => format!(
                "<p class=\"notice\" id=\"result\">Stopped by an error: {}. Reload the \
                 failure table to see what is left, and run it again.</p>",
                esc(&format!("{error:#}"))
            ),
        };
        job.finish(body);
    });
    Redirect::to(&format!("/console/jobs/{id}")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_render_as_json_text_or_hex() {
        assert_eq!(render_payload(br#"{"a":1}"#, "auto"), "{\n  \"a\": 1\n}");
        assert_eq!(render_payload(b"plain", "auto"), "plain");
        assert!(render_payload(&[0xff, 0x00], "auto").starts_with("00000000  ff 00"));
        assert!(render_payload(b"plain", "json").starts_with("not JSON"));
    }

    #[test]
    fn a_selection_needs_ids_and_valid_times() {
        let fields = Fields::parse("action=replay&scope=selected");
        assert!(
            request(&fields)
                .err()
                .unwrap()
                .contains("no message selected")
        );
        let fields = Fields::parse("action=purge&scope=matching&since=yesterday");
        assert!(request(&fields).err().unwrap().contains("is not a time"));
    }

    #[test]
    fn the_audit_log_names_the_selection() {
        let fields = Fields::parse("id=a&id=b&topic=payments&error=timed+out");
        assert_eq!(
            describe(&fields, true),
            "2 id(s) topic=payments error=timed out"
        );
        assert_eq!(describe(&fields, false), "topic=payments error=timed out");
        assert_eq!(describe(&Fields::parse(""), false), "everything");
    }
}
