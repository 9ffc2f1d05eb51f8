//! `outbox-relay check`: validate the configuration, reach the database and the broker, and print
//! the durability profile with warnings on risky settings (safeguard L2).

use broker_lite::client::{Admin, AdminConfig};

use crate::config::Config;
use crate::database;

pub(crate) async fn run(config: &Config) -> anyhow::Result<()> {
    println!("configuration: valid");

    let pool = database::connect(config).await?;
    println!(
        "database: reachable ({})",
        database::redact(config.database_url()?)
    );
    database::ensure_migrated(&pool).await?;
    println!("database: outbox tables present");

    let admin = Admin::connect(config.broker.addresses.as_str(), AdminConfig::default())
        .await
        .map_err(|error| {
            anyhow::anyhow!(
                "cannot reach broker-lite at {}: {error}; start it or fix broker.addresses",
                config.broker.addresses
            )
        })?;
    admin.ping().await?;
    println!("broker: reachable ({})", config.broker.addresses);

    let warnings = profile(config);
    for warning in &warnings {
        println!("WARNING: {warning}");
    }
    println!("{} warning(s)", warnings.len());
    Ok(())
}

/// Prints the durability profile and returns the warnings.
fn profile(config: &Config) -> Vec<String> {
    let broker = &config.broker;
    let relay = &config.relay;
    println!("durability profile:");
    println!(
        "  broker flush mode:   not reported by broker-lite over the wire; see its `serve --flush` setting"
    );
    println!("  replication:         none (single broker-lite node)");
    println!(
        "  send timeout:        {} ms per attempt (P5)",
        broker.send_timeout_ms
    );
    println!("  send retries:        {} (P4)", broker.retries);
    println!(
        "  relay attempts:      {} before the failure table (P6)",
        relay.max_attempts
    );
    println!(
        "  outbox retention:    {}",
        relay
            .retention_hours
            .map_or("published rows deleted at once".to_owned(), |h| format!(
                "{h} h"
            ))
    );
    println!("  one-way topics:      {:?} (P3)", broker.oneway_topics);
    println!("  critical topics:     {:?}", broker.critical_topics);

    let mut warnings = Vec::new();
    if !broker.critical_topics.is_empty() {
        warnings.push(
            "critical topics are configured: make sure broker-lite runs with `--flush sync` \
             (SYNC_FLUSH, B1); ASYNC_FLUSH can lose acknowledged messages on power loss"
                .to_owned(),
        );
        if broker.retries == 0 {
            warnings.push("broker.retries is 0 with critical topics: a transient error costs a full relay backoff (P4)".to_owned());
        }
        if relay.max_attempts < 3 {
            warnings.push(format!(
                "relay.max_attempts is {} with critical topics: messages reach the failure table after a short outage (P6)",
                relay.max_attempts
            ));
        }
    }
    if !broker.oneway_topics.is_empty() {
        warnings.push(format!(
            "one-way sends are allowed for {:?}: their messages can be lost without trace (P3)",
            broker.oneway_topics
        ));
    }
    if broker.send_timeout_ms < 500 {
        warnings.push(format!(
            "broker.send_timeout_ms is {}: SYNC_FLUSH answers after an fsync, which can take longer",
            broker.send_timeout_ms
        ));
    }
    warnings
}
