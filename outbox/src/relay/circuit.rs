//! The broker circuit: a broker outage pauses the relay instead of costing messages attempts.
//!
//! Attempts, backoff and the failure table exist for what the broker refuses for a given
//! message. A broker that cannot be reached fails every message alike, so counting those failures
//! would only burn attempts (an outage of an hour would move the whole backlog to the failure
//! table) and, once the broker is back, leave the backlog waiting for backoffs that grew during
//! the outage. A publisher says "the broker, not the message" by wrapping the error in
//! [`Unavailable`](crate::Unavailable); then the relay:
//!
//! - puts the failed message and every row of the batch not yet published back untouched (no
//!   attempt, no error, no new due time) and starts no further publish of that batch;
//! - **opens** the circuit: it claims no full batches, only one row at a time as a probe, after
//!   a pause that grows from [`RelayBuilder::broker_probe`](crate::RelayBuilder::broker_probe)'s
//!   base (50 ms) to its cap (1 s);
//! - **closes** it on the first probe the broker answers, success or refusal of that message: the
//!   broker is reachable again and full batches resume at once.
//!
//! What is not an outage: the relay's own `publish_timeout` firing stays a failure of that
//! message (the relay cannot tell a hung broker from one slow message); a publisher whose client
//! bounds a whole request marks its timeout `Unavailable` itself, as broker-lite's does, and
//! should use a bound below the relay's. A probe the broker refuses closes the circuit too: the
//! broker answered, so the refusal is the message's and counts as usual. While open, the relay
//! keeps its key partitions (they stall with it) and keeps rebalancing and doing maintenance.
//!
//! The state is visible as [`Relay::circuit`](crate::Relay::circuit), as
//! [`RelayState::Paused`](crate::RelayState::Paused) between probes, and as the gauge
//! `outbox_broker_circuit_open`.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::Backoff;

/// Whether the relay publishes or is paused because the broker is unavailable; watch it with
/// [`Relay::circuit`](crate::Relay::circuit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CircuitState {
    /// The broker answers: the relay publishes full batches.
    Closed,
    /// The broker could not be reached: the relay publishes one probe message at a time, at
    /// growing intervals of at most about a second, until the broker answers one.
    Open,
}

/// The default probe pauses: 50 ms doubling to 1 s, so the relay resumes within about a second
/// of the broker's return whatever the length of the outage.
pub(crate) const DEFAULT_PROBE: Backoff = Backoff {
    base: Duration::from_millis(50),
    factor: 2.0,
    max: Duration::from_secs(1),
    jitter: 0.2,
};

/// The circuit of one relay, kept across database reconnects.
#[derive(Debug)]
pub(crate) struct Circuit {
    state: watch::Sender<CircuitState>,
    probe: Backoff,
    /// Failed probes since the circuit opened (the opening failure counts as the first).
    failures: u32,
    opened_at: Option<Instant>,
    next_probe: Option<Instant>,
}

impl Circuit {
    pub(crate) fn new(state: watch::Sender<CircuitState>, probe: Backoff) -> Self {
        state.send_replace(CircuitState::Closed);
        super::metrics::record_circuit(false);
        Self {
            state,
            probe,
            failures: 0,
            opened_at: None,
            next_probe: None,
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        self.opened_at.is_some()
    }

    /// While open, when the next probe may go out.
    pub(crate) fn next_probe(&self) -> Option<Instant> {
        self.next_probe
    }

    /// How many rows the next claim may take: one while probing.
    pub(crate) fn claim_limit(&self, batch_size: usize) -> usize {
        if self.is_open() { 1 } else { batch_size }
    }

    /// A publish found the broker unavailable: open the circuit, or keep it open and wait longer.
    pub(crate) fn unavailable(&mut self, error: &str, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        let pause = self.probe.delay(self.failures);
        self.next_probe = Some(now + pause);
        match self.opened_at {
            None => {
                self.opened_at = Some(now);
                tracing::warn!(
                    error,
                    probe_in = ?pause,
                    "broker unavailable; pausing the relay (no attempts counted) and probing it with one message"
                );
                self.state.send_replace(CircuitState::Open);
                super::metrics::record_circuit(true);
            }
            Some(since) => {
                tracing::debug!(error, outage = ?now - since, probe_in = ?pause, "broker still unavailable");
            }
        }
    }

    /// The broker answered a publish (accepted or refused the message): close the circuit.
    pub(crate) fn answered(&mut self, now: Instant) {
        if let Some(since) = self.opened_at.take() {
            tracing::info!(outage = ?now - since, probes = self.failures, "broker answers again; resuming");
            self.state.send_replace(CircuitState::Closed);
            super::metrics::record_circuit(false);
        }
        self.failures = 0;
        self.next_probe = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn circuit() -> (Circuit, watch::Receiver<CircuitState>) {
        let (state, watch) = watch::channel(CircuitState::Closed);
        let probe = Backoff {
            jitter: 0.0,
            ..DEFAULT_PROBE
        };
        (Circuit::new(state, probe), watch)
    }

    #[test]
    fn opens_on_unavailable_probes_at_growing_capped_intervals_and_closes_on_an_answer() {
        let (mut circuit, watch) = circuit();
        let now = Instant::now();
        assert_eq!(circuit.claim_limit(500), 500);
        assert_eq!(circuit.next_probe(), None);

        let mut pauses = Vec::new();
        for _ in 0..8 {
            circuit.unavailable("refused", now);
            pauses.push(circuit.next_probe().unwrap() - now);
        }
        assert_eq!(*watch.borrow(), CircuitState::Open);
        assert_eq!(
            circuit.claim_limit(500),
            1,
            "only one probe message at a time"
        );
        let ms: Vec<u128> = pauses.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [50, 100, 200, 400, 800, 1000, 1000, 1000]);

        circuit.answered(now);
        assert_eq!(*watch.borrow(), CircuitState::Closed);
        assert_eq!(circuit.claim_limit(500), 500);
        assert_eq!(circuit.next_probe(), None);

        // A new outage starts again from the shortest pause.
        circuit.unavailable("refused", now);
        assert_eq!(
            circuit.next_probe().unwrap() - now,
            Duration::from_millis(50)
        );
    }
}
