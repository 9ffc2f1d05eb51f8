//! SQLite cannot notify other connections, so wake-ups stay in this process: a signal per
//! (database file, group), shared by every inbox and worker of that file, fired when
//! [`Inbox::insert`](crate::Inbox::insert) stores a row. Rows written by other processes are found
//! by polling.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use sqlx::{Sqlite, SqlitePool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::InboxWakeups;

type Signals = BTreeMap<(PathBuf, String), Weak<Notify>>;

/// Weak, so that the signals of workers that stopped go away.
static SIGNALS: Mutex<Signals> = Mutex::new(BTreeMap::new());

fn key(pool: &SqlitePool, group: &str) -> (PathBuf, String) {
    let file = pool.connect_options().get_filename().to_path_buf();
    (file, group.to_owned())
}

impl InboxWakeups for Sqlite {
    fn inbox_wake_signal(pool: &SqlitePool, group: &str) -> Arc<Notify> {
        let key = key(pool, group);
        let mut signals = SIGNALS.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(signal) = signals.get(&key).and_then(Weak::upgrade) {
            return signal;
        }
        signals.retain(|_, signal| signal.strong_count() > 0);
        let signal = Arc::new(Notify::new());
        signals.insert(key, Arc::downgrade(&signal));
        signal
    }

    fn inbox_stored(pool: &SqlitePool, group: &str) {
        let key = key(pool, group);
        let signal = SIGNALS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .and_then(Weak::upgrade);
        // A row stored in the caller's own transaction is not visible yet, but that transaction
        // holds the write lock: the woken worker's claim waits for it to end.
        if let Some(signal) = signal {
            signal.notify_waiters();
        }
    }

    fn inbox_listen(
        _: SqlitePool,
        _: String,
        _: Arc<Notify>,
        _: Duration,
        _: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        // Nothing to listen to: `inbox_stored` wakes the signal directly.
        std::future::ready(())
    }
}
