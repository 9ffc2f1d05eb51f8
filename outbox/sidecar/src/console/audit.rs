//! The console's audit log: every write action (replay, purge, redrive) and every sign-in and
//! sign-out, with who did it, when, on what, with which selection, how many messages it touched
//! and how it ended. Each entry goes three ways: a `courier::console::audit` tracing event, the
//! overview's recent-actions list (in memory), and a row of the audit table
//! (`outbox.console_audit` on Postgres, `outbox_console_audit` on MySQL and SQLite), which the
//! Audit page (`/console/audit`) reads and which outlives the sidecar.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use sqlx::{Pool, QueryBuilder};

use super::Console;
use crate::database::with_pool;

/// How many entries the overview's recent-actions list keeps.
const RECENT_ACTIONS: usize = 50;
/// Entries per Audit page.
pub(crate) const PAGE_ROWS: u32 = 50;

/// One audited action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// When (microsecond precision: every store keeps that much).
    pub(crate) at: DateTime<Utc>,
    /// Who: the name given at sign-in, or the bearer token's `X-Console-User`.
    pub(crate) actor: String,
    /// `replay`, `purge`, `redrive`, `sign-in`, `sign-out`.
    pub(crate) action: String,
    /// What it acted on, e.g. "failure table" or "dead letters of group billing".
    pub(crate) target: String,
    /// The selection (filter fields, or how many ids were picked); empty when none applies.
    pub(crate) filter: String,
    /// Messages touched; `None` for a sign-in or sign-out.
    pub(crate) count: Option<i64>,
    /// "ok", or what stopped or refused it.
    pub(crate) outcome: String,
}

impl Entry {
    /// An entry timed now.
    pub(crate) fn now(actor: &str, action: &str, target: &str) -> Self {
        let at = Utc::now();
        Self {
            // Stores keep microseconds: an entry read back equals the one written.
            at: DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at),
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            filter: String::new(),
            count: None,
            outcome: "ok".to_owned(),
        }
    }

    /// With the selection `filter`.
    pub(crate) fn filter(mut self, filter: impl Into<String>) -> Self {
        self.filter = filter.into();
        self
    }

    /// With `count` messages touched.
    pub(crate) fn count(mut self, count: u64) -> Self {
        self.count = Some(i64::try_from(count).unwrap_or(i64::MAX));
        self
    }

    /// With the outcome `outcome` (the default is "ok").
    pub(crate) fn outcome(mut self, outcome: impl Into<String>) -> Self {
        self.outcome = outcome.into();
        self
    }

    /// One line for the overview: time, who, what.
    fn line(&self) -> String {
        let mut line = format!(
            "{} {}: {} {}",
            self.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            self.actor,
            self.action,
            self.target
        );
        if !self.filter.is_empty() {
            line.push_str(&format!(" [{}]", self.filter));
        }
        if let Some(count) = self.count {
            line.push_str(&format!(", {count} message(s)"));
        }
        line.push_str(&format!(": {}", self.outcome));
        line
    }
}

/// Which entries the Audit page shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Query {
    /// Entries whose actor contains this text, ignoring case.
    pub(crate) actor: Option<String>,
    /// Entries of exactly this action.
    pub(crate) action: Option<String>,
    /// The page, from 0 (the newest entries).
    pub(crate) page: u32,
}

impl Query {
    /// The `LIKE` pattern of the actor filter: lower case, `!` escaping `%`, `_` and itself.
    fn actor_pattern(&self) -> Option<String> {
        self.actor.as_ref().map(|actor| {
            let mut pattern = String::from("%");
            for c in actor.to_lowercase().chars() {
                if matches!(c, '%' | '_' | '!') {
                    pattern.push('!');
                }
                pattern.push(c);
            }
            pattern.push('%');
            pattern
        })
    }
}

/// A page of entries, newest first, and whether older ones follow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Page {
    pub(crate) entries: Vec<Entry>,
    pub(crate) more: bool,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An entry's time and filter.
pub(crate) type Dated = (DateTime<Utc>, String);

/// A store the audit table lives in. The SQL is the same on every store but for the table's
/// name and how `at` is kept, so one macro writes each implementation with concrete types.
pub(crate) trait AuditStore: sqlx::Database {
    /// Appends `entry`.
    fn insert<'a>(pool: &'a Pool<Self>, entry: &'a Entry) -> BoxFuture<'a, sqlx::Result<()>>;

    /// The entries `query` selects, newest first: one page, plus one more row if there is one.
    fn select<'a>(
        pool: &'a Pool<Self>,
        query: &'a Query,
    ) -> BoxFuture<'a, sqlx::Result<Vec<Entry>>>;

    /// The (time, filter) of every `action` entry after `since`, oldest first.
    fn since<'a>(
        pool: &'a Pool<Self>,
        action: &'a str,
        since: DateTime<Utc>,
    ) -> BoxFuture<'a, sqlx::Result<Vec<Dated>>>;
}

