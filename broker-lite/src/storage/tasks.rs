//! Background tasks of a store: the async-flush ticker and the checkpoint ticker. Both run on
//! tokio timers, so tests with paused time control them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::MissedTickBehavior;

use super::flush::Command;
use super::shared::Shared;

/// Has the writer fsync every `interval` (async flush).
///
/// A tick does not travel through the writer's command queue, which is full under sustained load:
/// it leaves a [flush request](Shared::request_flush) that the writer takes with its very next
/// batch, then only tries to wake the writer with a `Flush` command. When that queue is full the
/// writer is busy and will look at the requests anyway, so no tick is ever skipped and the loss
/// window (one interval plus one fsync) holds under any load.
pub(crate) async fn flush_task(
    tx: mpsc::WeakSender<Command>,
    shared: Arc<Shared>,
    interval: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(tx) = tx.upgrade() else { return };
        let (reply, done) = oneshot::channel();
        if !shared.request_flush(reply) {
            return; // the writer has stopped
        }
        // Only a wake-up: a full queue means the writer has work and takes the request with it.
        let _ = tx.try_send(Command::Flush { reply: None });
        drop(tx);
        // Wait for this flush before the next tick, from the blocking pool: the writer is a plain
        // thread, and tokio's paused test clock does not jump ahead while a blocking task runs,
        // so tests with paused time see each flush complete at its tick.
        let _ = tokio::task::spawn_blocking(move || done.blocking_recv()).await;
    }
}

/// Checkpoints the flushed position every `checkpoint_interval` when it moved.
pub(crate) async fn checkpoint_task(shared: Arc<Shared>) {
    // The open has just written the checkpoint: the first tick is one interval away, not at once,
    // so that what the checkpoint holds right after an open does not depend on task scheduling.
    let period = shared.config.checkpoint_interval;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
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
