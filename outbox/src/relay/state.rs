//! What a relay is doing right now, for readiness probes and tests.

/// The life cycle of a running relay, observable through [`Relay::state`](crate::Relay::state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayState {
    /// Connecting to the database and taking its share of the key partitions.
    Starting,
    /// Publishing claimed messages.
    Draining,
    /// Nothing due: waiting for a notification, the poll interval or the next due message.
    Idle,
    /// The broker is unavailable (the [circuit](crate::Relay::circuit) is open): waiting for the
    /// next probe. Nothing is claimed and no attempts are counted meanwhile.
    Paused,
    /// The database connection failed; retrying after a pause.
    Reconnecting,
    /// `run` has returned.
    Stopped,
}
