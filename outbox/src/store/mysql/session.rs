//! A relay session on MySQL: no connection of its own, no partitions; rows are leased per batch in
//! short READ COMMITTED transactions, each retried on deadlock and lock-wait timeout.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{MySqlConnection, MySqlPool};

use super::{claim, housekeeping, retry};
use crate::relay::{Backlog, BatchEnd, Claimed, PublishFn, RelayConfig, Session};
use crate::{Error, Result};

/// How many sent rows one maintenance round purges at most.
const PURGE_PER_ROUND: usize = 10_000;

/// The pool the relay borrows short transactions from, and the name its claim tokens start with.
#[derive(Debug)]
pub struct MySqlSession {
    pool: MySqlPool,
    /// Unique per session, so a restarted relay never mistakes a dead one's lease for its own.
    owner: String,
    lease: Duration,
    claims: u64,
}

impl MySqlSession {
    pub(super) async fn open(pool: &MySqlPool, config: &RelayConfig) -> Result<Self> {
        if !housekeeping::is_migrated(pool).await? {
            return Err(Error::NotMigrated);
        }
        tracing::info!("outbox relay started");
        Ok(Self {
            pool: pool.clone(),
            owner: format!("{}/{}", config.name, uuid::Uuid::now_v7()),
            lease: config.lease,
            claims: 0,
        })
    }
}

/// Starts a READ COMMITTED transaction in one round trip. `SET TRANSACTION` without `SESSION`
/// applies to the next transaction only, so the connection goes back to the pool with the
/// application's isolation level.
const BEGIN_READ_COMMITTED: &str =
    "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION";

/// Runs `$work` (an expression using `$tx: &mut MySqlConnection`) in a READ COMMITTED
/// transaction on a connection of `$pool`, again after a deadlock or lock-wait timeout. Every
/// variable `$work` uses must be `Copy` (references), as each attempt moves them into a fresh
/// future.
macro_rules! read_committed {
    ($pool:expr, $what:literal, |$tx:ident| $work:expr) => {{
        let pool: &MySqlPool = $pool;
        retry::retrying($what, || async move {
            let mut transaction = pool.begin_with(BEGIN_READ_COMMITTED).await?;
            let $tx: &mut MySqlConnection = &mut transaction;
            let value = $work.await?;
            transaction.commit().await?;
            Ok(value)
        })
        .await
    }};
}

impl Session for MySqlSession {
    async fn batch<F: PublishFn>(
        &mut self,
        limit: usize,
        keep_sent: bool,
        publish: F,
    ) -> sqlx::Result<BatchEnd> {
        self.claims += 1;
        let token = format!("{}/{}", self.owner, self.claims);
        let (token, lease) = (token.as_str(), self.lease);
        let leased = read_committed!(&self.pool, "claim", |tx| claim::lease(
            tx, token, lease, limit
        ))?;
        if leased == 0 {
            return Ok(BatchEnd::Empty);
        }
        let claimed = claim::read(&mut *self.pool.acquire().await?, token).await?;
        if claimed.is_empty() {
            // Taken over already (a lease shorter than the round trip): nothing of ours to publish.
            return Ok(BatchEnd::Done);
        }
        let claimed: Arc<[Claimed]> = claimed.into();
        let publishing = publish(claimed.clone());
        tokio::pin!(publishing);
        let renew_every = lease / 3;
        let mut renewals =
            tokio::time::interval_at(tokio::time::Instant::now() + renew_every, renew_every);
        let outcomes = loop {
            tokio::select! {
                outcomes = &mut publishing => break outcomes,
                _ = renewals.tick() => {
                    let rows = &*claimed;
                    let renewed = read_committed!(&self.pool, "renew", |tx| claim::renew(tx, rows, token, lease));
                    if let Err(error) = renewed {
                        // Only a risk of publishing twice if the lease runs out; keep publishing.
                        tracing::warn!(%error, "could not renew the lease of the batch in hand");
                    }
                }
            }
        };
        let Some(outcomes) = outcomes else {
            let rows = &*claimed;
            read_committed!(&self.pool, "release", |tx| claim::release(tx, rows, token))?;
            return Ok(BatchEnd::Abandoned);
        };
        let (rows, outcomes) = (&*claimed, outcomes.as_slice());
        let taken_over = read_committed!(&self.pool, "record", |tx| claim::record(
            tx, rows, outcomes, token, keep_sent
        ))?;
        if taken_over > 0 {
            tracing::warn!(
                taken_over,
                lease = ?lease,
                "the lease of some rows ran out while they were published and another relay \
                 took them: their outcome here is dropped, the other relay records its own"
            );
        }
        Ok(BatchEnd::Done)
    }

    /// No partitions: every relay may take any row it can lease.
    async fn rebalance(&mut self) -> sqlx::Result<()> {
        Ok(())
    }

    async fn maintain(&mut self, retention: Option<Duration>) -> sqlx::Result<Backlog> {
        let backlog = housekeeping::backlog(&self.pool).await?;
        if let Some(retention) = retention {
            let pool = &self.pool;
            let purged = retry::retrying("purge", || {
                housekeeping::purge_sent(pool, retention, PURGE_PER_ROUND)
            })
            .await?;
            if purged > 0 {
                tracing::debug!(purged, "purged sent outbox rows past their retention");
            }
        }
        Ok(backlog)
    }

    /// Wake-ups come from the in-process signal whether or not anyone waits for them.
    async fn set_idle(&mut self, _idle: bool) -> sqlx::Result<()> {
        Ok(())
    }

    async fn next_due(&mut self) -> sqlx::Result<Option<Duration>> {
        housekeeping::next_due(&self.pool).await
    }

    async fn close(self) {}
}
