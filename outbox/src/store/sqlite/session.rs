//! A relay session on SQLite: no connection of its own, no partitions; rows are leased per batch,
//! and the next batch is leased ahead while a full one is published (`store::leased`).

use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::SqliteConnection;

use super::{claim, housekeeping};
use crate::relay::{Backlog, BatchEnd, Claimed, Outcome, PublishFn, RelayConfig, Session};
use crate::store::leased::{self, Leased, Leases};
use crate::{Error, Result};

/// The pool the relay borrows short transactions from, and the batch it claimed ahead.
#[derive(Debug)]
pub struct SqliteSession {
    leases: SqliteLeases,
    ahead: Option<Leased<()>>,
}

/// The pool and the name the leases carry (one for every claim of the session).
#[derive(Debug)]
struct SqliteLeases {
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
            leases: SqliteLeases {
                pool: pool.clone(),
                owner: format!("{}/{}", config.name, uuid::Uuid::now_v7()),
                lease: config.lease,
            },
            ahead: None,
        })
    }
}

impl SqliteLeases {
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

impl Leases for SqliteLeases {
    type Token = ();

    fn lease(&self) -> Duration {
        self.lease
    }

    async fn claim(&self, limit: usize) -> sqlx::Result<Option<Leased<()>>> {
        let (owner, lease) = (self.owner.as_str(), self.lease);
        let rows = self
            .write(async |conn| claim::claim(conn, owner, lease, limit).await)
            .await?;
        Ok((!rows.is_empty()).then_some(Leased { token: (), rows }))
    }

    async fn renew(&self, _: &(), rows: &[Claimed]) -> sqlx::Result<()> {
        let (owner, lease) = (self.owner.as_str(), self.lease);
        self.write(async |conn| claim::renew(conn, rows, owner, lease).await)
            .await
    }

    async fn release(&self, _: &(), rows: &[Claimed]) -> sqlx::Result<()> {
        let owner = self.owner.as_str();
        self.write(async |conn| claim::release(conn, rows, owner).await)
            .await
    }

    async fn record(
        &self,
        _: &(),
        rows: &[Claimed],
        outcomes: &[Outcome],
        keep_sent: bool,
    ) -> sqlx::Result<u64> {
        let owner = self.owner.as_str();
        self.write(async |conn| claim::record(conn, rows, outcomes, owner, keep_sent).await)
            .await
    }
}

impl Session for SqliteSession {
    /// Leases a batch (or takes the one claimed ahead), publishes it while leasing the next, and
    /// records the outcomes: see `store::leased`.
    async fn batch<F: PublishFn>(
        &mut self,
        limit: usize,
        keep_sent: bool,
        publish: F,
    ) -> sqlx::Result<BatchEnd> {
        leased::batch(&self.leases, &mut self.ahead, limit, keep_sent, publish).await
    }

    /// One store, no partitions: every relay may take any row it can lease.
    async fn rebalance(&mut self) -> sqlx::Result<()> {
        Ok(())
    }

    async fn maintain(&mut self, retention: Option<Duration>) -> sqlx::Result<Backlog> {
        let backlog = housekeeping::backlog(&self.leases.pool).await?;
        if let Some(retention) = retention {
            let purged = housekeeping::purge_sent(&self.leases.pool, retention, 10_000).await?;
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
        housekeeping::next_due(&self.leases.pool).await
    }

    /// Releases the batch claimed ahead, so that its rows need not wait for the lease to end.
    async fn close(mut self) {
        let _ = leased::give_back(&self.leases, &mut self.ahead).await;
    }
}
