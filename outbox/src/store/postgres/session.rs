//! A relay session on Postgres: one dedicated connection holds the key-partition advisory locks
//! and the claim transaction, so that if the relay dies, its ownership and its row locks end
//! together and nothing is lost. How long that connection may go silent before the database ends
//! it (a relay cut off by a network partition) is bounded on both ends: see [`super::liveness`].
//!
//! **Claiming ahead.** A second connection claims the next batch while the current one is
//! published, recorded and committed, so a busy relay does not wait for a claim between batches.
//! The batch claimed ahead is the next rows in sequence order (`SKIP LOCKED` passes over the batch
//! in hand), so it may hold later messages of the keys in hand. It is published only once the
//! batch in hand was published *whole*: if any message of the batch in hand failed or was held,
//! the batch claimed ahead is given back (rolled back) and the next claim sees the failed message
//! backing off, so no later message of its key overtakes it. Its rows are deleted only in its own
//! open transaction, committed after the broker acknowledged them when its turn comes, exactly as
//! a batch claimed in turn. Behind a full batch (more work is likely) it is claimed at once;
//! behind a smaller one, as soon as that was published whole, while it is recorded and committed
//! (rows committed during the publish then wait for neither that commit nor a claim after it). It
//! is given back before a rebalance (when it releases partitions), before the relay's first
//! connection runs anything else while it holds it, or when the next call wants fewer rows. A
//! relay that dies holding it loses nothing: the transaction rolls back with the connection.
//!
//! **Committing behind the next publish.** A batch published whole commits in a task of its own
//! ([`Slot::Committing`]): [`Session::batch`] returns once its outcomes are recorded and the next
//! batch is claimed, and the next call publishes that batch while the commit is still under way
//! (it would otherwise wait for the commit: the "claimed → publish call" step of the latency
//! breakdown). What the order rules need still holds. The broker acknowledged the whole batch
//! before the next one is published. The next batch commits only after the one before it
//! committed, and a failed commit ends the session before it does, so that it rolls back too: the
//! outbox never loses a batch's rows while keeping those of the batch before it. A batch that was
//! not published whole (retries go back with a delay, later messages of their keys are held)
//! commits before the call returns, since the next claim must see the retries backing off. A claim
//! made while a batch published whole commits finds its rows locked and passes over them. Any
//! other use of a connection (rebalancing, housekeeping, the idle mark, closing) waits for the
//! commit first. A relay that dies while a batch commits loses nothing either: the commit lands
//! (the broker has the batch) or rolls back (the batch is published again).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::liveness::{Liveness, bounded};
use super::partitions::Partitions;
use super::{claim, housekeeping};
use crate::relay::{Backlog, BatchEnd, Claimed, Outcome, PublishFn, RelayConfig, Session};
use crate::{Error, Result};

/// The relay's main connection: it holds the advisory locks and the idle mark, runs the
/// housekeeping and claims in turn.
const MAIN: usize = 0;
/// The spare connection: it claims ahead, alternately with the main one, and holds nothing
/// between transactions.
const SPARE: usize = 1;

/// The relay's connections and the key partitions it owns.
#[derive(Debug)]
pub struct PgSession {
    /// [`MAIN`] and [`SPARE`].
    conns: [Slot; 2],
    partitions: Partitions,
    liveness: Liveness,
    /// The batch claimed ahead, in an open transaction.
    ahead: Option<Ahead>,
    /// Where the claims on either connection start reading the table.
    cursor: claim::Cursor,
}

/// A batch claimed ahead: its rows, and the connection whose open transaction holds them.
#[derive(Debug)]
struct Ahead {
    conn: usize,
    claimed: Vec<Claimed>,
}

/// One of the relay's connections.
#[derive(Debug)]
enum Slot {
    Ready(PgConnection),
    /// Committing a batch published whole, in a task that gives the connection back.
    Committing(JoinHandle<(PgConnection, sqlx::Result<()>)>),
    /// Its commit failed (or the task died): the session ends.
    Lost,
}

