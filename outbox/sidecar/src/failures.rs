//! `outbox-relay failures list | replay | purge`.

use anyhow::bail;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use courier_outbox::{FailureFilter, Failures, ReplayReport, Store};
use indicatif::{ProgressBar, ProgressStyle};
use sqlx::{Acquire, Executor, Pool};
use uuid::Uuid;

/// What to do with the failure table.
#[derive(Debug, Subcommand)]
pub(crate) enum FailuresCommand {
    /// Print failed messages, oldest first.
    List(Selection),
    /// Move failed messages back into the outbox, to be published again. A failure whose id is
    /// already in the outbox is kept and listed, and the command then exits with status 1.
    Replay(Selection),
    /// Delete failed messages for good.
    Purge(Selection),
}

/// Which failures: all conditions must hold. `replay` and `purge` need at least one, or `--all`.
#[derive(Debug, Args)]
pub(crate) struct Selection {
    /// Only this message id (repeatable).
    #[arg(long = "id")]
    ids: Vec<Uuid>,
    /// Only this topic.
    #[arg(long)]
    topic: Option<String>,
    /// Only this key.
    #[arg(long)]
    key: Option<String>,
    /// Only failures at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// Only failures before this time (RFC 3339).
    #[arg(long)]
    until: Option<DateTime<Utc>>,
    /// Only failures whose last error contains this text (case-insensitive).
    #[arg(long)]
    error: Option<String>,
    /// Every failure (required by replay and purge when no other condition is given).
    #[arg(long)]
    all: bool,
    /// At most this many (list defaults to 100).
    #[arg(long)]
    limit: Option<u32>,
}

impl Selection {
    fn is_unfiltered(&self) -> bool {
        self.ids.is_empty()
            && self.topic.is_none()
            && self.key.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.error.is_none()
    }

    fn filter(&self) -> FailureFilter {
        let mut filter = FailureFilter::all();
        if !self.ids.is_empty() {
            filter = filter.ids(self.ids.iter().copied());
        }
        if let Some(topic) = &self.topic {
            filter = filter.topic(topic);
        }
        if let Some(key) = &self.key {
            filter = filter.key(key);
        }
        if let Some(at) = self.since {
            filter = filter.failed_after(at);
        }
        if let Some(at) = self.until {
            filter = filter.failed_before(at);
        }
        if let Some(text) = &self.error {
            filter = filter.error_contains(text);
        }
        filter
    }
}

/// Replays in chunks so a long replay shows progress and never holds one huge transaction.
const REPLAY_CHUNK: usize = 1_000;

pub(crate) async fn run<DB: Store>(pool: &Pool<DB>, command: FailuresCommand) -> anyhow::Result<()>
where
    for<'p> &'p Pool<DB>: Executor<'p, Database = DB> + Acquire<'p, Database = DB>,
{
    let failures = Failures::new();
    match command {
        FailuresCommand::List(selection) => {
            let filter = selection.filter().limit(selection.limit.unwrap_or(100));
            let listed = failures.list(pool, &filter).await?;
            for failed in &listed {
                let message = &failed.message;
                println!(
                    "{}  {}  topic={} key={} attempts={}  {}",
                    failed.failed_at.to_rfc3339(),
                    message.id,
                    message.topic,
                    message.key.as_deref().unwrap_or("-"),
                    message.attempts,
                    failed.last_error
                );
            }
            println!("{} failed message(s)", listed.len());
        }
        FailuresCommand::Replay(selection) => {
            refuse_unfiltered(&selection, "replay")?;
            let mut filter = selection.filter();
            if let Some(limit) = selection.limit {
                filter = filter.limit(limit);
            }
            // The chunks go by the ids listed now: a failure kept because of a conflict stays in
            // the table and would otherwise be selected again by the next chunk.
            let ids: Vec<Uuid> = failures
                .list(pool, &filter)
                .await?
                .iter()
                .map(|failed| failed.message.id)
                .collect();
            let bar = ProgressBar::new(ids.len() as u64).with_style(
                ProgressStyle::with_template("replaying {bar:40} {pos}/{len} ({per_sec})")
                    .expect("a valid progress template"),
            );
            let mut report = ReplayReport::default();
            for chunk in ids.chunks(REPLAY_CHUNK) {
                let done = failures
                    .replay(pool, &selection.filter().ids(chunk.iter().copied()))
                    .await?;
                report.replayed += done.replayed;
                report.conflicts.extend(done.conflicts);
                bar.inc(chunk.len() as u64);
            }
            bar.finish_and_clear();
            print_replay(&report)?;
        }
        FailuresCommand::Purge(selection) => {
            refuse_unfiltered(&selection, "purge")?;
            let mut filter = selection.filter();
            if let Some(limit) = selection.limit {
                filter = filter.limit(limit);
            }
            let purged = failures.purge(pool, &filter).await?;
            println!("purged {purged} failed message(s)");
        }
    }
    Ok(())
}

/// Prints what a replay did; kept failures make it fail (exit 1), so that a script notices.
fn print_replay(report: &ReplayReport) -> anyhow::Result<()> {
    println!("replayed {} message(s) into the outbox", report.replayed);
    if report.conflicts.is_empty() {
        return Ok(());
    }
    for id in &report.conflicts {
        println!("kept {id}: a message with this id is already in the outbox");
    }
    bail!(
        "{} failed message(s) were kept in the failure table because the outbox already holds a \
         message with the same id (pending, or sent and kept for its retention period): purge \
         them if those messages supersede them (`failures purge --id <id>`), or replay them once \
         those messages are gone",
        report.conflicts.len()
    )
}

fn refuse_unfiltered(selection: &Selection, verb: &str) -> anyhow::Result<()> {
    if selection.is_unfiltered() && !selection.all {
        bail!(
            "{verb} without a filter would touch every failure: give --id, --topic, --key, --since, --until or --error, or --all"
        );
    }
    Ok(())
}
