//! A relay session on Postgres: one dedicated connection holds the key-partition advisory locks
//! and the claim transaction, so that if the relay dies, its ownership and its row locks end
//! together and nothing is lost. How long that connection may go silent before the database ends
//! it (a relay cut off by a network partition) is bounded on both ends: see [`super::liveness`].
//!
//! **Claiming ahead.** A second connection claims the next batch while the current one is
//! published, recorded and committed, so a busy relay does not wait for a claim between batches.
//! The batch claimed ahead is the next rows in sequence order (`SKIP LOCKED` passes over the batch
//! in hand), so it may hold later messages of the keys in hand. It is published only once the
//! batch in hand was published *whole* and committed: if any message of the batch in hand failed
//! or was held, the batch claimed ahead is given back (rolled back) and the next claim sees the
//! failed message backing off, so no later message of its key overtakes it. Its rows are deleted
//! only in its own open transaction, committed after the broker acknowledged them when its turn
//! comes, exactly as a batch claimed in turn. Behind a full batch (more work is likely) it is
//! claimed at once; behind a smaller one, as soon as that was published whole, while it is
//! recorded and committed (rows committed during the publish then wait for neither that commit
//! nor a claim after it). It is given back before a rebalance (when it releases partitions), before
//! the relay's first connection runs anything else while it holds it, or when the next call wants
//! fewer rows. A relay that dies holding it loses nothing: the transaction rolls back with the
//! connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Notify;
use tracing::Instrument;

use super::liveness::{Liveness, bounded};
use super::partitions::Partitions;
use super::{claim, housekeeping};
use crate::relay::{Backlog, BatchEnd, Claimed, Outcome, PublishFn, RelayConfig, Session};
use crate::{Error, Result};

/// The relay's connections and the key partitions it owns.
#[derive(Debug)]
pub struct PgSession {
    /// Holds the advisory locks and the idle mark; runs the housekeeping; claims in turn.
    conn: PgConnection,
    /// Claims ahead, alternately with `conn`; holds nothing between transactions.
    spare: PgConnection,
    partitions: Partitions,
    liveness: Liveness,
    /// The batch claimed ahead, in an open transaction.
    ahead: Option<Ahead>,
    /// Where the claims on either connection start reading the table.
    cursor: claim::Cursor,
}