impl Slot {
    /// The connection, once the commit it runs (if any) is done. A failed commit is the
    /// session's error: the relay reconnects and the batch it held is published again.
    async fn ready(&mut self) -> sqlx::Result<&mut PgConnection> {
        if let Self::Committing(task) = self {
            let (conn, committed) = match task.await {
                Ok(done) => done,
                Err(died) => {
                    *self = Self::Lost;
                    return Err(sqlx::Error::Io(std::io::Error::other(format!(
                        "the relay's commit task ended without an answer ({died}); \
                         treating the connection as lost"
                    ))));
                }
            };
            if let Err(error) = committed {
                *self = Self::Lost;
                return Err(error);
            }
            *self = Self::Ready(conn);
        }
        self.conn()
    }

    /// The connection, if it is ready.
    fn conn(&mut self) -> sqlx::Result<&mut PgConnection> {
        match self {
            Self::Ready(conn) => Ok(conn),
            Self::Committing(_) => Err(sqlx::Error::Protocol(
                "the relay used a connection before its commit was done (a bug in courier)"
                    .to_owned(),
            )),
            Self::Lost => Err(sqlx::Error::Io(std::io::Error::other(
                "the relay's connection was lost to a failed commit; reconnecting",
            ))),
        }
    }

    fn is_committing(&self) -> bool {
        matches!(self, Self::Committing(_))
    }

    /// Commits the open transaction in a task of its own; [`ready`](Self::ready) takes the
    /// connection back. The task outlives the session if need be: the batch was published whole,
    /// so committing it is right even after the relay stopped caring.
    fn commit_in_background(&mut self, timeout: Duration) {
        if let Self::Ready(mut conn) = std::mem::replace(self, Self::Lost) {
            let span = tracing::debug_span!("outbox.commit");
            *self = Self::Committing(tokio::spawn(
                async move {
                    let committed = bounded(timeout, end_transaction(&mut conn, "COMMIT")).await;
                    (conn, committed)
                }
                .instrument(span),
            ));
        }
    }
}

impl PgSession {
    /// Connects as the relay named in `config`, checks the tables and joins the partition sharing.
    pub(super) async fn open(pool: &PgPool, config: &RelayConfig) -> Result<Self> {
        let liveness = Liveness::new(config);
        let options = pool
            .connect_options()
            .as_ref()
            .clone()
            .application_name(&config.name);
        let mut conn = bounded(liveness.timeout, PgConnection::connect_with(&options)).await?;
        // Before anything is held: from here on a silent relay loses what it holds within bounds.
        liveness.apply(&mut conn).await?;
        let timeout = liveness.timeout;
        if !bounded(timeout, housekeeping::is_migrated(&mut conn)).await? {
            return Err(Error::NotMigrated);
        }
        // A reused backend pid may carry a crashed relay's mark.
        bounded(timeout, housekeeping::unmark_idle(&mut conn)).await?;
        bounded(timeout, housekeeping::forget_dead_relays(&mut conn)).await?;
        let mut partitions = bounded(timeout, Partitions::join(&mut conn)).await?;
        bounded(timeout, partitions.rebalance(&mut conn)).await?;
        // Named apart, so that an operator (or a test) tells the relay's main connection from it.
        let spare_options = options
            .clone()
            .application_name(&format!("{}-ahead", config.name));
        let mut spare = bounded(timeout, PgConnection::connect_with(&spare_options)).await?;
        liveness.apply_spare(&mut spare).await?;
        tracing::info!(
            partitions = partitions.owned().len(),
            "outbox relay started"
        );
        Ok(Self {
            conns: [Slot::Ready(conn), Slot::Ready(spare)],
            partitions,
            liveness,
            ahead: None,
            cursor: claim::Cursor::default(),
        })
    }

    /// Rolls back the batch claimed ahead, if any: its rows go back to the outbox untouched.
    async fn give_back_ahead(&mut self) -> sqlx::Result<()> {
        if let Some(ahead) = self.ahead.take() {
            let conn = self.conns[ahead.conn].ready().await?;
            bounded(self.liveness.timeout, end_transaction(conn, "ROLLBACK")).await?;
        }
        Ok(())
    }

