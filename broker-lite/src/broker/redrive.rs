//! Re-driving dead letters back to their original topics, page by page.
//!
//! A re-drive reads `%DLQ%<group>` in pages of at most [`PAGE_RECORDS`] records and about
//! [`PAGE_BYTES`] bytes, and appends each page's copies in one group commit. A single append is
//! bounded ([`MAX_APPEND_BYTES`](crate::storage::MAX_APPEND_BYTES), 64 MiB), so re-driving a
//! whole queue in one append failed once it held more than that (issue 12, item 11); paging
//! also bounds the memory a re-drive needs, whatever the queue's size.
//!
//! A page's dead letters are marked re-driven only after its copies are fsynced
//! ([`Broker::append_durable`], issue 12 item 6): marking them first hid them from the queue
//! while their copies could still be lost. When a page fails, the pages before it stay re-driven
//! and the error is returned; calling again continues with the rest (the failed page may then be
//! sent twice, since its copies may have reached the disk).

use std::collections::HashSet;

use uuid::Uuid;

use super::Broker;
use super::error::{BrokerError, Result};
use super::message::props;
use super::send::queue_for_key;
use super::topics::dlq_topic;
use super::trace::TraceKind;
use crate::storage::{NewRecord, StoredRecord};

/// Most dead letters re-driven by one append.
const PAGE_RECORDS: usize = 1024;

/// About the most bytes of dead letters re-driven by one append (at least one record).
const PAGE_BYTES: usize = 16 << 20;

impl Broker {
    /// Sends dead letters of `group` back to their original topic (all of them, or those with
    /// the given ids), with the reconsume count reset. Only `group` receives them again; other
    /// groups on the topic skip them. Returns how many were re-driven. Any number of dead letters
    /// can be re-driven: they are sent page by page, each page fsynced before its dead letters
    /// are marked re-driven (see the `redrive` module source).
    ///
    /// # Errors
    /// [`BrokerError::UnknownGroup`]; [`BrokerError::Storage`] when a page cannot be read,
    /// written or fsynced: the pages before it stay re-driven, that page and the later ones do
    /// not (a retry may repeat messages of the failed page).
    #[tracing::instrument(level = "info", skip(self, message_ids))]
    pub async fn redrive_dead_letters(
        &self,
        group: &str,
        message_ids: Option<Vec<Uuid>>,
    ) -> Result<u64> {
        self.check_open()?;
        let mut wanted: Option<HashSet<Uuid>> = message_ids.map(|ids| ids.into_iter().collect());
        let dlq = dlq_topic(group);
        let bounds = self.inner.store.queue_bounds(&dlq, 0);
        {
            let mut state = self.inner.state.lock().unwrap();
            let g = state
                .groups
                .get_mut(group)
                .ok_or_else(|| BrokerError::UnknownGroup(group.into()))?;
            // Forget re-driven offsets that retention removed.
            if let Some(b) = bounds {
                g.redriven = g.redriven.split_off(&b.min);
            }
        }
        let Some(bounds) = bounds else {
            return Ok(0);
        };
        let mut total = 0;
        let mut from = bounds.min;
        while from < bounds.max && wanted.as_ref().is_none_or(|w| !w.is_empty()) {
            let page = self
                .inner
                .store
                .read_queue(&dlq, 0, from, PAGE_RECORDS, PAGE_BYTES)
                .await?;
            let Some(last) = page.last() else { break };
            from = last.queue_offset + 1;
            let letters: Vec<StoredRecord> = {
                let state = self.inner.state.lock().unwrap();
                let g = state
                    .groups
                    .get(group)
                    .ok_or_else(|| BrokerError::UnknownGroup(group.into()))?;
                page.into_iter()
                    .filter(|r| r.queue_offset < bounds.max)
                    .filter(|r| !g.redriven.contains(&r.queue_offset))
                    .filter(|r| wanted.as_ref().is_none_or(|w| w.contains(&r.message_id)))
                    .collect()
            };
            if let Some(w) = wanted.as_mut() {
                for r in &letters {
                    w.remove(&r.message_id);
                }
            }
            total += self.redrive_page(group, letters).await?;
        }
        tracing::info!(group, count = total, "dead letters re-driven");
        Ok(total)
    }

    /// Re-drives one page of dead letters; returns how many.
    async fn redrive_page(&self, group: &str, letters: Vec<StoredRecord>) -> Result<u64> {
        let mut records = Vec::with_capacity(letters.len());
        let mut offsets = Vec::with_capacity(letters.len());
        for r in letters {
            let Some(topic) = r.properties.get(props::ORIGIN_TOPIC).cloned() else {
                continue;
            };
            let queues = self.ensure_topic(&topic).await?;
            let origin_queue = r
                .properties
                .get(props::ORIGIN_QUEUE)
                .and_then(|q| q.parse::<u32>().ok())
                .filter(|q| *q < queues);
            let queue_id = origin_queue
                .or_else(|| r.key.as_deref().map(|k| queue_for_key(k, queues)))
                .unwrap_or(0);
            let mut record = NewRecord::new(topic, queue_id, r.body);
            record.message_id = r.message_id;
            record.key = r.key;
            record.tag = r.tag;
            record.born_timestamp_ms = r.born_timestamp_ms;
            record.properties = r.properties;
            record.properties.retain(|k, _| !k.starts_with('%'));
            record
                .properties
                .insert(props::TARGET_GROUP.into(), group.to_string());
            records.push(record);
            offsets.push((r.queue_offset, r.message_id));
        }
        if records.is_empty() {
            return Ok(0);
        }
        self.append_durable(records).await?;
        if let Some(g) = self.inner.state.lock().unwrap().groups.get_mut(group) {
            g.redriven.extend(offsets.iter().map(|(o, _)| *o));
        }
        self.mark_dirty();
        for (_, id) in &offsets {
            self.record(
                *id,
                TraceKind::Redriven {
                    group: group.to_string(),
                },
            );
        }
        Ok(offsets.len() as u64)
    }
}
