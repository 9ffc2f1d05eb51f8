//! Long replays, purges and redrives run in the background with a progress page
//! (`/console/jobs/{id}`), which reloads itself each second (a `<meta refresh>`, no script) until
//! the job is done and then shows its result.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::Console;
use super::html::{self, esc};

/// How many finished jobs are remembered.
const KEPT: usize = 100;

/// One background action.
#[derive(Debug)]
pub(crate) struct Job {
    /// What it does, e.g. "replay 5000 message(s)".
    what: String,
    /// How many messages it goes through, when known up front (not for "redrive all").
    total: Option<u64>,
    done: AtomicU64,
    /// The result page's body (HTML) once finished.
    result: Mutex<Option<String>>,
}

impl Job {
    /// Counts `n` more messages done.
    pub(crate) fn advance(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// Marks the job finished with `body` (HTML) as its result.
    pub(crate) fn finish(&self, body: String) {
        *self.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(body);
    }
}

/// The console's background jobs.
#[derive(Debug, Default)]
pub(crate) struct Jobs {
    next: AtomicU64,
    jobs: Mutex<HashMap<u64, Arc<Job>>>,
}

impl Jobs {
    /// Registers a job over `total` messages (`None`: not known up front); its id and handle.
    pub(crate) fn start(&self, what: String, total: Option<u64>) -> (u64, Arc<Job>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let job = Arc::new(Job {
            what,
            total,
            done: AtomicU64::new(0),
            result: Mutex::new(None),
        });
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if jobs.len() >= KEPT {
            // The oldest finished job goes first.
            let finished = jobs
                .iter()
                .filter(|(_, j)| j.result.lock().map(|r| r.is_some()).unwrap_or(true))
                .map(|(id, _)| *id)
                .min();
            if let Some(old) = finished {
                jobs.remove(&old);
            }
        }
        jobs.insert(id, job.clone());
        (id, job)
    }

    fn get(&self, id: u64) -> Option<Arc<Job>> {
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }
}

/// `GET /console/jobs/{id}`: progress, or the result.
pub(crate) async fn page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Response {
    let who = console.auth.who(&headers);
    let Some(job) = console.jobs.get(id) else {
        return html::error(
            StatusCode::NOT_FOUND,
            "No such job",
            "This job is unknown: the sidecar restarted, or it finished long ago.",
        );
    };
    let result = job.result.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match result {
        Some(body) => html::page("Done", who.as_deref(), &body).into_response(),
        None => {
            let done = job.done.load(Ordering::Relaxed);
            // Without a total the bar is indeterminate and the count says how many so far.
            let (bar, count) = match job.total {
                Some(total) => (
                    format!(
                        "<progress id=\"progress\" value=\"{done}\" max=\"{total}\"></progress>"
                    ),
                    format!("{done} / {total}"),
                ),
                None => (
                    "<progress id=\"progress\"></progress>".to_owned(),
                    format!("{done} so far"),
                ),
            };
            html::page_with_head(
                "In progress",
                who.as_deref(),
                "<meta http-equiv=\"refresh\" content=\"1\">",
                &format!(
                    "<p>{}: {bar} <span id=\"progress-count\">{count}</span></p>\
                     <p>This page reloads itself until the job is done.</p>",
                    esc(&job.what),
                ),
            )
            .into_response()
        }
    }
}