/// A batch claimed ahead: its rows, and whether its transaction is open on `spare`.
#[derive(Debug)]
struct Ahead {
    on_spare: bool,
    claimed: Vec<Claimed>,
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
            conn,
            spare,
            partitions,
            liveness,
            ahead: None,
            cursor: claim::Cursor::default(),
        })
    }

    /// Rolls back the batch claimed ahead, if any: its rows go back to the outbox untouched.
    async fn give_back_ahead(&mut self) -> sqlx::Result<()> {
        if let Some(ahead) = self.ahead.take() {
            let conn = if ahead.on_spare {
                &mut self.spare
            } else {
                &mut self.conn
            };
            bounded(self.liveness.timeout, end_transaction(conn, "ROLLBACK")).await?;
        }
        Ok(())
    }

    /// Gives back the batch claimed ahead if its transaction is open on `conn`, before `conn`
    /// runs anything else: a statement there would join that transaction (and a commit would
    /// delete its rows before they were published).
    async fn free_conn(&mut self) -> sqlx::Result<()> {
        if self.ahead.as_ref().is_some_and(|a| !a.on_spare) {
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

impl Session for PgSession {
    /// Claims, publishes and records in one transaction: the rows stay locked (and deleted, to
    /// everyone else) while they are published, and a relay that dies rolls the claim back. The
    /// next batch is claimed ahead meanwhile on the other connection (see the module docs).
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
        let (on_spare, claimed) = match self.ahead.take() {
            Some(ahead) => (ahead.on_spare, ahead.claimed),
            None => {
                let claiming =
                    begin_and_claim(&mut self.conn, &mut self.cursor, &partitions, limit);
                let claimed = bounded(timeout, claiming).await?;
                if claimed.is_empty() {
                    bounded(timeout, end_transaction(&mut self.conn, "COMMIT")).await?;
                    return Ok(BatchEnd::Empty);
                }
                (false, claimed)
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
        let (this, other) = if on_spare {
            (&mut self.spare, &mut self.conn)
        } else {
            (&mut self.conn, &mut self.spare)
        };
        let every = liveness.ping_interval();
        let cursor = &mut self.cursor;

        // Claims the next batch on `other`, then keeps its transaction alive until dropped.
        let mut ahead_result: Option<sqlx::Result<Vec<Claimed>>> = None;
        let ahead_started = AtomicBool::new(false);
        let ahead_claimed = AtomicBool::new(false);
        let ahead_ready = Notify::new();
        let published_whole = Notify::new();
        let end = {
            let ahead = async {
                if look_ahead {
                    if !full {
                        published_whole.notified().await;
                    }
                    ahead_started.store(true, Ordering::Release);
                    let claiming = begin_and_claim(other, cursor, &partitions, limit);
                    let result = bounded(timeout, claiming).await;
                    let claimed_some = result.as_ref().is_ok_and(|rows| !rows.is_empty());
                    ahead_result = Some(result);
                    ahead_claimed.store(true, Ordering::Release);
                    ahead_ready.notify_one();
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
                std::future::pending::<()>().await
            };
            let this_batch = async {
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
                // Only after the broker acknowledged them are the rows' deletions committed.
                bounded(
                    timeout,
                    claim::record(&mut *this, &claimed, &outcomes, keep_sent),
                )
                .await?;
                bounded(timeout, end_transaction(this, "COMMIT")).await?;
                Ok::<_, sqlx::Error>((BatchEnd::Done, whole))
            };
            tokio::pin!(ahead);
            tokio::pin!(this_batch);
            let end = tokio::select! {
                end = &mut this_batch => end,
                () = &mut ahead => unreachable!("the claim ahead never ends on its own"),
            };
            // A claim started on `other` is awaited, not dropped half-way.
            if ahead_started.load(Ordering::Acquire) && !ahead_claimed.load(Ordering::Acquire) {
                tokio::select! {
                    () = ahead_ready.notified() => {}
                    () = &mut ahead => unreachable!("the claim ahead never ends on its own"),
                }
            }
            end
        };
        // An error on either connection ends the session; dropping it rolls both back.
        let (end, whole) = end?;
        match ahead_result.transpose()? {
            Some(next) if !next.is_empty() && end == BatchEnd::Done && whole => {
                self.ahead = Some(Ahead {
                    on_spare: !on_spare,
                    claimed: next,
                });
            }
            Some(_) => {
                // Nothing claimed, or not the time to carry it over: give it back.
                let other = if on_spare {
                    &mut self.conn
                } else {
                    &mut self.spare
                };
                bounded(timeout, end_transaction(other, "ROLLBACK")).await?;
            }
            None => {}
        }
        Ok(end)
    }

    async fn rebalance(&mut self) -> sqlx::Result<()> {
        self.free_conn().await?;
        let timeout = self.liveness.timeout;
        let target = bounded(timeout, Partitions::fair_share(&mut self.conn)).await?;
        // A partition released goes to another relay: it must not find rows of it held here, or
        // it would publish a key's later messages before the batch claimed ahead. Taking more
        // partitions changes nothing for that batch.
        if self.partitions.would_release(target) {
            self.give_back_ahead().await?;
        }
        bounded(
            timeout,
            self.partitions.rebalance_to(&mut self.conn, target),
        )
        .await
    }

    async fn maintain(&mut self, retention: Option<Duration>) -> sqlx::Result<Backlog> {
        self.free_conn().await?;
        let timeout = self.liveness.timeout;
        let backlog = bounded(timeout, housekeeping::backlog(&mut self.conn)).await?;
        bounded(timeout, housekeeping::forget_dead_relays(&mut self.conn)).await?;
        if let Some(retention) = retention {
            let purged = bounded(
                timeout,
                housekeeping::purge_sent(&mut self.conn, retention, 10_000),
            )
            .await?;
            if purged > 0 {
                tracing::debug!(purged, "purged sent outbox rows past their retention");
            }
        }
        Ok(backlog)
    }

    async fn set_idle(&mut self, idle: bool) -> sqlx::Result<()> {
        self.free_conn().await?;
        let timeout = self.liveness.timeout;
        if idle {
            bounded(timeout, housekeeping::mark_idle(&mut self.conn)).await
        } else {
            bounded(timeout, housekeeping::unmark_idle(&mut self.conn)).await
        }
    }

    async fn next_due(&mut self) -> sqlx::Result<Option<Duration>> {
        self.free_conn().await?;
        bounded(
            self.liveness.timeout,
            housekeeping::next_due(&mut self.conn),
        )
        .await
    }

    async fn close(mut self) {
        let _ = self.give_back_ahead().await;
        let timeout = self.liveness.timeout;
        let _ = bounded(timeout, housekeeping::unmark_idle(&mut self.conn)).await;
        let _ = bounded(timeout, self.conn.close()).await;
        let _ = bounded(timeout, self.spare.close()).await;
    }
}
