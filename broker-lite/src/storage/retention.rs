//! Retention (safeguard B5): whole old segments are deleted when their newest record is older than
//! `file_reserved_time`, or while the segment files take more than `max_disk_usage` bytes. The
//! active segment is never deleted. Age is judged by the stored timestamps of the records, not by
//! file times.
//!
//! `max_disk_usage` must cover at least two segments ([`StoreConfig::validate`] refuses less, at
//! open): below that every segment but the active one is over the ceiling, and each segment would
//! be deleted the moment the log rolls past it, whether its records were consumed or not.
//!
//! [`StoreConfig::validate`]: super::StoreConfig::validate

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::error::{Result, StorageError};
use super::index::QueueAdvance;
use super::segment::Segment;
use super::shared::Shared;

/// What one retention pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetentionReport {
    /// File names of the deleted segments, oldest first.
    pub removed_segments: Vec<String>,
    /// Bytes freed.
    pub removed_bytes: u64,
    /// Queues whose first available offset moved; consumers behind `new_min` lost those records.
    pub advanced: Vec<QueueAdvance>,
}

/// The segments retention would delete now, oldest first.
fn doomed(shared: &Shared, now: SystemTime) -> Vec<Arc<Segment>> {
    let config = &shared.config;
    let now_ms = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64;
    let cutoff = now_ms.saturating_sub(config.file_reserved_time.as_millis() as u64);
    let segments = shared.segments.read().unwrap().clone();
    let mut total: u64 = segments.iter().map(|s| s.size).sum();
    let mut doomed = Vec::new();
    // Never the last (active) segment.
    for segment in &segments[..segments.len().saturating_sub(1)] {
        let expired = segment.newest_ms() < cutoff;
        let over = config.max_disk_usage.is_some_and(|max| total > max);
        if !expired && !over {
            break;
        }
        total -= segment.size;
        doomed.push(segment.clone());
    }
    doomed
}

/// What [`enforce`] would remove at `now`, without removing anything.
pub(crate) fn preview(shared: &Shared, now: SystemTime) -> RetentionReport {
    let doomed = doomed(shared, now);
    let Some(last_doomed) = doomed.last() else {
        return RetentionReport::default();
    };
    let advanced = shared
        .index
        .read()
        .unwrap()
        .preview_remove_before(last_doomed.end())
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the queue index to preview retention");
            Vec::new()
        });
    RetentionReport {
        removed_bytes: doomed.iter().map(|s| s.size).sum(),
        removed_segments: doomed.iter().map(|s| s.name.clone()).collect(),
        advanced,
    }
}

/// Deletes old segments; see the module docs.
pub(crate) fn enforce(shared: &Shared, now: SystemTime) -> Result<RetentionReport> {
    let _open = shared.open_gate()?;
    let doomed = doomed(shared, now);
    let Some(last_doomed) = doomed.last() else {
        return Ok(RetentionReport::default());
    };
    let new_start = last_doomed.end();
    let (advanced, index_files) = {
        let mut index = shared.index.write().unwrap();
        let (advanced, mut files) = index.remove_before(new_start)?;
        files.extend(index.ids.remove_before(new_start));
        (advanced, files)
    };
    shared
        .segments
        .write()
        .unwrap()
        .retain(|s| s.base >= new_start);
    // Record the new queue starts before the files go, so offsets are never reused after a restart.
    shared.write_checkpoint_gated()?;
    let mut report = RetentionReport {
        advanced,
        ..RetentionReport::default()
    };
    for segment in doomed {
        shared
            .backend
            .remove(&segment.name)
            .map_err(|e| StorageError::io(format!("remove segment file {}", segment.name), e))?;
        report.removed_bytes += segment.size;
        report.removed_segments.push(segment.name.clone());
    }
    // The index files of the removed records go with them (after the checkpoint, which no
    // longer counts on them).
    for name in index_files {
        shared
            .backend
            .remove(&name)
            .map_err(|e| StorageError::io(format!("remove index file {name}"), e))?;
    }
    shared
        .backend
        .sync_dir()
        .map_err(|e| StorageError::io("sync the data directory", e))?;
    metrics::counter!("broker_lite_storage_retention_removed_segments_total")
        .increment(report.removed_segments.len() as u64);
    tracing::info!(
        removed = ?report.removed_segments,
        bytes = report.removed_bytes,
        queues_advanced = report.advanced.len(),
        "retention removed old segments"
    );
    for a in &report.advanced {
        tracing::info!(topic = %a.topic, queue_id = a.queue_id, old_min = a.old_min, new_min = a.new_min,
            "retention advanced a queue");
    }
    Ok(report)
}
