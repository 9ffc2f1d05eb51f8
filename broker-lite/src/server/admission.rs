//! Admission of connections in two stages, so that connections that never finish their
//! handshake cannot lock legitimate clients out (issue 16: 1,100 silent connections held every
//! slot of the old single limit).
//!
//! A new connection first takes a place among the *handshaking* ones, at most
//! [`ServerConfig::max_handshaking`](super::ServerConfig::max_handshaking); when they are all
//! taken, the one that has waited longest is closed to make room (a real client finishes its
//! handshake in a round trip or two, a silent one never does). Only a finished handshake takes
//! one of the [`max_connections`](super::ServerConfig::max_connections) slots.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// The two stages' bookkeeping, shared by every connection of one server.
#[derive(Debug)]
pub(super) struct Admission {
    handshaking: Mutex<Handshaking>,
    max_handshaking: usize,
    established: Arc<Semaphore>,
}

#[derive(Debug, Default)]
struct Handshaking {
    next: u64,
    /// By arrival: the first entry has waited longest.
    waiting: BTreeMap<u64, CancellationToken>,
}

/// A place among the handshaking connections, released on drop.
#[derive(Debug)]
pub(super) struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    evicted: CancellationToken,
}

impl Admission {
    pub(super) fn new(max_handshaking: usize, max_connections: usize) -> Arc<Admission> {
        Arc::new(Admission {
            handshaking: Mutex::new(Handshaking::default()),
            max_handshaking: max_handshaking.max(1),
            established: Arc::new(Semaphore::new(max_connections)),
        })
    }

    /// Takes a place for a new connection, evicting the longest-waiting one when all are taken.
    pub(super) fn arrive(self: &Arc<Self>) -> Ticket {
        let mut h = self.handshaking.lock().unwrap();
        while h.waiting.len() >= self.max_handshaking {
            let Some((_, oldest)) = h.waiting.pop_first() else {
                break;
            };
            metrics::counter!("broker_lite_server_evicted_handshakes_total").increment(1);
            oldest.cancel();
        }
        let id = h.next;
        h.next += 1;
        let evicted = CancellationToken::new();
        h.waiting.insert(id, evicted.clone());
        Ticket {
            admission: self.clone(),
            id,
            evicted,
        }
    }
}

impl Ticket {
    /// Completes when a newer connection took this one's place.
    pub(super) async fn evicted(&self) {
        self.evicted.cancelled().await;
    }

    /// Moves a connection that finished its handshake to the established ones; `None` at the
    /// connection limit.
    pub(super) fn establish(self) -> Option<OwnedSemaphorePermit> {
        self.admission.established.clone().try_acquire_owned().ok()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission
            .handshaking
            .lock()
            .unwrap()
            .waiting
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_waiting_handshake_makes_room() {
        let admission = Admission::new(2, 1);
        let (a, b) = (admission.arrive(), admission.arrive());
        let c = admission.arrive();
        assert!(a.evicted.is_cancelled(), "the oldest is evicted");
        assert!(!b.evicted.is_cancelled() && !c.evicted.is_cancelled());
        let permit = c.establish().expect("a slot is free");
        assert!(b.establish().is_none(), "the single slot is taken");
        drop(permit);
        assert!(admission.arrive().establish().is_some());
    }
}
