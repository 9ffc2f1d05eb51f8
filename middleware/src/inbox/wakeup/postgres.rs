//! Postgres wakes idle workers across processes: the insert trigger sends `NOTIFY courier_inbox`
//! (payload: the group) on commit, and each worker `LISTEN`s.

use std::sync::Arc;
use std::time::Duration;

use courier_core::listen::Listener;
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

    /// Wakes the idle loops whenever a row of `group` is inserted, through the LISTEN loop
    /// shared with the outbox relay (`courier_core::listen`): it also wakes them after every
    /// reconnect, because rows committed while the connection was down notified nobody.
    async fn inbox_listen(
        pool: PgPool,
        group: String,
        wake: Arc<Notify>,
        pause: Duration,
        shutdown: CancellationToken,
    ) {
        Listener::new(&pool, "courier_inbox")
            .application_name(&format!("courier-inbox-{group}-listener"))
            .payload(group)
            .max_pause(pause)
            .run(move || wake.notify_waiters(), shutdown)
            .await;
    }
}
