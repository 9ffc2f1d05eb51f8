//! A relay session on MySQL: no connection of its own, no partitions; rows are leased per batch in
//! short READ COMMITTED transactions, each retried on deadlock and lock-wait timeout; the next
//! batch is leased ahead while a full one is published (`store::leased`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::{MySqlConnection, MySqlPool};

use super::{claim, housekeeping, retry};
use crate::relay::{Backlog, BatchEnd, Claimed, Outcome, PublishFn, RelayConfig, Session};
use crate::store::leased::{self, Leased, Leases};
use crate::{Error, Result};

/// How many sent rows one maintenance round purges at most.
const PURGE_PER_ROUND: usize = 10_000;

/// The pool the relay borrows short transactions from, and the batch it claimed ahead.
#[derive(Debug)]
pub struct MySqlSession {
    leases: MySqlLeases,
    ahead: Option<Leased<String>>,
}

/// The pool and the name each claim's token starts with.
#[derive(Debug)]
struct MySqlLeases {
    pool: MySqlPool,
    /// Unique per session, so a restarted relay never mistakes a dead one's lease for its own.
    owner: String,
    lease: Duration,
    claims: AtomicU64,
}

impl MySqlSession {
    pub(super) async fn open(pool: &MySqlPool, config: &RelayConfig) -> Result<Self> {
        if !housekeeping::is_migrated(pool).await? {
            return Err(Error::NotMigrated);
        }
        tracing::info!("outbox relay started");
        Ok(Self {
            leases: MySqlLeases {
                pool: pool.clone(),
                owner: format!("{}/{}", config.name, uuid::Uuid::now_v7()),
                lease: config.lease,
                claims: AtomicU64::new(0),
            },
            ahead: None,
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

impl Leases for MySqlLeases {
    type Token = String;

    fn lease(&self) -> Duration {
        self.lease
    }

    async fn claim(&self, limit: usize) -> sqlx::Result<Option<Leased<String>>> {
        let claims = self.claims.fetch_add(1, Ordering::Relaxed) + 1;
        let token = format!("{}/{claims}", self.owner);
        let (token_ref, lease) = (token.as_str(), self.lease);
        let leased = read_committed!(&self.pool, "claim", |tx| claim::lease(
            tx, token_ref, lease, limit
        ))?;
        if leased == 0 {
            return Ok(None);
        }
        // Empty if taken over already (a lease shorter than the round trip).
        let rows = claim::read(&mut *self.pool.acquire().await?, token_ref).await?;
        Ok(Some(Leased { token, rows }))
    }

    async fn renew(&self, token: &String, rows: &[Claimed]) -> sqlx::Result<()> {
        let (token, lease) = (token.as_str(), self.lease);
        read_committed!(&self.pool, "renew", |tx| claim::renew(
            tx, rows, token, lease
        ))
    }

    async fn release(&self, token: &String, rows: &[Claimed]) -> sqlx::Result<()> {
        let token = token.as_str();
        read_committed!(&self.pool, "release", |tx| claim::release(tx, rows, token))
    }

    async fn record(
        &self,
        token: &String,
        rows: &[Claimed],
        outcomes: &[Outcome],
        keep_sent: bool,
    ) -> sqlx::Result<u64> {
        let token = token.as_str();
        read_committed!(&self.pool, "record", |tx| claim::record(
            tx, rows, outcomes, token, keep_sent
        ))
    }
}

impl Session for MySqlSession {
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

    /// No partitions: every relay may take any row it can lease.
    async fn rebalance(&mut self) -> sqlx::Result<()> {
        Ok(())
    }

    async fn maintain(&mut self, retention: Option<Duration>) -> sqlx::Result<Backlog> {
        let backlog = housekeeping::backlog(&self.leases.pool).await?;
        if let Some(retention) = retention {
            let pool = &self.leases.pool;
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
        housekeeping::next_due(&self.leases.pool).await
    }

    /// Releases the batch claimed ahead, so that its rows need not wait for the lease to end.
    async fn close(mut self) {
        let _ = leased::give_back(&self.leases, &mut self.ahead).await;
    }
}
