//! MySQL has no `LISTEN`/`NOTIFY`, so wake-ups stay in this process, as on SQLite: a signal per
//! (server, database, group), shared by every inbox and worker of that database, fired when
//! [`Inbox::insert`](crate::Inbox::insert) or [`Inbox::store`](crate::Inbox::store) stores a row.
//! Rows written by other processes are found by polling
//! ([`Inbox::poll_interval`](crate::Inbox::poll_interval)), and so is a row stored in the caller's
//! own transaction: the worker woken at the insert cannot see it before that transaction commits
//! (unlike SQLite, where the transaction's write lock holds the woken worker back until then).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use sqlx::{MySql, MySqlPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::InboxWakeups;

/// The database a pool connects to, as far as its options tell: host (or socket), port, name.
type Database = (String, u16, String);

type Signals = BTreeMap<(Database, String), Weak<Notify>>;

/// Weak, so that the signals of workers that stopped go away.
static SIGNALS: Mutex<Signals> = Mutex::new(BTreeMap::new());

fn key(pool: &MySqlPool, group: &str) -> (Database, String) {
    let options = pool.connect_options();
    let host = match options.get_socket() {
        Some(socket) => socket.display().to_string(),
        None => options.get_host().to_owned(),
    };
    let database = options.get_database().unwrap_or_default().to_owned();
    ((host, options.get_port(), database), group.to_owned())
}

impl InboxWakeups for MySql {
    fn inbox_wake_signal(pool: &MySqlPool, group: &str) -> Arc<Notify> {
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

    fn inbox_stored(pool: &MySqlPool, group: &str) {
        let key = key(pool, group);
        let signal = SIGNALS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .and_then(Weak::upgrade);
        if let Some(signal) = signal {
            signal.notify_waiters();
        }
    }

    fn inbox_listen(
        _: MySqlPool,
        _: String,
        _: Arc<Notify>,
        _: Duration,
        _: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        // Nothing to listen to: `inbox_stored` wakes the signal directly.
        std::future::ready(())
    }
}
