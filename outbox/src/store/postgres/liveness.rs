//! How long a relay's connection may go silent, on both ends.
//!
//! The relay's connection holds its key partitions (session advisory locks) and, while a batch is
//! published, the claimed rows (deleted in the open transaction). A relay cut off from the
//! database by a network partition, or frozen (`SIGSTOP`, a stalled VM), sends nothing more; with
//! the server's defaults its backend then waits idle, holding all of that, until TCP notices,
//! which is never for a peer whose kernel still answers and about two hours of keepalive for one
//! that vanished. The keys of its partitions stall, and its rows with them.
//!
//! So the session sets, for its own connection only (not the pool's, not the listener's):
//!
//! - `idle_in_transaction_session_timeout` = the relay's `session_timeout` (default 30 s). While
//!   it publishes, the relay pings every third of it, so only a relay that stopped talking is ended;
//! - `idle_session_timeout` (PostgreSQL 14+) = `session_timeout` plus the relay's longest wait
//!   between queries (the shortest of `poll_interval`, `rebalance_interval`,
//!   `maintenance_interval`), so a relay that waits as configured is never ended;
//! - `tcp_user_timeout` (PostgreSQL 12+) = `session_timeout`, for a backend blocked sending to a
//!   peer that stopped acknowledging.
//!
//! The same round trip turns `jit` off for the session (skipped without a word on a server older
//! than PostgreSQL 11, which has no JIT). The relay's statements are short and run thousands of
//! times a second; the planner's JIT thresholds are costs, not times, and a claim's cost estimate
//! on a large backlog passes them: one claim was seen spending 331 ms compiling, against a few
//! milliseconds to run.
//!
//! When the server ends the session, its transaction rolls back and its advisory locks go: the
//! other relays take the partitions at their next rebalance and the rows at their next claim. The
//! frozen relay, if it wakes up, finds its connection gone and reconnects; what it had published
//! is published again by whoever claimed it (delivery is at least once).
//!
//! On the relay's side, sqlx 0.8 offers no TCP keepalive for its connections
//! (launchbadge/sqlx#3540), so the session bounds every round trip instead: a database that does
//! not answer within the `session_timeout` counts as a lost connection, and the relay reconnects
//! rather than wait forever on a socket nobody will write to again.

use std::future::Future;
use std::io;
use std::time::Duration;

use sqlx::PgConnection;

use crate::relay::RelayConfig;

/// The settings that bound a silent relay connection, from the relay's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Liveness {
    /// Longest a round trip may take, and longest the server waits inside a transaction.
    pub(crate) timeout: Duration,
    /// Longest the server waits outside a transaction.
    idle: Duration,
}

impl Liveness {
    pub(crate) fn new(config: &RelayConfig) -> Self {
        let longest_wait = config
            .poll_interval
            .min(config.rebalance_interval)
            .min(config.maintenance_interval);
        Self {
            timeout: config.session_timeout,
            idle: config.session_timeout.saturating_add(longest_wait),
        }
    }

    /// How often to ping while a batch is published.
    pub(crate) fn ping_interval(&self) -> Duration {
        self.timeout / 3
    }

    /// Sets the server-side timeouts on `conn`, and `jit = off`; settings an older server lacks
    /// are skipped (the timeouts logged), so the relay still runs there with the bounds that exist.
    pub(crate) async fn apply(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        self.apply_with_idle(conn, Some(self.idle)).await
    }

    /// As [`apply`](Self::apply), for the relay's spare claim connection, which holds nothing
    /// outside a transaction and may rest longer than the relay's longest wait while the relay is
    /// idle: no bound outside a transaction (0 disables `idle_session_timeout`).
    pub(crate) async fn apply_spare(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        self.apply_with_idle(conn, None).await
    }

