//! `outbox-relay failures list | replay | purge`.

use anyhow::bail;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use courier_outbox::{FailureFilter, Failures, ReplayReport};
use indicatif::{ProgressBar, ProgressStyle};
use sqlx::PgPool;
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
    /// Only failures at or after this time (RFC 3339, e.g. 2026-11-30T08:00:00Z, or a date).
    #[arg(long, value_parser = parse_time)]
    since: Option<DateTime<Utc>>,
    /// Only failures before this time (RFC 3339, e.g. 2026-11-30T08:00:00Z, or a date).
    #[arg(long, value_parser = parse_time)]
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
    /// Purge with --all without asking (needed when stdin is not a terminal).
    #[arg(long)]
    yes: bool,
}

/// An RFC 3339 time, or a date (`2026-11-30`, midnight UTC); the error shows both forms.
fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    if let Ok(day) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(day.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    Err(format!(
        "{text:?} is not an RFC 3339 time: write it like 2026-11-30T08:00:00Z (UTC), \
         2026-11-30T09:00:00+01:00, or a date, 2026-11-30 (midnight UTC)"
    ))
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

pub(crate) async fn run(pool: &PgPool, command: FailuresCommand) -> anyhow::Result<()> {
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
            if selection.is_unfiltered() && !selection.yes {
                let count = failures.list(pool, &filter).await?.len();
                if !confirmed(&format!(
                    "purge every failed message ({count}) for good? [y/N] "
                ))? {
                    println!("nothing purged");
                    return Ok(());
                }
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

/// Asks `question` on the terminal; `true` for "y" or "yes". Without a terminal there is nobody
/// to ask: the command must say `--yes` itself.
fn confirmed(question: &str) -> anyhow::Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        bail!(
            "purge --all deletes every failed message for good and stdin is not a terminal to \
             ask on: add --yes to confirm, or narrow it with --id, --topic, --key, --since, \
             --until or --error"
        );
    }
    let mut stdout = std::io::stdout();
    write!(stdout, "{question}")?;
    stdout.flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

fn refuse_unfiltered(selection: &Selection, verb: &str) -> anyhow::Result<()> {
    if selection.is_unfiltered() && !selection.all {
        bail!(
            "{verb} without a filter would touch every failure: give --id, --topic, --key, --since, --until or --error, or --all"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_time;

    #[test]
    fn times_are_rfc_3339_or_a_date() {
        assert_eq!(
            parse_time("2026-11-30T09:00:00+01:00")
                .unwrap()
                .to_rfc3339(),
            "2026-11-30T08:00:00+00:00"
        );
        assert_eq!(
            parse_time("2026-11-30").unwrap().to_rfc3339(),
            "2026-11-30T00:00:00+00:00"
        );
        let error = parse_time("yesterday").unwrap_err();
        assert!(
            error.starts_with(
                "\"yesterday\" is not an RFC 3339 time: write it like 2026-11-30T08:00:00Z"
            ),
            "{error}"
        );
    }
}
