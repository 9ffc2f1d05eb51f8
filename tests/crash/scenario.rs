//! The crash scenario every store and broker runs: orders written (one in seven rolled back)
//! while the broker, the relay and the consumer are killed in turn at random moments; then every
//! committed order must have exactly one effect, no rolled-back one any, and the failure table
//! must be empty.

use std::collections::HashSet;
use std::time::Duration;

use rand::Rng;

use crate::env_or;
use crate::ledger::Ledger;
use crate::system::{Broker, System};

/// The relay's retry settings for a run with kills: attempts enough that no message reaches the
/// failure table while a process is down, a short backoff so that the run stays short.
const RELAY_RETRIES: &str = "max_attempts = 1000\nbackoff_base_ms = 20\nbackoff_max_ms = 500\n";

/// Runs the scenario with `CRASH_ORDERS` orders (default 300) and `CRASH_KILLS` kills (default 6).
pub(crate) async fn orders_through_kills(ledger: Ledger, broker: Broker) {
    let orders = env_or("CRASH_ORDERS", 300);
    let kills = env_or("CRASH_KILLS", 6);
    let mut system = System::start(&ledger, broker, RELAY_RETRIES).await;

    let mut committed = HashSet::new();
    let mut rolled_back = HashSet::new();
    let kill_every = (orders / (kills + 1)).max(1);
    for i in 0..orders {
        if i % 7 == 3 {
            rolled_back.insert(ledger.write_order(false).await);
        } else {
            committed.insert(ledger.write_order(true).await);
        }
        let done = system.kills();
        if i % kill_every == kill_every - 1 && done < kills {
            // Each process in turn, at a random moment of its work.
            match done % 3 {
                0 => system.kill_broker().await,
                1 => system.relay.kill_and_restart(),
                _ => system.consumer.kill_and_restart(),
            }
        }
        if i % 10 == 0 {
            // Let the processes make some progress between kills.
            tokio::time::sleep(Duration::from_millis(rand::rng().random_range(0..30))).await;
        }
    }

    // Everything committed must arrive, exactly once.
    ledger.wait_until_drained(committed.len()).await;
    let (effects, failures) = ledger.effects_and_failures().await;
    println!(
        "crash test ({broker:?}): {} orders committed, {} rolled back; kills: broker {} (failovers \
         {}), relay {}, consumer {}; {} effects; failure table {}",
        committed.len(),
        rolled_back.len(),
        system.broker.kills,
        system.replica.as_ref().map_or(0, |r| r.failovers),
        system.relay.kills,
        system.consumer.kills,
        effects.values().sum::<usize>(),
        failures
    );
    let missing = committed
        .iter()
        .filter(|id| !effects.contains_key(id))
        .count();
    let doubled = effects.values().filter(|n| **n > 1).count();
    let invented = effects.keys().filter(|id| !committed.contains(id)).count();
    let ghosts = rolled_back
        .iter()
        .filter(|id| effects.contains_key(id))
        .count();
    assert_eq!(missing, 0, "committed orders without an effect");
    assert_eq!(doubled, 0, "orders with more than one effect");
    assert_eq!(ghosts, 0, "rolled-back orders with an effect");
    assert_eq!(invented, 0, "effects of messages nobody committed");
    assert_eq!(
        failures, 0,
        "messages in the failure table with no failure injected"
    );
}
