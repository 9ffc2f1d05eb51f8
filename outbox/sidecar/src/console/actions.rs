//! A confirmed replay or purge of failed messages, in chunks so that none holds one huge
//! transaction; run inline for one chunk, or in the background with progress (see `jobs`).

use std::fmt::Write;

use courier_outbox::{FailureFilter, Failures, ReplayReport};
use uuid::Uuid;

use super::Console;
use super::audit::Entry;
use super::html::esc;
use crate::database::with_pool;

/// Messages per chunk.
pub(crate) const CHUNK: usize = 1_000;

/// A confirmed replay or purge.
pub(crate) struct Action {
    /// Replay (else purge).
    pub(crate) replay: bool,
    /// "selected" or "matching a filter", for the audit log.
    pub(crate) scope: &'static str,
    /// The selection in words (the filter fields, or how many ids), for the audit log.
    pub(crate) filter: String,
    /// Who asked.
    pub(crate) who: String,
}

impl Action {
    /// Replays or purges `ids` chunk by chunk, counting each chunk on `job`; the result page's
    /// body. Audited, also when an error stops it.
    pub(crate) async fn run(
        &self,
        console: &Console,
        ids: &[Uuid],
        job: Option<&super::jobs::Job>,
    ) -> anyhow::Result<String> {
        let failures = Failures::new();
        let verb = if self.replay { "replay" } else { "purge" };
        let mut report = ReplayReport::default();
        let mut purged = 0u64;
        for chunk in ids.chunks(CHUNK) {
            let chunk_filter = FailureFilter::all().ids(chunk.iter().copied());
            let done: anyhow::Result<()> = if self.replay {
                with_pool!(&console.database, |pool| failures
                    .replay(pool, &chunk_filter)
                    .await)
                .map(|done| {
                    report.replayed += done.replayed;
                    report.conflicts.extend(done.conflicts);
                })
                .map_err(Into::into)
            } else {
                with_pool!(&console.database, |pool| failures
                    .purge(pool, &chunk_filter)
                    .await)
                .map(|n| purged += n)
                .map_err(Into::into)
            };
            if let Err(error) = done {
                let outcome = format!(
                    "stopped by an error after {} of {} message(s): {error:#}",
                    report.replayed + purged,
                    ids.len()
                );
                console
                    .audit(self.entry(verb, report.replayed + purged).outcome(outcome))
                    .await;
                return Err(error);
            }
            if let Some(job) = job {
                job.advance(chunk.len() as u64);
            }
        }
        let mut body;
        if self.replay {
            let mut entry = self.entry(verb, report.replayed);
            if !report.conflicts.is_empty() {
                entry = entry.outcome(format!(
                    "ok; {} kept (id already in the outbox)",
                    report.conflicts.len()
                ));
            }
            console.audit(entry).await;
            body = format!(
                "<p id=\"result\">Replayed {} message(s) into the outbox.</p>",
                report.replayed
            );
            if !report.conflicts.is_empty() {
                let _ = write!(
                    body,
                    "<p class=\"notice\">{} kept in the failure table: the outbox already holds a \
                     message with the same id. Purge them if that message supersedes them, or \
                     replay them once it is gone: {}</p>",
                    report.conflicts.len(),
                    esc(&report
                        .conflicts
                        .iter()
                        .map(Uuid::to_string)
                        .collect::<Vec<_>>()
                        .join(", "))
                );
            }
        } else {
            console.audit(self.entry(verb, purged)).await;
            body = format!("<p id=\"result\">Purged {purged} failed message(s).</p>");
        }
        body.push_str(
            "<p><a href=\"/console\">watch the outbox drain</a> · \
             <a href=\"/console/failures\">back to the failures</a></p>",
        );
        Ok(body)
    }

    /// The audit entry of this action, `count` messages done.
    fn entry(&self, verb: &str, count: u64) -> Entry {
        Entry::now(&self.who, verb, "failure table")
            .filter(format!("{}: {}", self.scope, self.filter))
            .count(count)
    }
}