    /// Frees the main connection for housekeeping (then reached through `conns[MAIN].conn()`):
    /// the commit under way on either connection is done (the housekeeping may release what that
    /// batch holds, or read the outbox as if it were committed), and the batch claimed ahead is
    /// given back if its transaction is open on the main connection (a statement there would join
    /// it, and a commit delete its rows before they were published).
    async fn settle_main(&mut self) -> sqlx::Result<()> {
        for slot in &mut self.conns {
            slot.ready().await?;
        }
        if self.ahead.as_ref().is_some_and(|a| a.conn == MAIN) {
            self.give_back_ahead().await?;
        }
        Ok(())
    }
}

/// Opens a transaction on `conn` and claims up to `limit` rows in it.
async fn begin_and_claim(
    conn: &mut PgConnection,
    cursor: &mut claim::Cursor,
    partitions: &[i16],
    limit: usize,
) -> sqlx::Result<Vec<Claimed>> {
    // By hand rather than `Connection::begin`: the transaction outlives this call (a batch claimed
    // ahead waits in it), which a borrowed `Transaction` cannot.
    let claiming = async {
        sqlx::query("BEGIN").execute(&mut *conn).await?;
        claim::claim(conn, cursor, partitions, limit).await
    };
    // Its own span, so that a latency breakdown can tell the claim from the wait before it.
    claiming
        .instrument(tracing::debug_span!("outbox.claim"))
        .await
}

async fn end_transaction(conn: &mut PgConnection, how: &'static str) -> sqlx::Result<()> {
    sqlx::query(how).execute(conn).await.map(drop)
}

/// Where the other connection is within one call of [`PgSession::batch`].
#[derive(Default)]
struct OtherConn {
    /// The commit of the batch before this one (if it was still under way) is done.
    committed: AtomicBool,
    /// The claim ahead began.
    claiming: AtomicBool,
    /// The claim ahead returned.
    claimed: AtomicBool,
    /// Notified whenever one of the above becomes true.
    progress: Notify,
}

impl OtherConn {
    fn mark(&self, flag: &AtomicBool) {
        flag.store(true, Ordering::Release);
        self.progress.notify_one();
    }

    /// Waits until `done` holds; each change of the flags re-checks it.
    async fn until(&self, done: impl Fn(&Self) -> bool) {
        while !done(self) {
            self.progress.notified().await;
        }
    }

    fn is_committed(&self) -> bool {
        self.committed.load(Ordering::Acquire)
    }

    /// Nothing half-done on the other connection: the commit before is done, and no claim is
    /// under way (none began, or it returned).
    fn is_settled(&self) -> bool {
        self.is_committed()
            && (!self.claiming.load(Ordering::Acquire) || self.claimed.load(Ordering::Acquire))
    }
}

