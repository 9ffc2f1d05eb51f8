//! The message trace (safeguard L4): what happened to one message id, in order.
//!
//! Kept **in memory** and bounded: the events of at most
//! [`BrokerConfig::trace_capacity`](super::BrokerConfig::trace_capacity) message ids (the oldest
//! id is forgotten first) and at most 256 events per id. A restart starts an empty trace; the
//! messages themselves stay findable with [`Broker::lookup`](super::Broker::lookup).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use uuid::Uuid;

use super::Broker;
use super::message::SendStatus;

const MAX_EVENTS_PER_MESSAGE: usize = 256;

/// One event in a message's life.
///
/// Not the wire's `TraceEvent`: this one keeps what happened as a structured [`TraceKind`] that
/// tests and embedders match on; the server renders it as the wire's event name and detail text.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TraceEvent {
    /// When, ms since the Unix epoch (broker clock).
    pub at_ms: u64,
    /// What happened.
    pub kind: TraceKind,
}

/// What happened to a message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TraceKind {
    /// Stored in a queue (also for a dead letter or a redriven copy).
    Stored {
        /// Topic.
        topic: String,
        /// Queue.
        queue_id: u32,
        /// Offset.
        queue_offset: u64,
        /// The status the producer got.
        status: SendStatus,
    },
    /// Delivered to a member.
    Delivered {
        /// Group.
        group: String,
        /// Member.
        client_id: String,
        /// Delivery attempt (1 the first time).
        attempt: u32,
    },
    /// Acked by a member.
    Acked {
        /// Group.
        group: String,
        /// Member.
        client_id: String,
    },
    /// Skipped for a group by its tag filter (counts as consumed).
    Filtered {
        /// Group.
        group: String,
    },
    /// Nacked; it will be redelivered after the delay.
    Nacked {
        /// Group.
        group: String,
        /// Member.
        client_id: String,
        /// Delay before redelivery.
        redeliver_after: Duration,
    },
    /// Not settled within the consume timeout; it will be redelivered.
    TimedOut {
        /// Group.
        group: String,
        /// Member that held it.
        client_id: String,
    },
    /// Rejected by a member for good ([`Broker::dead_letter`]): it goes to the dead-letter topic
    /// at once, without further redeliveries.
    Rejected {
        /// Group.
        group: String,
        /// Member.
        client_id: String,
        /// Why, as the consumer said.
        reason: Option<String>,
    },
    /// Moved to the group's dead-letter topic.
    DeadLettered {
        /// Group.
        group: String,
    },
    /// Sent back from the dead-letter topic to its original topic.
    Redriven {
        /// Group.
        group: String,
    },
}

/// The bounded in-memory trace.
#[derive(Debug)]
pub(crate) struct Trace {
    capacity: usize,
    events: HashMap<Uuid, Vec<TraceEvent>>,
    order: VecDeque<Uuid>,
}

impl Trace {
    pub(crate) fn new(capacity: usize) -> Self {
        Trace {
            capacity,
            events: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub(crate) fn record(&mut self, id: Uuid, at_ms: u64, kind: TraceKind) {
        if self.capacity == 0 {
            return;
        }
        if !self.events.contains_key(&id) {
            while self.order.len() >= self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.events.remove(&old);
                }
            }
            self.order.push_back(id);
        }
        let events = self.events.entry(id).or_default();
        if events.len() < MAX_EVENTS_PER_MESSAGE {
            events.push(TraceEvent { at_ms, kind });
        }
    }

    pub(crate) fn get(&self, id: &Uuid) -> Vec<TraceEvent> {
        self.events.get(id).cloned().unwrap_or_default()
    }
}

impl Broker {
    /// The recorded life of message `id` (safeguard L4), oldest event first; empty when unknown
    /// or forgotten. The trace is kept in memory and bounded: the events of at most
    /// [`trace_capacity`](super::BrokerConfig::trace_capacity) message ids (oldest forgotten
    /// first), 256 events each; a restart starts it empty.
    pub fn trace(&self, id: Uuid) -> Vec<TraceEvent> {
        self.inner.trace.lock().unwrap().get(&id)
    }

    pub(crate) fn record(&self, id: Uuid, kind: TraceKind) {
        let now = self.now_ms();
        self.inner.trace.lock().unwrap().record(id, now, kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded() {
        let mut t = Trace::new(2);
        let ids = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
        for id in ids {
            t.record(id, 1, TraceKind::Filtered { group: "g".into() });
        }
        assert!(t.get(&ids[0]).is_empty());
        assert_eq!(t.get(&ids[2]).len(), 1);
    }
}
