//! Admission of connections in two stages, so that connections that never finish their
//! handshake cannot lock legitimate clients out (issue 16: 1,100 silent connections held every
//! slot of the old single limit).
//!
//! A new connection first takes a place among the *handshaking* ones, at most
//! [`ServerConfig::max_handshaking`](super::ServerConfig::max_handshaking); when they are all
//! taken, the one that has waited longest is closed to make room (a real client finishes its
//! handshake in a round trip or two, a silent one never does). Only a finished handshake takes
//! one of the [`max_connections`](super::ServerConfig::max_connections) slots.
//!
//! When those slots are all taken too, the established connection that has been idle longest
//! (no request in flight) is closed to make room for the newcomer: on an open broker a
//! connection is established by its first request, and 1,100 connections that each sent one
//! ping and then held still used to keep every client out until their idle timeout. Its
//! client reconnects on its next request. Only when every connection has a request in flight
//! is a newcomer refused.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a newcomer waits for the idle connection it evicted to close. An idle connection
/// closes at once; the bound only keeps a newcomer from waiting forever on a race.
const EVICTION_WAIT: Duration = Duration::from_secs(5);

/// `idle_since` of a connection with a request in flight.
const BUSY: u64 = u64::MAX;

/// The two stages' bookkeeping, shared by every connection of one server.
#[derive(Debug)]
pub(super) struct Admission {
    handshaking: Mutex<Handshaking>,
    max_handshaking: usize,
    established: Arc<Semaphore>,
    open: Mutex<Open>,
    /// What `idle_since` counts from.
    epoch: Instant,
}

/// The established connections, by id.
#[derive(Debug, Default)]
struct Open {
    next: u64,
    slots: HashMap<u64, Arc<SlotState>>,
}

#[derive(Debug)]
struct SlotState {
    /// Milliseconds since the epoch at which the connection became idle, or [`BUSY`].
    idle_since: AtomicU64,
    evicted: CancellationToken,
}

/// An established connection's place, released on drop: its permit and its idle state.
#[derive(Debug)]
pub(super) struct Slot {
    admission: Arc<Admission>,
    id: u64,
    state: Arc<SlotState>,
    _permit: OwnedSemaphorePermit,
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
            open: Mutex::default(),
            epoch: Instant::now(),
        })
    }

    /// Asks the established connection idle longest to close; `false` when every one is busy
    /// (or already asked).
    fn evict_longest_idle(&self) -> bool {
        let open = self.open.lock().unwrap();
        let victim = open
            .slots
            .values()
            .filter(|s| !s.evicted.is_cancelled())
            .map(|s| (s.idle_since.load(Ordering::Relaxed), s))
            .filter(|(since, _)| *since != BUSY)
            .min_by_key(|(since, _)| *since);
        match victim {
            Some((_, slot)) => {
                metrics::counter!("broker_lite_server_evicted_idle_total").increment(1);
                slot.evicted.cancel();
                true
            }
            None => false,
        }
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

    /// Moves a connection that finished its handshake to the established ones, closing the
    /// one idle longest when all slots are taken; `None` when every connection is busy.
    pub(super) async fn establish(self) -> Option<Slot> {
        let admission = self.admission.clone();
        drop(self);
        let established = admission.established.clone();
        let permit = match established.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) if admission.evict_longest_idle() => {
                tokio::time::timeout(EVICTION_WAIT, established.acquire_owned())
                    .await
                    .ok()?
                    .ok()?
            }
            Err(_) => return None,
        };
        let state = Arc::new(SlotState {
            idle_since: AtomicU64::new(BUSY),
            evicted: CancellationToken::new(),
        });
        let id = {
            let mut open = admission.open.lock().unwrap();
            let id = open.next;
            open.next += 1;
            open.slots.insert(id, state.clone());
            id
        };
        Some(Slot {
            admission,
            id,
            state,
            _permit: permit,
        })
    }
}

impl Slot {
    /// The connection waits for a request and has none in flight since `since`.
    pub(super) fn idle(&self, since: Instant) {
        let ms = since
            .saturating_duration_since(self.admission.epoch)
            .as_millis();
        self.state
            .idle_since
            .store(u64::try_from(ms).unwrap_or(BUSY - 1), Ordering::Relaxed);
    }

    /// The connection has a request in flight.
    pub(super) fn busy(&self) {
        self.state.idle_since.store(BUSY, Ordering::Relaxed);
    }

    /// Completes when a newcomer needs this idle connection's place.
    pub(super) async fn evicted(&self) {
        self.state.evicted.cancelled().await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.open.lock().unwrap().slots.remove(&self.id);
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

    #[tokio::test]
    async fn the_longest_waiting_handshake_makes_room() {
        let admission = Admission::new(2, 1);
        let (a, b) = (admission.arrive(), admission.arrive());
        let c = admission.arrive();
        assert!(a.evicted.is_cancelled(), "the oldest is evicted");
        assert!(!b.evicted.is_cancelled() && !c.evicted.is_cancelled());
        let slot = c.establish().await.expect("a slot is free");
        slot.busy();
        assert!(
            b.establish().await.is_none(),
            "the single slot is taken by a busy connection"
        );
        drop(slot);
        assert!(admission.arrive().establish().await.is_some());
    }

    #[tokio::test]
    async fn the_longest_idle_connection_makes_room_when_all_slots_are_taken() {
        let admission = Admission::new(8, 2);
        let older = admission.arrive().establish().await.unwrap();
        let newer = admission.arrive().establish().await.unwrap();
        let now = Instant::now();
        older.idle(now);
        newer.idle(now + Duration::from_millis(1));
        let newcomer = tokio::spawn({
            let ticket = admission.arrive();
            async move { ticket.establish().await.is_some() }
        });
        older.evicted().await;
        assert!(
            !newer.state.evicted.is_cancelled(),
            "only the longest idle one"
        );
        drop(older);
        assert!(newcomer.await.unwrap(), "the newcomer takes the freed slot");
    }
}