impl Session for PgSession {
    /// Claims, publishes and records in one transaction: the rows stay locked (and deleted, to
    /// everyone else) while they are published, and a relay that dies rolls the claim back. The
    /// next batch is claimed ahead meanwhile on the other connection, and a batch published whole
    /// commits behind the next publish (see the module docs).
    async fn batch<F: PublishFn>(
        &mut self,
        limit: usize,
        keep_sent: bool,
        publish: F,
    ) -> sqlx::Result<BatchEnd> {
        let liveness = self.liveness;
        let timeout = liveness.timeout;
        if self.ahead.as_ref().is_some_and(|a| a.claimed.len() > limit) {
            self.give_back_ahead().await?;
        }
        let partitions = self.partitions.owned();
        let (this_index, claimed) = match self.ahead.take() {
            Some(ahead) => (ahead.conn, ahead.claimed),
            None => {
                // Claims on the connection that is not committing the batch before, if one is:
                // the claim passes over that batch's rows (locked until its commit).
                let index = if self.conns[MAIN].is_committing() {
                    SPARE
                } else {
                    MAIN
                };
                let conn = self.conns[index].ready().await?;
                let claimed = bounded(
                    timeout,
                    begin_and_claim(conn, &mut self.cursor, &partitions, limit),
                )
                .await?;
                if claimed.is_empty() {
                    bounded(timeout, end_transaction(conn, "COMMIT")).await?;
                    // The relay goes idle after this: the batch before has committed by then.
                    self.conns[1 - index].ready().await?;
                    return Ok(BatchEnd::Empty);
                }
                (index, claimed)
            }
        };
        let claimed: Arc<[Claimed]> = claimed.into();
        // A full batch says more is probably due: the next one is claimed at once. A smaller one
        // says the next rows are still being written: they are claimed once this batch was
        // published whole, while it is recorded and committed, so that rows committed during its
        // publishing wait for neither that commit nor a claim after it. A probe (one row) never
        // claims ahead.
        let full = claimed.len() >= limit;
        let look_ahead = limit > 1;
        let [main, spare] = &mut self.conns;
        let (this_slot, other_slot) = if this_index == MAIN {
            (main, spare)
        } else {
            (spare, main)
        };
        let every = liveness.ping_interval();
        let cursor = &mut self.cursor;

        let mut ahead_result: Option<sqlx::Result<Vec<Claimed>>> = None;
        let other_conn = OtherConn::default();
        let published_whole = Notify::new();
        let end = {
            // On the other connection: lets the batch before commit, then claims the next batch
            // and keeps its transaction alive until dropped. Ends only with the error of that
            // commit, which ends the session.
            let other = async {
                let other = match other_slot.ready().await {
                    Ok(conn) => conn,
                    Err(error) => return error,
                };
                other_conn.mark(&other_conn.committed);
                if look_ahead {
                    if !full {
                        published_whole.notified().await;
                    }
                    other_conn.mark(&other_conn.claiming);
                    let mut result =
                        bounded(timeout, begin_and_claim(other, cursor, &partitions, limit)).await;
                    let claimed_some = result.as_ref().is_ok_and(|rows| !rows.is_empty());
                    if matches!(&result, Ok(rows) if rows.is_empty()) {
                        // Nothing to carry over: end the transaction now, while this batch
                        // finishes, rather than after it.
                        let ended = bounded(timeout, end_transaction(other, "ROLLBACK")).await;
                        result = ended.map(|()| Vec::new());
                    }
                    ahead_result = Some(result);
                    other_conn.mark(&other_conn.claimed);
                    // Its transaction waits idle for its turn: ping it as the batch in hand's.
                    if claimed_some {
                        loop {
                            tokio::time::sleep(every).await;
                            let ping = sqlx::query("SELECT 1").execute(&mut *other);
                            if let Err(error) = bounded(timeout, ping).await {
                                ahead_result = Some(Err(error));
                                break;
                            }
                        }
                    }
                }
                std::future::pending().await
            };
            let this_batch = async {
                let this = this_slot.ready().await?;
                let publishing = publish(claimed.clone());
                tokio::pin!(publishing);
                // The transaction is idle while the broker works: ping it, or the server's
                // idle_in_transaction_session_timeout would end a relay that is merely
                // publishing slowly.
                let mut pings =
                    tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let outcomes = loop {
                    tokio::select! {
                        outcomes = &mut publishing => break outcomes,
                        _ = pings.tick() => {
                            // A failed ping means the rows are no longer ours (or soon will not
                            // be): stop publishing them, the relay reconnects and whoever claims
                            // them next publishes them again.
                            bounded(timeout, sqlx::query("SELECT 1").execute(&mut *this)).await?;
                        }
                    }
                };
                let Some(outcomes) = outcomes else {
                    bounded(timeout, end_transaction(this, "ROLLBACK")).await?;
                    return Ok((BatchEnd::Abandoned, false));
                };
                let whole = outcomes.iter().all(|o| matches!(o, Outcome::Published));
                if whole {
                    published_whole.notify_one();
                }
                // Only after the broker acknowledged them are the rows' deletions committed, and
                // only after the batch before committed: if that commit fails, this batch rolls
                // back with the session.
                bounded(
                    timeout,
                    claim::record(&mut *this, &claimed, &outcomes, keep_sent),
                )
                .await?;
                other_conn.until(OtherConn::is_committed).await;
                if whole {
                    this_slot.commit_in_background(timeout);
                } else {
                    // The next claim must see the retries backing off: commit before it.
                    bounded(timeout, end_transaction(this, "COMMIT")).await?;
                }
                Ok::<_, sqlx::Error>((BatchEnd::Done, whole))
            };
            tokio::pin!(other);
            tokio::pin!(this_batch);
            let end = tokio::select! {
                end = &mut this_batch => end,
                error = &mut other => Err(error),
            };
            // The commit before is awaited, and a claim started on the other connection too, not
            // dropped half-way.
            if end.is_ok() {
                tokio::select! {
                    () = other_conn.until(OtherConn::is_settled) => {}
                    error = &mut other => return Err(error),
                }
            }
            end
        };
        // An error on either connection ends the session; dropping it rolls both back.
        let (end, whole) = end?;
        match ahead_result.transpose()? {
            Some(next) if !next.is_empty() && end == BatchEnd::Done && whole => {
                self.ahead = Some(Ahead {
                    conn: 1 - this_index,
                    claimed: next,
                });
            }
            // Nothing claimed: its transaction has ended already.
            Some(next) if next.is_empty() => {}
            Some(_) => {
                // Not the time to carry it over: give it back.
                let other = self.conns[1 - this_index].ready().await?;
                bounded(timeout, end_transaction(other, "ROLLBACK")).await?;
            }
            None => {}
        }
        Ok(end)
    }

