//! In-process wake-ups: MySQL has no `LISTEN/NOTIFY`. Every insert through the writer bumps a
//! process-wide counter; each MySQL relay's wake-up task waits for it (as on SQLite, with a
//! counter of its own so one store's inserts do not wake the other's relays).
//!
//! The writer signals at insert time, before the caller's transaction commits, so the relay may
//! look too early; after a wake-up it keeps polling for its `linger` period, and the idle poll
//! interval catches transactions that stay open longer, and inserts made by other processes.

use std::sync::{Arc, LazyLock};

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

static ENQUEUED: LazyLock<watch::Sender<u64>> = LazyLock::new(|| watch::channel(0).0);

/// Tells this process's MySQL relays that a writer inserted.
pub(super) fn enqueued() {
    ENQUEUED.send_modify(|count| *count = count.wrapping_add(1));
}

/// Spawns the task that notifies `wake` on every insert in this process until `stop`.
pub(super) fn spawn(wake: Arc<Notify>, stop: CancellationToken) -> JoinHandle<()> {
    let mut inserts = ENQUEUED.subscribe();
    tokio::spawn(async move {
        stop.run_until_cancelled(async move {
            while inserts.changed().await.is_ok() {
                wake.notify_one();
            }
        })
        .await;
    })
}
