//! A relay session on Postgres: one dedicated connection holds the key-partition advisory locks
//! and the claim transaction, so that if the relay dies, its ownership and its row locks end
//! together and nothing is lost.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};

use super::partitions::Partitions;
use super::{claim, housekeeping};
use crate::relay::{Backlog, BatchEnd, Claimed, PublishFn, RelayConfig, Session};
use crate::{Error, Result};

/// The relay's connection and the key partitions it owns.
#[derive(Debug)]
pub struct PgSession {
    conn: PgConnection,
    partitions: Partitions,
}

impl PgSession {
    /// Connects as the relay named in `config`, checks the tables and joins the partition sharing.
    pub(super) async fn open(pool: &PgPool, config: &RelayConfig) -> Result<Self> {
        let options = pool
            .connect_options()
            .as_ref()
            .clone()
            .application_name(&config.name);
        let mut conn = PgConnection::connect_with(&options).await?;
        if !housekeeping::is_migrated(&mut conn).await? {
            return Err(Error::NotMigrated);
        }
        // A reused backend pid may carry a crashed relay's mark.
        housekeeping::unmark_idle(&mut conn).await?;
        housekeeping::forget_dead_relays(&mut conn).await?;
        let mut partitions = Partitions::join(&mut conn).await?;
        partitions.rebalance(&mut conn).await?;
        tracing::info!(
            partitions = partitions.owned().len(),
            "outbox relay started"
        );
        Ok(Self { conn, partitions })
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
        let mut tx = self.conn.begin().await?;
        let claimed = claim::claim(&mut tx, &self.partitions.owned(), limit).await?;
        if claimed.is_empty() {
            tx.commit().await?;
            return Ok(BatchEnd::Empty);
        }
        let claimed: Arc<[Claimed]> = claimed.into();
        let Some(outcomes) = publish(claimed.clone()).await else {
            tx.rollback().await?;
            return Ok(BatchEnd::Abandoned);
        };
        claim::record(&mut tx, &claimed, &outcomes, keep_sent).await?;
        tx.commit().await?;
        Ok(BatchEnd::Done)
    }

    async fn rebalance(&mut self) -> sqlx::Result<()> {
        self.partitions.rebalance(&mut self.conn).await
    }

    async fn maintain(&mut self, retention: Option<Duration>) -> sqlx::Result<Backlog> {
        let backlog = housekeeping::backlog(&mut self.conn).await?;
        housekeeping::forget_dead_relays(&mut self.conn).await?;
        if let Some(retention) = retention {
            let purged = housekeeping::purge_sent(&mut self.conn, retention, 10_000).await?;
            if purged > 0 {
                tracing::debug!(purged, "purged sent outbox rows past their retention");
            }
        }
        Ok(backlog)
    }

    async fn set_idle(&mut self, idle: bool) -> sqlx::Result<()> {
        if idle {
            housekeeping::mark_idle(&mut self.conn).await
        } else {
            housekeeping::unmark_idle(&mut self.conn).await
        }
    }

    async fn next_due(&mut self) -> sqlx::Result<Option<Duration>> {
        housekeeping::next_due(&mut self.conn).await
    }

    async fn close(mut self) {
        let _ = housekeeping::unmark_idle(&mut self.conn).await;
        let _ = self.conn.close().await;
    }
}
