//! Waking idle inbox workers when rows arrive, one file per database.

#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sqlx::{Database, Pool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How idle workers learn of new rows; a part of [`TxDatabase`](crate::TxDatabase).
pub trait InboxWakeups: Database {
    /// The signal the idle loops of a worker of `group` wait on.
    fn inbox_wake_signal(pool: &Pool<Self>, group: &str) -> Arc<Notify>;

    /// Called after [`Inbox::insert`](crate::Inbox::insert) stored a row of `group`.
    fn inbox_stored(pool: &Pool<Self>, group: &str);

    /// Wakes `wake` whenever a row of `group` arrives from outside this process, until `shutdown`.
    fn inbox_listen(
        pool: Pool<Self>,
        group: String,
        wake: Arc<Notify>,
        pause: Duration,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static;
}