/// Implements [`AuditStore`] for `$db`, whose table is `$table`, storing `at` as `$time` by
/// `$encode` and reading it back by `$decode`.
macro_rules! audit_store {
    ($db:ty, $table:literal, $time:ty, $encode:expr, $decode:expr) => {
        impl AuditStore for $db {
            fn insert<'a>(
                pool: &'a Pool<Self>,
                entry: &'a Entry,
            ) -> BoxFuture<'a, sqlx::Result<()>> {
                Box::pin(async move {
                    let mut insert = QueryBuilder::<Self>::new(concat!(
                        "INSERT INTO ",
                        $table,
                        " (at, actor, action, target, filter, count, outcome) "
                    ));
                    insert.push_values([entry], |mut row, e| {
                        let encode: fn(DateTime<Utc>) -> $time = $encode;
                        row.push_bind(encode(e.at))
                            .push_bind(e.actor.as_str())
                            .push_bind(e.action.as_str())
                            .push_bind(e.target.as_str())
                            .push_bind(e.filter.as_str())
                            .push_bind(e.count)
                            .push_bind(e.outcome.as_str());
                    });
                    insert.build().execute(pool).await.map(|_| ())
                })
            }

            fn select<'a>(
                pool: &'a Pool<Self>,
                query: &'a Query,
            ) -> BoxFuture<'a, sqlx::Result<Vec<Entry>>> {
                Box::pin(async move {
                    let mut select = QueryBuilder::<Self>::new(concat!(
                        "SELECT at, actor, action, target, filter, count, outcome FROM ",
                        $table,
                        " WHERE 1 = 1"
                    ));
                    if let Some(pattern) = query.actor_pattern() {
                        select
                            .push(" AND LOWER(actor) LIKE ")
                            .push_bind(pattern)
                            .push(" ESCAPE '!'");
                    }
                    if let Some(action) = &query.action {
                        select.push(" AND action = ").push_bind(action.as_str());
                    }
                    select
                        .push(" ORDER BY id DESC LIMIT ")
                        .push_bind(i64::from(PAGE_ROWS) + 1)
                        .push(" OFFSET ")
                        .push_bind(i64::from(query.page) * i64::from(PAGE_ROWS));
                    let rows: Vec<($time, String, String, String, String, Option<i64>, String)> =
                        select.build_query_as().fetch_all(pool).await?;
                    let decode: fn($time) -> DateTime<Utc> = $decode;
                    Ok(rows
                        .into_iter()
                        .map(
                            |(at, actor, action, target, filter, count, outcome)| Entry {
                                at: decode(at),
                                actor,
                                action,
                                target,
                                filter,
                                count,
                                outcome,
                            },
                        )
                        .collect())
                })
            }

            fn since<'a>(
                pool: &'a Pool<Self>,
                action: &'a str,
                since: DateTime<Utc>,
            ) -> BoxFuture<'a, sqlx::Result<Vec<Dated>>> {
                Box::pin(async move {
                    let encode: fn(DateTime<Utc>) -> $time = $encode;
                    let decode: fn($time) -> DateTime<Utc> = $decode;
                    let mut select = QueryBuilder::<Self>::new(concat!(
                        "SELECT at, filter FROM ",
                        $table,
                        " WHERE action = "
                    ));
                    select
                        .push_bind(action)
                        .push(" AND at > ")
                        .push_bind(encode(since))
                        .push(" ORDER BY id");
                    let rows: Vec<($time, String)> =
                        select.build_query_as().fetch_all(pool).await?;
                    Ok(rows
                        .into_iter()
                        .map(|(at, filter)| (decode(at), filter))
                        .collect())
                })
            }
        }
    };
}

audit_store!(
    sqlx::Postgres,
    "outbox.console_audit",
    DateTime<Utc>,
    |at| at,
    |at| at
);
audit_store!(
    sqlx::MySql,
    "outbox_console_audit",
    DateTime<Utc>,
    |at| at,
    |at| at
);
// The sidecar connects to Postgres and MySQL only; the SQLite table is checked by the tests, so
// that the schema and these statements stay the same on every store.
#[cfg(test)]
audit_store!(
    sqlx::Sqlite,
    "outbox_console_audit",
    i64,
    |at| at.timestamp_micros(),
    |micros| DateTime::from_timestamp_micros(micros).unwrap_or_default()
);

/// Appends `entry` to the audit table of `pool`.
pub(crate) async fn insert<DB: AuditStore>(pool: &Pool<DB>, entry: &Entry) -> sqlx::Result<()> {
    DB::insert(pool, entry).await
}

/// The page of the audit table of `pool` that `query` selects.
pub(crate) async fn page<DB: AuditStore>(pool: &Pool<DB>, query: &Query) -> sqlx::Result<Page> {
    let mut entries = DB::select(pool, query).await?;
    let more = entries.len() > PAGE_ROWS as usize;
    entries.truncate(PAGE_ROWS as usize);
    Ok(Page { entries, more })
}