    async fn apply_with_idle(
        &self,
        conn: &mut PgConnection,
        idle: Option<Duration>,
    ) -> sqlx::Result<()> {
        let bound = |value: Option<Duration>| value.map_or(0, millis).to_string();
        let settings = [
            (
                "idle_in_transaction_session_timeout",
                bound(Some(self.timeout)),
            ),
            ("idle_session_timeout", bound(idle)),
            ("tcp_user_timeout", bound(Some(self.timeout))),
            // Not a bound: see the module docs.
            ("jit", "off".to_owned()),
        ];
        let names: Vec<&str> = settings.iter().map(|(name, _)| *name).collect();
        let values: Vec<&str> = settings.iter().map(|(_, value)| value.as_str()).collect();
        // One round trip. `pg_settings` lists only what this server knows, and the target list
        // is evaluated for the rows that pass the filter only.
        let set: Vec<(String, String)> = bounded(
            self.timeout,
            sqlx::query_as(
                "SELECT u.name, set_config(u.name, u.value, false)
                 FROM unnest($1::text[], $2::text[]) AS u(name, value)
                 WHERE EXISTS (SELECT 1 FROM pg_settings s WHERE s.name = u.name)",
            )
            .bind(&names)
            .bind(&values)
            .fetch_all(&mut *conn),
        )
        .await?;
        for name in names
            .iter()
            .filter(|name| !set.iter().any(|(set, _)| set == *name))
            .filter(|name| **name != "jit")
        {
            tracing::warn!(
                setting = name,
                "this PostgreSQL server lacks {name}: a relay cut off from it may hold its \
                 partitions longer than session_timeout"
            );
        }
        Ok(())
    }
}

/// Milliseconds, the unit of the three settings; at least 1 (0 would disable them).
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, i32::MAX as u64)
}

/// Runs one round trip, failing it as a lost connection if the database does not answer within
/// `timeout`. The caller then drops the connection: a reply may still be on its way.
pub(crate) async fn bounded<T>(
    timeout: Duration,
    round_trip: impl Future<Output = sqlx::Result<T>>,
) -> sqlx::Result<T> {
    match tokio::time::timeout(timeout, round_trip).await {
        Ok(result) => result,
        Err(_) => Err(sqlx::Error::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the database did not answer within the relay's session_timeout ({timeout:?}); \
                 treating the connection as lost"
            ),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_bound_leaves_room_for_the_relays_longest_wait() {
        let config = RelayConfig {
            session_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_secs(5),
            rebalance_interval: Duration::from_secs(7),
            maintenance_interval: Duration::from_secs(15),
            ..RelayConfig::default()
        };
        let liveness = Liveness::new(&config);
        assert_eq!(liveness.timeout, Duration::from_secs(30));
        assert_eq!(liveness.idle, Duration::from_secs(35));
        assert_eq!(liveness.ping_interval(), Duration::from_secs(10));
    }

    #[test]
    fn settings_are_whole_milliseconds_never_zero() {
        assert_eq!(millis(Duration::from_micros(10)), 1);
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(Duration::MAX), i32::MAX as u64);
    }

    /// `#[sqlx::test]` needs `DATABASE_URL`.
    #[sqlx::test]
    async fn relay_sessions_run_without_jit(pool: sqlx::PgPool) {
        let liveness = Liveness::new(&RelayConfig::default());
        for spare in [false, true] {
            let mut conn = pool.acquire().await.unwrap();
            sqlx::query("SET jit = on")
                .execute(&mut *conn)
                .await
                .unwrap();
            if spare {
                liveness.apply_spare(&mut conn).await.unwrap();
            } else {
                liveness.apply(&mut conn).await.unwrap();
            }
            let jit: String = sqlx::query_scalar("SHOW jit")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            assert_eq!(jit, "off", "spare connection: {spare}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_round_trip_without_an_answer_is_a_lost_connection() {
        let error = bounded(
            Duration::from_secs(1),
            std::future::pending::<sqlx::Result<()>>(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&error, sqlx::Error::Io(io) if io.kind() == io::ErrorKind::TimedOut),
            "{error}"
        );
        assert!(error.to_string().contains("session_timeout"), "{error}");
    }
}
