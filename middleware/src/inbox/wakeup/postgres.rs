//! Postgres wakes idle workers across processes: the insert trigger sends `NOTIFY courier_inbox`
//! (payload: the group) on commit, and each worker `LISTEN`s.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::{PgPool, Postgres};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::InboxWakeups;

impl InboxWakeups for Postgres {
    fn inbox_wake_signal(_: &PgPool, _: &str) -> Arc<Notify> {
        Arc::new(Notify::new())
    }

    fn inbox_stored(_: &PgPool, _: &str) {
        // The trigger notifies, on commit.
    }

    /// Wakes the idle loops whenever a row of `group` is inserted; reconnects after failures.
    async fn inbox_listen(
        pool: PgPool,
        group: String,
        wake: Arc<Notify>,
        pause: Duration,
        shutdown: CancellationToken,
    ) {
        while !shutdown.is_cancelled() {
            let mut listener = match PgListener::connect_with(&pool).await {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(%error, "inbox worker: cannot listen for new rows; polling");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(pause) => continue,
                    }
                }
            };
            if let Err(error) = listener.listen("courier_inbox").await {
                tracing::warn!(%error, "inbox worker: LISTEN failed; polling");
            }
            // Rows may have arrived before the LISTEN took effect.
            wake.notify_waiters();
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    received = listener.recv() => match received {
                        Ok(notification) if notification.payload() == group => {
                            wake.notify_waiters();
                        }
                        Ok(_) => {}
                        Err(error) => {
                            tracing::warn!(%error, "inbox worker: lost the notification connection");
                            break;
                        }
                    },
                }
            }
        }
    }
}
