//! Background tasks of a store: the async-flush ticker and the checkpoint ticker. Both run on
//! tokio timers, so tests with paused time control them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::MissedTickBehavior;

use super::flush::Command;
use super::shared::Shared;

/// Sends a flush to the writer every `interval` (async flush).
pub(crate) async fn flush_task(tx: mpsc::WeakSender<Command>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(tx) = tx.upgrade() else { return };
        let (reply, done) = oneshot::channel();
        // A full queue means the writer is busy; the next tick will try again.
        if tx.try_send(Command::Flush { reply: Some(reply) }).is_err() {
            continue;
        }
        drop(tx);
        // Wait for this flush before the next tick, from the blocking pool: the writer is a plain
        // thread, and tokio's paused test clock does not jump ahead while a blocking task runs,
        // so tests with paused time see each flush complete at its tick.
        let _ = tokio::task::spawn_blocking(move || done.blocking_recv()).await;
    }
}

/// Checkpoints the flushed position every `checkpoint_interval` when it moved.
pub(crate) async fn checkpoint_task(shared: Arc<Shared>) {
    let mut ticker = tokio::time::interval(shared.config.checkpoint_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        // Compare with what the checkpoint holds, not with a value seen when this task started:
        // the store may have flushed before this task was first polled.
        let p = *shared.progress.borrow();
        if p.flushed == p.checkpointed {
            continue;
        }
        let s = shared.clone();
        match tokio::task::spawn_blocking(move || s.write_checkpoint()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not write the store checkpoint"),
            Err(_) => return,
        }
    }
}
