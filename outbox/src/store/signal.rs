//! In-process wake-ups: every insert through the writer bumps a process-wide counter of its
//! store, and each relay's wake-up task waits for it. SQLite and MySQL have no `LISTEN/NOTIFY`; on
//! Postgres the counter is the fast path for relays that share a process with their writers, with
//! no cost in the database (the insert trigger stays silent while relays are busy).
//!
//! The writer signals at insert time, before the caller's transaction commits, so the relay may
//! look too early; after a wake-up it looks again a few times within the next milliseconds, then
//! keeps polling for its `linger` period. Transactions that stay open longer, and inserts made by
//! other processes, are caught by polling (and on Postgres by NOTIFY while the relay is idle).

use std::sync::{Arc, LazyLock};

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One store's insert counter; each store has its own, so that one store's inserts do not wake
/// the other's relays.
pub(crate) struct Signal(LazyLock<watch::Sender<u64>>);

fn counter() -> watch::Sender<u64> {
    watch::channel(0).0
}

impl Signal {
    /// A counter for a `static`.
    pub(crate) const fn new() -> Self {
        Self(LazyLock::new(counter))
    }

    /// Tells this process's relays of the store that a writer inserted.
    pub(crate) fn enqueued(&self) {
        self.0.send_modify(|count| *count = count.wrapping_add(1));
    }

    /// Spawns the task that notifies `wake` on every insert in this process until `stop`.
    pub(crate) fn spawn(
        &'static self,
        wake: Arc<Notify>,
        stop: CancellationToken,
    ) -> JoinHandle<()> {
        let mut inserts = self.0.subscribe();
        tokio::spawn(async move {
            stop.run_until_cancelled(async move {
                while inserts.changed().await.is_ok() {
                    wake.notify_one();
                }
            })
            .await;
        })
    }
}