/// The (time, filter) of every `action` entry of the audit table of `pool` after `since`.
pub(crate) async fn since<DB: AuditStore>(
    pool: &Pool<DB>,
    action: &str,
    since: DateTime<Utc>,
) -> sqlx::Result<Vec<Dated>> {
    DB::since(pool, action, since).await
}

/// The overview's recent-actions list.
#[derive(Debug, Default)]
pub(crate) struct Recent(Mutex<VecDeque<String>>);

impl Recent {
    fn push(&self, line: String) {
        let mut recent = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT_ACTIONS {
            recent.pop_front();
        }
        recent.push_back(line);
    }

    /// The latest audited actions, newest first.
    pub(crate) fn lines(&self) -> Vec<String> {
        let recent = self.0.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().rev().cloned().collect()
    }
}

impl Console {
    /// Records `entry`: a tracing event, the overview's list, and a row of the audit table. The
    /// action has happened by now, so a row that cannot be written does not undo it: that is
    /// logged as an error and said in the overview's list.
    pub(crate) async fn audit(&self, entry: Entry) {
        tracing::info!(
            target: "courier::console::audit",
            actor = entry.actor,
            action = entry.action,
            target = entry.target,
            filter = entry.filter,
            count = entry.count,
            outcome = entry.outcome,
            "console action"
        );
        let mut line = entry.line();
        if let Err(error) = with_pool!(&self.database, |pool| insert(pool, &entry).await) {
            tracing::error!(
                target: "courier::console::audit",
                %error,
                "the console action above is not in the audit table: writing its row failed \
                 (if the table is missing, run `outbox-relay migrate`)"
            );
            line.push_str(&format!(" (not in the audit table: {error})"));
        }
        self.recent.push(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    courier_test_support::postgres_for_tests!();

    fn entry(actor: &str, action: &str, n: u64) -> Entry {
        Entry::now(actor, action, "failure table")
            .filter(format!("topic=payments #{n}"))
            .count(n)
    }

    /// Writes 2 pages and a bit of entries by three actors and reads them back by every filter.
    async fn pages_and_filters<DB: AuditStore>(pool: &Pool<DB>) {
        let mut written = Vec::new();
        for n in 0..u64::from(PAGE_ROWS) * 2 + 5 {
            let (actor, action) = match n % 3 {
                0 => ("Alice (bearer)", "replay"),
                1 => ("bob", "purge"),
                _ => ("50%_off!", "redrive"),
            };
            let e = entry(actor, action, n);
            insert(pool, &e).await.unwrap();
            written.push(e);
        }
        let sign_in = Entry::now("bob", "sign-in", "console");
        insert(pool, &sign_in).await.unwrap();
        written.push(sign_in);
        written.reverse();

        let first = page(pool, &Query::default()).await.unwrap();
        assert_eq!(first.entries, written[..50]);
        assert!(first.more);
        let third = page(
            pool,
            &Query {
                page: 2,
                ..Query::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(third.entries, written[100..]);
        assert!(!third.more);

        let alice = page(
            pool,
            &Query {
                actor: Some("alice".into()),
                ..Query::default()
            },
        )
        .await
        .unwrap();
        let expected: Vec<_> = written
            .iter()
            .filter(|e| e.actor.starts_with("Alice"))
            .cloned()
            .collect();
        assert_eq!(alice.entries, expected);
        // `%` and `_` are the text itself, not wildcards.
        let literal = page(
            pool,
            &Query {
                actor: Some("0%_".into()),
                ..Query::default()
            },
        )
        .await
        .unwrap();
        assert!(literal.entries.iter().all(|e| e.actor == "50%_off!"));
        assert_eq!(literal.entries.len(), 35);
        let none = page(
            pool,
            &Query {
                actor: Some("0%x".into()),
                ..Query::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(none.entries, []);
        let bob_in = page(
            pool,
            &Query {
                actor: Some("BOB".into()),
                action: Some("sign-in".into()),
                page: 0,
            },
        )
        .await
        .unwrap();
        assert_eq!(bob_in.entries, written[..1]);
        assert_eq!(bob_in.entries[0].count, None);

        let purges = since(pool, "purge", written[3].at).await.unwrap();
        let expected: Vec<_> = written[..3]
            .iter()
            .rev()
            .filter(|e| e.action == "purge")
            .map(|e| (e.at, e.filter.clone()))
            .collect();
        assert!(!expected.is_empty());
        assert_eq!(purges, expected);
    }

    #[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
    async fn the_audit_table_pages_and_filters_on_postgres(pool: sqlx::PgPool) {
        pages_and_filters(&pool).await;
    }

    #[tokio::test]
    async fn the_audit_table_pages_and_filters_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("audit.db").display()
        );
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        courier_outbox::SQLITE_MIGRATOR.run(&pool).await.unwrap();
        pages_and_filters(&pool).await;
    }

    #[tokio::test]
    async fn the_audit_table_pages_and_filters_on_mysql() {
        let db = courier_test_support::MySqlTestDatabase::create().await;
        courier_outbox::MYSQL_MIGRATOR.run(db.pool()).await.unwrap();
        pages_and_filters(db.pool()).await;
    }
}
