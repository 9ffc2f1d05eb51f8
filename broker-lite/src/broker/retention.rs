//! Retention (safeguard B5): the broker runs the store's retention periodically, warns when a
//! group's unconsumed messages are about to expire, and reports messages deleted before they
//! were consumed.

use super::Broker;
use super::admin::QueueLag;
use super::clock::system_time;
use super::error::Result;
use crate::storage::RetentionReport;

/// Unconsumed messages a group lost to retention on one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LostMessages {
    /// Group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Queue.
    pub queue_id: u32,
    /// The member, for broadcasting groups.
    pub client_id: Option<String>,
    /// How many unconsumed messages were deleted.
    pub count: u64,
}

/// What one retention pass did and found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetentionOutcome {
    /// What the store deleted.
    pub report: RetentionReport,
    /// Queues whose oldest unconsumed message (before this pass) was within
    /// [`retention_warning_margin`](super::BrokerConfig::retention_warning_margin) of expiring,
    /// with the group in `consumer_id`'s place for clustering groups: `(group, lag)`.
    pub expiring: Vec<(String, QueueLag)>,
    /// Unconsumed messages deleted in this pass.
    pub lost: Vec<LostMessages>,
}

impl Broker {
    /// Runs one retention pass now (the background task runs one every
    /// [`retention_interval`](super::BrokerConfig::retention_interval)): warns about groups whose
    /// unconsumed messages are about to expire (metric `broker_lite_unconsumed_expiring`),
    /// deletes expired segments, and moves the cursors of groups that lost unconsumed messages
    /// past them (metric `broker_lite_unconsumed_lost_total`, a warning event).
    ///
    /// # Errors
    /// [`BrokerError::Storage`](super::BrokerError::Storage) when segments cannot be removed.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn enforce_retention(&self) -> Result<RetentionOutcome> {
        self.check_open()?;
        let now = self.now_ms();
        let reserved = self.inner.config.store.file_reserved_time.as_millis() as u64;
        let margin = self.inner.config.retention_warning_margin.as_millis() as u64;
        let warn_before = now.saturating_sub(reserved.saturating_sub(margin));
        let mut expiring = Vec::new();
        let groups: Vec<String> = self
            .inner
            .state
            .lock()
            .unwrap()
            .groups
            .keys()
            .cloned()
            .collect();
        for group in groups {
            let Ok(lags) = self.lag(&group) else { continue };
            for lag in lags.into_iter().filter(|l| l.lag > 0) {
                let oldest = self
                    .inner
                    .store
                    .read_queue(&lag.topic, lag.queue_id, lag.committed, 1, usize::MAX)
                    .await?;
                let Some(oldest) = oldest.first() else {
                    continue;
                };
                if oldest.stored_timestamp_ms < warn_before {
                    tracing::warn!(%group, topic = %lag.topic, queue_id = lag.queue_id, lag = lag.lag,
                        stored_ms = oldest.stored_timestamp_ms,
                        "unconsumed messages are about to expire by retention (B5): consume faster or raise file_reserved_time");
                    metrics::gauge!("broker_lite_unconsumed_expiring", "group" => group.clone(),
                        "topic" => lag.topic.clone(), "queue" => lag.queue_id.to_string())
                    .set(lag.lag as f64);
                    expiring.push((group.clone(), lag));
                }
            }
        }
        let report = self.inner.store.enforce_retention(system_time(now)).await?;
        if !report.removed_segments.is_empty() {
            self.prune_index().await?;
        }
        let mut lost = Vec::new();
        if !report.advanced.is_empty() {
            let mut state = self.inner.state.lock().unwrap();
            for (group, g) in &mut state.groups {
                for (key, cursor) in &mut g.cursors {
                    for a in &report.advanced {
                        if a.topic != key.topic || a.queue_id != key.queue_id {
                            continue;
                        }
                        let count = cursor.skip_to(a.new_min);
                        if count > 0 {
                            lost.push(LostMessages {
                                group: group.clone(),
                                topic: key.topic.clone(),
                                queue_id: key.queue_id,
                                client_id: key.member.clone(),
                                count,
                            });
                        }
                    }
                }
            }
            drop(state);
            self.mark_dirty();
        }
        for l in &lost {
            tracing::warn!(group = %l.group, topic = %l.topic, queue_id = l.queue_id, count = l.count,
                "retention deleted messages before the group consumed them (B5)");
            metrics::counter!("broker_lite_unconsumed_lost_total", "group" => l.group.clone())
                .increment(l.count);
        }
        Ok(RetentionOutcome {
            report,
            expiring,
            lost,
        })
    }
}

impl Broker {
    /// Drops index entries of records removed by retention: everything below the oldest record
    /// still stored in any queue.
    async fn prune_index(&self) -> Result<()> {
        let mut start = u64::MAX;
        for (topic, queue_id) in self.inner.store.queues() {
            let Some(bounds) = self.inner.store.queue_bounds(&topic, queue_id) else {
                continue;
            };
            let first = self
                .inner
                .store
                .read_queue(&topic, queue_id, bounds.min, 1, usize::MAX)
                .await?;
            if let Some(r) = first.first() {
                start = start.min(r.log_position);
            }
        }
        if start == u64::MAX {
            start = self.inner.store.progress().written;
        }
        self.inner.index.lock().unwrap().prune_below(start);
        Ok(())
    }
}
