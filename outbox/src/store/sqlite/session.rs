//! A relay session on SQLite: no connection of its own, no partitions; rows are leased per batch.

use std::sync::Arc;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::SqliteConnection;

use super::{claim, housekeeping};
use crate::relay::{Backlog, BatchEnd, Claimed, PublishFn, RelayConfig, Session};
use crate::{Error, Result};

/// The pool the relay borrows short transactions from, and the name its leases carry.
#[derive(Debug)]
pub struct SqliteSession {
    pool: SqlitePool,
    /// Unique per session, so a restarted relay never mistakes a dead one's lease for its own.
    owner: String,
    lease: Duration,
}

impl SqliteSession {
    pub(super) async fn open(pool: &SqlitePool, config: &RelayConfig) -> Result<Self> {
        if !housekeeping::is_migrated(pool).await? {
            return Err(Error::NotMigrated);
        }
        tracing::info!("outbox relay started");
        Ok(Self {
            pool: pool.clone(),
            owner: format!("{}/{}", config.name, uuid::Uuid::now_v7()),
            lease: config.lease,
        })
    }

    /// A write transaction that takes the lock at `BEGIN`: a deferred one that reads first could
    /// fail with "database is locked" when it tries to write after another writer.
    async fn write<T>(
        &self,
        work: impl AsyncFnOnce(&mut SqliteConnection) -> sqlx::Result<T>,
    ) -> sqlx::Result<T> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let value = work(&mut tx).await?;
        tx.commit().await?;
        Ok(value)
    }
}

impl Session for SqliteSession {
    async fn batch<F: PublishFn>(
        &mut self,
        limit: usize,
        keep_sent: bool,
        publish: F,
    ) -> sqlx::Result<BatchEnd> {
        let (owner, lease) = (self.owner.as_str(), self.lease);
        let claimed = self
            .write(async |conn| claim::claim(conn, owner, lease, limit).await)
            .await?;
        if claimed.is_empty() {
            return Ok(BatchEnd::Empty);
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
                    let renewed = self.write(async |conn| claim::renew(conn, &claimed, owner, lease).await).await;
                    if let Err(error) = renewed {
                        // Only a risk of publishing twice if the lease runs out; keep publishing.
                        tracing::warn!(%error, "could not renew the lease of the batch in hand");
                    }
                }
            }
        };
        let Some(outcomes) = outcomes else {
            self.write(async |conn| claim::release(conn, &claimed, owner).await)
                .await?;
            return Ok(BatchEnd::Abandoned);
        };
        let taken_over = self
            .write(async |conn| claim::record(conn, &claimed, &outcomes, owner, keep_sent).await)
            .await?;
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

    /// One store, no partitions: every relay may take any row it can lease.
    async fn rebalance(&mut self) -> sqlx::Result<()> {
        Ok(())
    }

    async fn maintain(&mut self, retention: Option<Duration>) -> sqlx::Result<Backlog> {
        let backlog = housekeeping::backlog(&self.pool).await?;
        if let Some(retention) = retention {
            let purged = housekeeping::purge_sent(&self.pool, retention, 10_000).await?;
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
