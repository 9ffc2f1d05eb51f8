//! The broker's background tasks: saving offsets, housekeeping (heartbeat eviction, consume
//! timeouts, lag gauges) and retention. They hold only a weak reference, so dropping every `Broker` clone
//! ends them.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::{Broker, Inner};

pub(crate) fn spawn(broker: &Broker) -> Vec<JoinHandle<()>> {
    let c = &broker.inner.config;
    vec![
        every(broker, c.offsets_save_interval, |b| async move {
            if let Err(e) = b.save_offsets_if_dirty().await {
                tracing::warn!(error = %e, "periodic offset save failed");
            }
        }),
        every(broker, c.housekeeping_interval, |b| async move {
            if let Err(e) = b.housekeeping().await {
                tracing::warn!(error = %e, "housekeeping failed");
            }
            // Refresh the lag gauges (L5).
            let groups: Vec<String> = b
                .inner
                .state
                .lock()
                .unwrap()
                .groups
                .keys()
                .cloned()
                .collect();
            for g in groups {
                let _ = b.lag(&g);
            }
        }),
        every(broker, c.retention_interval, |b| async move {
            if let Err(e) = b.enforce_retention().await {
                tracing::warn!(error = %e, "retention failed");
            }
        }),
    ]
}

fn every<F, Fut>(broker: &Broker, interval: Duration, f: F) -> JoinHandle<()>
where
    F: Fn(Broker) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let weak: Weak<Inner> = Arc::downgrade(&broker.inner);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let Some(inner) = weak.upgrade() else { return };
            f(Broker { inner }).await;
        }
    })
}
