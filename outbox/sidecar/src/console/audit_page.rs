//! `/console/audit?actor=&action=&page=`: the audit table, newest first, a page at a time,
//! filtered by actor (contains, ignoring case) and action.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::Console;
use super::audit::{self, Query};
use super::form::Fields;
use super::html::{self, esc, table, url};
use crate::database::with_pool;

/// The actions the console records, for the filter's choices.
const ACTIONS: [&str; 5] = ["replay", "purge", "redrive", "sign-in", "sign-out"];

/// The query the fields ask for, or what is wrong with them.
fn query(fields: &Fields) -> Result<Query, String> {
    let action = fields.get("action").map(str::to_owned);
    if let Some(action) = &action {
        if !ACTIONS.contains(&action.as_str()) {
            return Err(format!(
                "{action:?} is not an audited action: pick one of {}",
                ACTIONS.join(", ")
            ));
        }
    }
    let page = match fields.get("page") {
        None => 0,
        Some(page) => page
            .parse::<u32>()
            .map_err(|_| format!("page {page:?} is not a page number (0 is the newest)"))?,
    };
    Ok(Query {
        actor: fields.get("actor").map(str::to_owned),
        action,
        page,
    })
}

/// The link to page `page` of the same filter.
fn link(query: &Query, page: u32) -> String {
    let mut href = format!("/console/audit?page={page}");
    if let Some(actor) = &query.actor {
        let _ = write!(href, "&actor={}", url(actor));
    }
    if let Some(action) = &query.action {
        let _ = write!(href, "&action={}", url(action));
    }
    href
}

pub(crate) async fn page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let who = console.auth.who(&headers);
    let fields = Fields::parse(raw.as_deref().unwrap_or(""));
    let query = match query(&fields) {
        Ok(query) => query,
        Err(what) => return html::error(StatusCode::BAD_REQUEST, "Invalid request", &what),
    };
    let found = with_pool!(&console.database, |pool| audit::page(pool, &query).await);
    let found = match found {
        Ok(found) => found,
        Err(error) => {
            return html::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Cannot read the audit table",
                &format!(
                    "{error}: check the database, and run `outbox-relay migrate` if the table \
                     is missing"
                ),
            );
        }
    };
    let mut choices = String::from("<option value=\"\">any action</option>");
    for action in ACTIONS {
        let selected = if query.action.as_deref() == Some(action) {
            " selected"
        } else {
            ""
        };
        let _ = write!(choices, "<option{selected}>{action}</option>");
    }
    let mut body = format!(
        "<form method=\"get\" action=\"/console/audit\" id=\"audit-filter\">\
         <input name=\"actor\" placeholder=\"actor contains\" value=\"{}\">\
         <select name=\"action\">{choices}</select>\
         <button type=\"submit\">Filter</button> <a href=\"/console/audit\">clear</a></form>",
        esc(query.actor.as_deref().unwrap_or("")),
    );
    let rows: Vec<Vec<String>> = found
        .entries
        .iter()
        .map(|e| {
            vec![
                esc(&e.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                esc(&e.actor),
                esc(&e.action),
                esc(&e.target),
                esc(&e.filter),
                e.count.map_or_else(|| "-".to_owned(), |n| n.to_string()),
                esc(&e.outcome),
            ]
        })
        .collect();
    let _ = write!(
        body,
        "<p id=\"audit-shown\">page {} · {} entr{} shown, newest first</p>",
        query.page,
        rows.len(),
        if rows.len() == 1 { "y" } else { "ies" }
    );
    body.push_str(&table(
        &[
            "when", "who", "action", "target", "filter", "count", "outcome",
        ],
        &rows,
    ));
    body.push_str("<p>");
    if query.page > 0 {
        let _ = write!(
            body,
            "<a id=\"newer\" href=\"{}\">newer</a> ",
            esc(&link(&query, query.page - 1))
        );
    }
    if found.more {
        let _ = write!(
            body,
            "<a id=\"older\" href=\"{}\">older</a>",
            esc(&link(&query, query.page + 1))
        );
    }
    body.push_str("</p>");
    html::page("Audit", who.as_deref(), &body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_takes_known_actions_and_page_numbers() {
        let wanted = query(&Fields::parse("actor=Al&action=purge&page=2")).unwrap();
        assert_eq!(
            wanted,
            Query {
                actor: Some("Al".into()),
                action: Some("purge".into()),
                page: 2
            }
        );
        assert_eq!(
            link(&wanted, 3),
            "/console/audit?page=3&actor=Al&action=purge"
        );
        let error = query(&Fields::parse("action=drop")).unwrap_err();
        assert!(error.contains("not an audited action"), "{error}");
        let error = query(&Fields::parse("page=-1")).unwrap_err();
        assert!(error.contains("not a page number"), "{error}");
    }
}
