//! Wake-ups from `LISTEN outbox_messages`, through the LISTEN loop shared with the inbox
//! (`courier_core::listen`): it wakes the relay on every notification and after every reconnect.

use std::sync::Arc;

use courier_core::listen::Listener;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The channel the insert trigger notifies.
pub(crate) const CHANNEL: &str = "outbox_messages";

/// Spawns the listener task; `wake` is notified on every notification and after every reconnect
/// (notifications sent while the connection was down are lost, so the relay must look).
pub(crate) fn spawn(
    pool: PgPool,
    name: String,
    wake: Arc<Notify>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    Listener::new(&pool, CHANNEL)
        .application_name(&format!("{name}-listener"))
        .spawn(move || wake.notify_one(), stop)
}
