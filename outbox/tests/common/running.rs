//! Driving relays in tests: test settings, a relay in its own task, waiting on conditions.

use std::time::Duration;

use courier_outbox::{Backoff, Relay, RelayBuilder, RelayState};
use sqlx::Pool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{PATIENCE, Recorder, TestStore};

/// Relay settings for tests: fast retries, frequent rebalancing, a long poll (wake-ups come from
/// NOTIFY on Postgres, from the in-process signal on SQLite).
pub fn relay<DB: TestStore>(
    pool: &Pool<DB>,
    recorder: &Recorder,
    name: &str,
) -> RelayBuilder<DB, Recorder> {
    Relay::builder(pool.clone(), recorder.clone())
        .name(name)
        .backoff(Backoff {
            base: Duration::from_millis(5),
            factor: 2.0,
            max: Duration::from_millis(20),
            jitter: 0.0,
        })
        .poll_interval(Duration::from_secs(3600))
        .rebalance_interval(Duration::from_millis(50))
}

/// A relay that only a wake-up can make look for new messages: every interval that would make it
/// claim again on its own (poll, busy poll, rebalance, maintenance) is an hour.
pub fn wake_only_relay<DB: TestStore>(
    pool: &Pool<DB>,
    recorder: &Recorder,
    name: &str,
) -> RelayBuilder<DB, Recorder> {
    let hour = Duration::from_secs(3600);
    relay(pool, recorder, name)
        .poll_interval(hour)
        .busy_poll_interval(hour)
        .rebalance_interval(hour)
        .maintenance_interval(hour)
}

/// A relay running in its own task.
pub struct Running {
    pub shutdown: CancellationToken,
    pub state: watch::Receiver<RelayState>,
    pub task: JoinHandle<courier_outbox::Result<()>>,
}

impl Running {
    pub fn start<DB: TestStore>(builder: RelayBuilder<DB, Recorder>) -> Self {
        let relay = builder.build().expect("valid test relay configuration");
        let state = relay.state();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(relay.run(shutdown.clone()));
        Self {
            shutdown,
            state,
            task,
        }
    }

    pub async fn wait_for_state(&mut self, wanted: RelayState) {
        tokio::time::timeout(PATIENCE, self.state.wait_for(|s| *s == wanted))
            .await
            .unwrap_or_else(|_| panic!("relay never reached {wanted:?}"))
            .expect("relay state channel closed");
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the relay did not stop after its shutdown was requested")
            .expect("relay task panicked")
            .expect("relay failed");
    }

    /// Kills the relay as a crash would: its task is dropped wherever it is.
    pub async fn abort(self) {
        self.task.abort();
        assert!(self.task.await.unwrap_err().is_cancelled());
    }
}

/// Re-checks `condition` every 20 ms until it holds; fails the test after [`PATIENCE`].
pub async fn eventually(what: &str, condition: impl AsyncFn() -> bool) {
    let check = async {
        while !condition().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    if tokio::time::timeout(PATIENCE, check).await.is_err() {
        panic!("gave up waiting for {what}");
    }
}
