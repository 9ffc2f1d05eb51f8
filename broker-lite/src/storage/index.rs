//! The per-queue index: for every (topic, queue) the log position of each record, by queue offset.
//!
//! It lives in memory and is rebuilt from the commit log when the store opens.

use std::collections::{HashMap, VecDeque};

/// The available queue offsets of one queue: `min..max` (`max` is the offset the next record gets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueBounds {
    /// The oldest offset still stored; older ones were removed by retention.
    pub min: u64,
    /// One past the newest readable offset.
    pub max: u64,
}

/// How retention moved the start of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueAdvance {
    /// Topic.
    pub topic: String,
    /// Queue id.
    pub queue_id: u32,
    /// The first available offset before.
    pub old_min: u64,
    /// The first available offset now; offsets `old_min..new_min` are gone.
    pub new_min: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) position: u64,
    pub(crate) size: u32,
}

#[derive(Debug, Default)]
struct QueueIndex {
    /// Queue offset of `entries[0]`.
    first: u64,
    entries: VecDeque<Entry>,
}

impl QueueIndex {
    fn next(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    /// How many entries end at or below `visible`.
    fn visible(&self, visible: u64) -> usize {
        self.entries
            .partition_point(|e| e.position + u64::from(e.size) <= visible)
    }
}

/// All queues.
#[derive(Debug, Default)]
pub(crate) struct Index {
    queues: HashMap<String, HashMap<u32, QueueIndex>>,
}

impl Index {
    fn queue_mut(&mut self, topic: &str, queue_id: u32) -> &mut QueueIndex {
        if !self.queues.contains_key(topic) {
            self.queues.insert(topic.to_string(), HashMap::new());
        }
        self.queues
            .get_mut(topic)
            .unwrap()
            .entry(queue_id)
            .or_default()
    }

    fn queue(&self, topic: &str, queue_id: u32) -> Option<&QueueIndex> {
        self.queues.get(topic)?.get(&queue_id)
    }

    /// Appends a new record and returns its queue offset.
    pub(crate) fn push(&mut self, topic: &str, queue_id: u32, entry: Entry) -> u64 {
        let q = self.queue_mut(topic, queue_id);
        q.entries.push_back(entry);
        q.next() - 1
    }

    /// Appends a record found while scanning the log. Fails when the offset does not follow.
    pub(crate) fn push_recovered(
        &mut self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        entry: Entry,
    ) -> Result<(), &'static str> {
        let q = self.queue_mut(topic, queue_id);
        if q.entries.is_empty() {
            q.first = offset;
        } else if offset != q.next() {
            return Err("queue offset does not follow the previous record of its queue");
        }
        q.entries.push_back(entry);
        Ok(())
    }

    /// Registers a queue whose records are all gone (from the store checkpoint).
    pub(crate) fn set_floor(&mut self, topic: &str, queue_id: u32, min: u64) {
        let q = self.queue_mut(topic, queue_id);
        if q.entries.is_empty() && q.first < min {
            q.first = min;
        }
    }

    /// Bounds counting only records that end at or below `visible`.
    pub(crate) fn bounds(&self, topic: &str, queue_id: u32, visible: u64) -> Option<QueueBounds> {
        let q = self.queue(topic, queue_id)?;
        Some(QueueBounds {
            min: q.first,
            max: q.first + q.visible(visible) as u64,
        })
    }

    /// Entries from `from` (raised to the queue start), at most `max_records` and about `max_bytes`
    /// (at least one record if any is visible).
    pub(crate) fn range(
        &self,
        topic: &str,
        queue_id: u32,
        from: u64,
        visible: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Vec<Entry> {
        let Some(q) = self.queue(topic, queue_id) else {
            return Vec::new();
        };
        let start = from.saturating_sub(q.first) as usize;
        let end = q.visible(visible);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for e in q.entries.range(start.min(end)..end).take(max_records) {
            bytes += e.size as usize;
            if bytes > max_bytes && !out.is_empty() {
                break;
            }
            out.push(*e);
        }
        out
    }

    /// Drops every entry below log position `position` and reports the queues that moved.
    pub(crate) fn remove_before(&mut self, position: u64) -> Vec<QueueAdvance> {
        let moved = self.preview_remove_before(position);
        for a in &moved {
            let q = self.queue_mut(&a.topic, a.queue_id);
            q.entries.drain(..(a.new_min - a.old_min) as usize);
            q.first = a.new_min;
        }
        moved
    }

    /// What [`remove_before`](Self::remove_before) would report, without changing anything.
    pub(crate) fn preview_remove_before(&self, position: u64) -> Vec<QueueAdvance> {
        let mut moved = Vec::new();
        for (topic, queues) in &self.queues {
            for (queue_id, q) in queues {
                let n = q.entries.partition_point(|e| e.position < position) as u64;
                if n > 0 {
                    moved.push(QueueAdvance {
                        topic: topic.clone(),
                        queue_id: *queue_id,
                        old_min: q.first,
                        new_min: q.first + n,
                    });
                }
            }
        }
        moved.sort_by(|a, b| (&a.topic, a.queue_id).cmp(&(&b.topic, b.queue_id)));
        moved
    }

    /// Every queue, sorted.
    pub(crate) fn queues(&self) -> Vec<(String, u32)> {
        let mut out: Vec<_> = self
            .queues
            .iter()
            .flat_map(|(t, m)| m.keys().map(move |q| (t.clone(), *q)))
            .collect();
        out.sort();
        out
    }

    /// (topic, queue id, first available offset) of every queue, for the store checkpoint.
    pub(crate) fn floors(&self) -> Vec<(String, u32, u64)> {
        self.queues
            .iter()
            .flat_map(|(t, m)| m.iter().map(move |(q, i)| (t.clone(), *q, i.first)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(position: u64) -> Entry {
        Entry { position, size: 10 }
    }

    #[test]
    fn offsets_bounds_and_retention() {
        let mut ix = Index::default();
        assert_eq!(ix.push("t", 0, e(0)), 0);
        assert_eq!(ix.push("t", 1, e(10)), 0);
        assert_eq!(ix.push("t", 0, e(20)), 1);
        assert_eq!(ix.push("t", 0, e(30)), 2);
        assert_eq!(ix.bounds("t", 0, 25), Some(QueueBounds { min: 0, max: 1 }));
        assert_eq!(ix.bounds("t", 0, 40), Some(QueueBounds { min: 0, max: 3 }));
        assert_eq!(ix.range("t", 0, 1, 40, 10, 1 << 20), vec![e(20), e(30)]);
        assert_eq!(ix.range("t", 0, 0, 40, 10, 15), vec![e(0)]);
        let moved = ix.remove_before(25);
        assert_eq!(moved.len(), 2);
        assert_eq!(ix.bounds("t", 0, 40), Some(QueueBounds { min: 2, max: 3 }));
        assert_eq!(ix.bounds("t", 1, 40), Some(QueueBounds { min: 1, max: 1 }));
        assert_eq!(ix.push("t", 1, e(40)), 1);
        assert_eq!(
            ix.queues(),
            vec![("t".to_string(), 0), ("t".to_string(), 1)]
        );
    }

    #[test]
    fn recovered_offsets_must_follow() {
        let mut ix = Index::default();
        ix.push_recovered("t", 0, 5, e(0)).unwrap();
        ix.push_recovered("t", 0, 6, e(10)).unwrap();
        assert!(ix.push_recovered("t", 0, 8, e(20)).is_err());
        ix.set_floor("u", 0, 9);
        assert_eq!(ix.bounds("u", 0, 100), Some(QueueBounds { min: 9, max: 9 }));
    }
}
