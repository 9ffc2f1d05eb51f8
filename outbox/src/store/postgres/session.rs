//! A relay session on Postgres: one dedicated connection holds the key-partition advisory locks
//! and the claim transaction, so that if the relay dies, its ownership and its row locks end
//! together and nothing is lost. How long that connection may go silent before the database ends
//! it (a relay cut off by a network partition) is bounded on both ends: see [`super::liveness`].

use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};

use super::liveness::{Liveness, bounded};
use super::partitions::Partitions;
use super::{claim, housekeeping};
use crate::relay::{Backlog, BatchEnd, Claimed, PublishFn, RelayConfig, Session};
use crate::{Error, Result};

/// The relay's connection and the key partitions it owns.
#[derive(Debug)]
pub struct PgSession {
    conn: PgConnection,
    partitions: Partitions,
    liveness: Liveness,
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
        tracing::info!(
            partitions = partitions.owned().len(),
            "outbox relay started"
        );
        Ok(Self {
            conn,
            partitions,
            liveness,
        })
    }
}

impl Session for PgSession {
    /// Claims, publishes and records in one transaction: the rows stay locked (and deleted, to
    /// everyone else) while they are published, and a relay that dies rolls the claim back.
    async fn batch<F: PublishFn>(
        &mut self,
        limit: usize,
        keep_sent: bool,
        publish: F,
    ) -> sqlx::Result<BatchEnd> {
        let liveness = self.liveness;
        let timeout = liveness.timeout;
        let mut tx = bounded(timeout, self.conn.begin()).await?;
        let claimed = bounded(
            timeout,
            claim::claim(&mut tx, &self.partitions.owned(), limit),
        )
        .await?;
        if claimed.is_empty() {
            bounded(timeout, tx.commit()).await?;
            return Ok(BatchEnd::Empty);
        }
        let claimed: Arc<[Claimed]> = claimed.into();
        let publishing = publish(claimed.clone());
        tokio::pin!(publishing);
        // The transaction is idle while the broker works: ping it, or the server's
        // idle_in_transaction_session_timeout would end a relay that is merely publishing slowly.
        let every = liveness.ping_interval();
        let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let outcomes = loop {
            tokio::select! {
                outcomes = &mut publishing => break outcomes,
                _ = pings.tick() => {
                    // A failed ping means the rows are no longer ours (or soon will not be):
                    // stop publishing them, the relay reconnects and whoever claims them next
                    // publishes them again.
                    bounded(timeout, sqlx::query("SELECT 1").execute(&mut *tx)).await?;
                }
            }
        };
        let Some(outcomes) = outcomes else {
            bounded(timeout, tx.rollback()).await?;
            return Ok(BatchEnd::Abandoned);
        };
        bounded(
            timeout,
            claim::record(&mut tx, &claimed, &outcomes, keep_sent),
        )
        .await?;
        bounded(timeout, tx.commit()).await?;
        Ok(BatchEnd::Done)
    }

    async fn rebalance(&mut self) -> sqlx::Result<()> {
        bounded(
            self.liveness.timeout,
            self.partitions.rebalance(&mut self.conn),
        )
        .await
    }

    async fn maintain(&mut self, retention: Option<Duration>) -> sqlx::Result<Backlog> {
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
        let timeout = self.liveness.timeout;
        if idle {
            bounded(timeout, housekeeping::mark_idle(&mut self.conn)).await
        } else {
            bounded(timeout, housekeeping::unmark_idle(&mut self.conn)).await
        }
    }

    async fn next_due(&mut self) -> sqlx::Result<Option<Duration>> {
        bounded(
            self.liveness.timeout,
            housekeeping::next_due(&mut self.conn),
        )
        .await
    }

    async fn close(mut self) {
        let timeout = self.liveness.timeout;
        let _ = bounded(timeout, housekeeping::unmark_idle(&mut self.conn)).await;
        let _ = bounded(timeout, self.conn.close()).await;
    }
}