    async fn rebalance(&mut self) -> sqlx::Result<()> {
        self.settle_main().await?;
        let timeout = self.liveness.timeout;
        let target = bounded(timeout, Partitions::fair_share(self.conns[MAIN].conn()?)).await?;
        // A partition released goes to another relay: it must not find rows of it held here, or
        // it would publish a key's later messages before the batch claimed ahead. Taking more
        // partitions changes nothing for that batch.
        if self.partitions.would_release(target) {
            self.give_back_ahead().await?;
        }
        let conn = self.conns[MAIN].conn()?;
        bounded(timeout, self.partitions.rebalance_to(conn, target)).await
    }

    async fn maintain(&mut self, retention: Option<Duration>) -> sqlx::Result<Backlog> {
        self.settle_main().await?;
        let timeout = self.liveness.timeout;
        let conn = self.conns[MAIN].conn()?;
        let backlog = bounded(timeout, housekeeping::backlog(&mut *conn)).await?;
        bounded(timeout, housekeeping::forget_dead_relays(&mut *conn)).await?;
        if let Some(retention) = retention {
            let purged = bounded(
                timeout,
                housekeeping::purge_sent(&mut *conn, retention, 10_000),
            )
            .await?;
            if purged > 0 {
                tracing::debug!(purged, "purged sent outbox rows past their retention");
            }
        }
        Ok(backlog)
    }

    async fn set_idle(&mut self, idle: bool) -> sqlx::Result<()> {
        self.settle_main().await?;
        let timeout = self.liveness.timeout;
        let conn = self.conns[MAIN].conn()?;
        if idle {
            bounded(timeout, housekeeping::mark_idle(conn)).await
        } else {
            bounded(timeout, housekeeping::unmark_idle(conn)).await
        }
    }

    async fn next_due(&mut self) -> sqlx::Result<Option<Duration>> {
        self.settle_main().await?;
        let conn = self.conns[MAIN].conn()?;
        bounded(self.liveness.timeout, housekeeping::next_due(conn)).await
    }

    async fn close(mut self) {
        // The batch committing behind the last publish lands first: the broker has it.
        for slot in &mut self.conns {
            let _ = slot.ready().await;
        }
        let _ = self.give_back_ahead().await;
        let timeout = self.liveness.timeout;
        let [main, spare] = &mut self.conns;
        if let Ok(conn) = main.ready().await {
            let _ = bounded(timeout, housekeeping::unmark_idle(&mut *conn)).await;
        }
        for slot in [main, spare] {
            if let Slot::Ready(conn) = std::mem::replace(slot, Slot::Lost) {
                let _ = bounded(timeout, conn.close()).await;
            }
        }
    }
}
