//! Key partitions owned through session advisory locks, rebalanced as relays come and go.
//!
//! Every keyed message falls into one of [`PARTITIONS`] partitions (a hash of its key, computed by
//! the table). A relay publishes keyed messages only from partitions it holds an advisory lock on,
//! so a key is in exactly one relay's hands and its messages go out in order. The locks live on the
//! relay's claiming connection: if the relay dies, its locks and its row locks vanish together, and
//! the survivors take over the partitions at their next rebalance.

use std::collections::BTreeSet;

use sqlx::PgConnection;

/// Number of key partitions; fixed by the `partition` column of `outbox.messages`.
pub(crate) const PARTITIONS: i16 = 64;

/// First key of every advisory lock the relay takes ("courier" in a 31-bit integer).
const LOCK_SPACE: i32 = 0x0c0a_7001;
/// Second key of the shared lock every relay holds to be counted as a member.
const MEMBERSHIP: i32 = 1 << 20;

/// The partitions this relay owns.
#[derive(Debug, Default)]
pub(crate) struct Partitions {
    owned: BTreeSet<i16>,
}

impl Partitions {
    /// Registers this connection as a relay member (a shared advisory lock others can count).
    pub(crate) async fn join(conn: &mut PgConnection) -> sqlx::Result<Self> {
        sqlx::query("SELECT pg_advisory_lock_shared($1, $2)")
            .bind(LOCK_SPACE)
            .bind(MEMBERSHIP)
            .execute(conn)
            .await?;
        Ok(Self::default())
    }

    /// The owned partitions, for the claim query.
    pub(crate) fn owned(&self) -> Vec<i16> {
        self.owned.iter().copied().collect()
    }

    /// Takes or releases partitions so this relay holds its fair share, `ceil(64 / members)`.
    ///
    /// Must run between batches: releasing a partition while its rows are locked in an open
    /// transaction would let another relay overtake them.
    pub(crate) async fn rebalance(&mut self, conn: &mut PgConnection) -> sqlx::Result<()> {
        let target = Self::fair_share(conn).await?;
        self.rebalance_to(conn, target).await
    }

    /// This relay's fair share of the partitions, `ceil(64 / members)`.
    pub(crate) async fn fair_share(conn: &mut PgConnection) -> sqlx::Result<usize> {
        let members: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks
             WHERE locktype = 'advisory' AND granted AND objsubid = 2
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND classid = $1::int8::oid AND objid = $2::int8::oid",
        )
        .bind(i64::from(LOCK_SPACE))
        .bind(i64::from(MEMBERSHIP))
        .fetch_one(&mut *conn)
        .await?;
        let members = members.max(1) as usize;
        Ok((PARTITIONS as usize).div_ceil(members))
    }

    /// Whether [`rebalance_to`](Self::rebalance_to) `target` would release partitions.
    pub(crate) fn would_release(&self, target: usize) -> bool {
        self.owned.len() > target
    }

    /// Releases partitions beyond `target`, then takes free ones up to it; the same rule as
    /// [`rebalance`](Self::rebalance) about open transactions holds for releases.
    pub(crate) async fn rebalance_to(
        &mut self,
        conn: &mut PgConnection,
        target: usize,
    ) -> sqlx::Result<()> {
        while self.owned.len() > target {
            let Some(partition) = self.owned.pop_last() else {
                break;
            };
            sqlx::query("SELECT pg_advisory_unlock($1, $2)")
                .bind(LOCK_SPACE)
                .bind(i32::from(partition))
                .execute(&mut *conn)
                .await?;
        }
        // Start at a different place per connection so that joining relays do not all contend
        // for partition 0 first.
        let start = (std::process::id() as i16).rem_euclid(PARTITIONS);
        for step in 0..PARTITIONS {
            if self.owned.len() >= target {
                break;
            }
            let partition = (start + step) % PARTITIONS;
            if self.owned.contains(&partition) {
                continue;
            }
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                .bind(LOCK_SPACE)
                .bind(i32::from(partition))
                .fetch_one(&mut *conn)
                .await?;
            if locked {
                self.owned.insert(partition);
            }
        }
        tracing::debug!(
            target,
            owned = self.owned.len(),
            "outbox partitions rebalanced"
        );
        Ok(())
    }
}
