//! `POST /console/broker/redrive`: a group's dead letters sent back for consumption a page at a
//! time, as `broker-lite dlq redrive` does. One page (a few ticked rows, or a dead-letter queue
//! shorter than a page) is answered at once; anything longer runs in the background behind the
//! same progress page as a long replay (`/console/jobs/{id}`), counting each page as it is done.
//!
//! "Redrive all" lists the pending dead letters page by page and re-drives each page by its ids.
//! A re-driven letter leaves the listing; one that fails again and comes back while the job runs
//! is not re-driven a second time by the same job, so the job always ends.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use broker_lite_client::Admin;
use uuid::Uuid;

use super::Console;
use super::audit::Entry;
use super::html::{self, esc};
use super::jobs::Job;

/// Dead letters listed and re-driven per call (as `broker-lite dlq redrive`).
pub(crate) const PAGE: u32 = 100;

/// What to re-drive.
enum Selection {
    /// These ids.
    Ids(Vec<Uuid>),
    /// Every pending dead letter; the first page is already listed.
    All(Vec<Uuid>),
}

/// A redrive of one group's dead letters.
struct Redrive {
    admin: Admin,
    group: String,
    who: String,
}

impl Redrive {
    /// Re-drives `selection` page by page, counting each page on `job`; how many were
    /// re-driven and in how many pages, or the error that stopped it and how many were
    /// re-driven before it.
    async fn run(
        &self,
        selection: Selection,
        job: Option<&Job>,
    ) -> Result<(u64, u32), (u64, String)> {
        let mut redriven = 0;
        let mut pages = 0;
        match selection {
            Selection::Ids(ids) => {
                for page in ids.chunks(PAGE as usize) {
                    redriven += self.page(page.to_vec(), redriven).await?;
                    pages += 1;
                    if let Some(job) = job {
                        job.advance(page.len() as u64);
                    }
                }
            }
            Selection::All(first) => {
                let mut seen: HashSet<Uuid> = first.iter().copied().collect();
                let mut page = first;
                while !page.is_empty() {
                    let n = page.len() as u64;
                    redriven += self.page(page, redriven).await?;
                    pages += 1;
                    if let Some(job) = job {
                        job.advance(n);
                    }
                    page = self
                        .list()
                        .await
                        .map_err(|e| (redriven, e))?
                        .into_iter()
                        .filter(|id| seen.insert(*id))
                        .collect();
                }
            }
        }
        Ok((redriven, pages))
    }

    /// The first page of the group's pending dead letters.
    async fn list(&self) -> Result<Vec<Uuid>, String> {
        self.admin
            .dead_letters(&self.group, PAGE)
            .await
            .map(|letters| letters.into_iter().map(|m| m.message_id).collect())
            .map_err(|e| format!("listing the dead letters of group {}: {e}", self.group))
    }

    async fn page(&self, ids: Vec<Uuid>, before: u64) -> Result<u64, (u64, String)> {
        self.admin
            .redrive_dead_letters(&self.group, ids)
            .await
            .map_err(|e| (before, format!("broker-lite refused the redrive: {e}")))
    }

    /// Audits the outcome and renders the result page's body.
    async fn finish(
        &self,
        console: &Console,
        filter: String,
        outcome: Result<(u64, u32), (u64, String)>,
    ) -> Result<String, String> {
        let entry = Entry::now(
            &self.who,
            "redrive",
            &format!("dead letters of group {}", self.group),
        )
        .filter(filter);
        match outcome {
            Ok((count, pages)) => {
                console.audit(entry.count(count)).await;
                Ok(format!(
                    "<p id=\"result\">Redrove {count} dead letter(s) of group {} in {pages} \
                     page(s).</p>\
                     <p><a href=\"/console/broker\">back to the broker</a></p>",
                    esc(&self.group)
                ))
            }
            Err((count, error)) => {
                let outcome = format!("stopped after {count} re-driven: {error}");
                console.audit(entry.count(count).outcome(&outcome)).await;
                Err(format!(
                    "{outcome}. The pages before were re-driven; press Redrive again for the rest."
                ))
            }
        }
    }
}

/// `POST /console/broker/redrive`: `group`, and `id`s with `scope=selected` or `scope=all`.
pub(crate) async fn redrive(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let (who, fields) = match console.write_form(&headers, &body) {
        Ok(form) => form,
        Err(refused) => return *refused,
    };
    let Some(group) = fields.get("group").map(str::to_owned) else {
        return html::error(StatusCode::BAD_REQUEST, "Invalid request", "no group given");
    };
    let all = fields.get("scope") == Some("all");
    let ids: Vec<Uuid> = fields
        .all("id")
        .filter_map(|id| Uuid::parse_str(id).ok())
        .collect();
    if !all && ids.is_empty() {
        return html::error(
            StatusCode::BAD_REQUEST,
            "Nothing selected",
            "tick the dead letters to redrive, or use Redrive all",
        );
    }
    let admin = match console.admin().await {
        Ok(admin) => admin,
        Err(what) => {
            return html::error(StatusCode::SERVICE_UNAVAILABLE, "Broker unavailable", &what);
        }
    };
    let redrive = Redrive { admin, group, who };
    let (selection, filter, total) = if all {
        let first = match redrive.list().await {
            Ok(first) => first,
            Err(what) => return html::error(StatusCode::BAD_GATEWAY, "Redrive failed", &what),
        };
        // A queue that fits in the first page is known in full: its size is the total.
        let total = (first.len() < PAGE as usize).then_some(first.len() as u64);
        (Selection::All(first), "all".to_owned(), total)
    } else {
        let n = ids.len() as u64;
        (Selection::Ids(ids), format!("{n} id(s)"), Some(n))
    };
    if total.is_some_and(|n| n <= u64::from(PAGE)) {
        let outcome = redrive.run(selection, None).await;
        return match redrive.finish(&console, filter, outcome).await {
            Ok(body) => html::page("Redriven", Some(&redrive.who), &body).into_response(),
            Err(what) => html::error(StatusCode::BAD_GATEWAY, "Redrive failed", &what),
        };
    }
    let what = match total {
        Some(n) => format!("redrive {n} dead letter(s) of group {}", redrive.group),
        None => format!("redrive every dead letter of group {}", redrive.group),
    };
    let (id, job) = console.jobs.start(what, total);
    tokio::spawn(async move {
        let outcome = redrive.run(selection, Some(&job)).await;
        let body = match redrive.finish(&console, filter, outcome).await {
            Ok(body) => body,
            Err(what) => format!("<p class=\"notice\" id=\"result\">{}</p>", esc(&what)),
        };
        job.finish(body);
    });
    Redirect::to(&format!("/console/jobs/{id}")).into_response()
}
