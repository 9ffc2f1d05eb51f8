//! `outbox-relay check`: validate the configuration, reach the database and the broker, and print
//! the durability profile with warnings on risky settings (safeguard L2).
//!
//! The broker's side of the profile (flush mode, replication, retention, disk ceiling, version)
//! comes from broker-lite itself through [`Admin::describe`]; a broker too old to answer it is
//! reported as such and the relay's side is still checked.

use broker_lite_client::protocol::{BrokerDescription, ErrorCode, FlushMode, Replication};
use broker_lite_client::{Admin, AdminConfig, ClientError};

use crate::config::{BrokerKind, Config};
use crate::{database, nats_check, rabbitmq_check};

/// Below this retention a message expires unconsumed while its consumer is down for a day (B5).
const MIN_RETENTION_MS: u64 = 24 * HOUR_MS;
const HOUR_MS: u64 = 3_600_000;

pub(crate) async fn run(config: &Config) -> anyhow::Result<()> {
    // The database URL is part of the configuration: only once it has been understood (and
    // used) is the configuration known to be valid.
    let pool = database::connect(config).await?;
    println!("configuration: valid");
    println!(
        "database: reachable ({})",
        database::redact(config.database_url()?)
    );
    database::ensure_migrated(&pool).await?;
    println!("database: outbox tables present");

    if config.broker_kind() == BrokerKind::RabbitMq {
        return rabbitmq_check::run(config).await;
    }
    if config.broker_kind() == BrokerKind::Nats {
        return nats_check::run(config).await;
    }
    let brokers = reach_brokers(config).await?;
    let described = match brokers.admin.describe().await {
        Ok(description) => Some(description),
        // A broker-lite from before the describe command: check what the relay knows.
        Err(ClientError::Server(reply)) if reply.code == ErrorCode::UnknownCommand => None,
        Err(error) => {
            return Err(anyhow::Error::new(error).context(format!(
                "broker-lite at {} did not describe its settings",
                brokers.address
            )));
        }
    };

    print_profile(config, described.as_ref());
    let mut warnings = warnings(config, described.as_ref());
    warnings.extend(brokers.unreachable.iter().map(|(address, cause)| {
        format!(
            "failover address {address} is unreachable ({cause}): the relay cannot fail over to \
             it while it stays so (P9)"
        )
    }));
    for warning in &warnings {
        println!("WARNING: {warning}");
    }
    println!("{} warning(s)", warnings.len());
    Ok(())
}

/// Prints the durability profile: the broker's settings as it reports them, then the relay's.
fn print_profile(config: &Config, broker: Option<&BrokerDescription>) {
    let settings = &config.broker;
    let relay = &config.relay;
    println!("durability profile:");
    match broker {
        Some(broker) => {
            println!("  broker-lite version: {}", broker.version);
            println!("  broker flush mode:   {}", flush_mode(broker));
            println!("  replication:         {}", replication(broker.replication));
            if let Some(status) = &broker.replication_status {
                println!("  replication epoch:   {}", status.epoch);
                for f in &status.followers {
                    println!(
                        "  follower {}: {}, {} bytes behind",
                        f.name,
                        if f.in_sync { "in sync" } else { "not in sync" },
                        f.lag_bytes
                    );
                }
            }
            println!(
                "  broker retention:    {} (fileReservedTime, B5)",
                hours(broker.retention_ms)
            );
            println!("  broker listens on:   {}", broker.listen);
            println!(
                "  broker security:     authentication {}, TLS {}",
                if broker.authentication { "on" } else { "off" },
                if broker.tls { "on" } else { "off" }
            );
            println!(
                "  broker disk ceiling: {}",
                broker.max_disk_bytes.map_or(
                    "none (only retention deletes old messages)".to_owned(),
                    |bytes| format!("{bytes} bytes (oldest messages deleted past it, B5)")
                )
            );
        }
        None => {
            println!("  broker-lite version: older than the describe command");
            println!(
                "  broker flush mode:   not reported by this broker-lite; see its `serve --flush` setting"
            );
            println!("  replication:         not reported (single broker-lite node)");
            println!("  broker retention:    not reported; see its `--retention-hours` setting");
        }
    }
    println!(
        "  send timeout:        {} ms per attempt (P5)",
        settings.send_timeout_ms
    );
    println!("  send retries:        {} (P4)", settings.retries);
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
    println!(
        "  one-way topics:      {} (P3)",
        topics(&settings.oneway_topics)
    );
    println!(
        "  critical topics:     {}",
        topics(&settings.critical_topics)
    );
}

/// `ORDER_CREATED, PAYMENT_DONE`, or `none`.
fn topics(topics: &std::collections::BTreeSet<String>) -> String {
    if topics.is_empty() {
        "none".to_owned()
    } else {
        topics
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The broker addresses as `check` found them: an admin client on the first one that answered,
/// and the others that did not, with why.
struct Reached {
    admin: Admin,
    address: String,
    unreachable: Vec<(String, String)>,
}

/// Tries each address of the failover list on its own and prints what it found: a list whose
/// second broker is down still works today, but will not fail over.
async fn reach_brokers(config: &Config) -> anyhow::Result<Reached> {
    let mut reached = None;
    let mut unreachable = Vec::new();
    let security = config.broker_lite_security()?;
    for address in config.broker_addresses() {
        match ping(address, &security).await {
            Ok(admin) => {
                println!("broker: {address} reachable");
                reached.get_or_insert((admin, address.to_owned()));
            }
            Err(cause) => {
                println!("broker: {address} unreachable: {cause}");
                unreachable.push((address.to_owned(), cause));
            }
        }
    }
    match reached {
        Some((admin, address)) => Ok(Reached {
            admin,
            address,
            unreachable,
        }),
        None => match unreachable.as_slice() {
            [(address, cause)] => anyhow::bail!(
                "cannot reach broker-lite at {address}: {cause}; {}",
                what_to_do(cause)
            ),
            all => anyhow::bail!(
                "cannot reach broker-lite at any of {}: {}; start one, or fix broker.addresses",
                config.broker.addresses,
                all.iter()
                    .map(|(address, cause)| format!("{address}: {cause}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        },
    }
}

/// Start the broker, unless something else answered at its address.
fn what_to_do(cause: &str) -> &'static str {
    if cause.contains("not a broker-lite server") {
        "fix broker.addresses"
    } else {
        "start it, or fix broker.addresses"
    }
}

/// An admin client on `address` alone that has answered a ping, or why not, causes included.
async fn ping(address: &str, security: &broker_lite_client::Security) -> Result<Admin, String> {
    let mut config = AdminConfig::default();
    config.security = security.clone();
    let admin = Admin::connect(address, config)
        .await
        .map_err(|error| causes(&error))?;
    admin.ping().await.map_err(|error| causes(&error))?;
    Ok(admin)
}

/// `error: its source: ...`, each said once.
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut said = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !said.ends_with(&text) {
            said.push_str(": ");
            said.push_str(&text);
        }
        source = cause.source();
    }
    said
}

fn flush_mode(broker: &BrokerDescription) -> String {
    match broker.flush_mode {
        FlushMode::Sync => format!(
            "sync (SYNC_FLUSH: fsync before the answer, FLUSH_DISK_TIMEOUT after {} ms, B1)",
            broker.sync_flush_timeout_ms
        ),
        FlushMode::Async { interval } => {
            format!(
                "async (ASYNC_FLUSH: answered from the page cache, fsync every {} ms, B2)",
                interval.as_millis()
            )
        }
    }
}

fn replication(replication: Replication) -> String {
    match replication {
        Replication::None => "none (single broker-lite node, B3/B4)".to_owned(),
        Replication::SyncMaster {
            min_sync_replicas, ..
        } => format!("SYNC_MASTER ({min_sync_replicas} follower(s) before SEND_OK)"),
        Replication::AsyncMaster => {
            "ASYNC_MASTER (a failover loses the replication lag, B3)".to_owned()
        }
        Replication::Follower => "follower (not a leader: send to the leader)".to_owned(),
    }
}

/// A leader with no follower in its in-sync set: under SYNC_MASTER nothing gets SEND_OK, under
/// ASYNC_MASTER every acknowledged message is on one disk.
fn no_follower_in_sync(broker: &BrokerDescription) -> Option<String> {
    let consequence = match broker.replication {
        Replication::SyncMaster { .. } => {
            "sends answer SLAVE_NOT_AVAILABLE (or FLUSH_SLAVE_TIMEOUT), not SEND_OK, until one \
             catches up"
        }
        Replication::AsyncMaster => "every acknowledged message is on this one disk (B3/B4)",
        Replication::None | Replication::Follower => return None,
    };
    let status = broker.replication_status.as_ref()?;
    if status.followers.iter().any(|f| f.in_sync) {
        return None;
    }
    let followers = if status.followers.is_empty() {
        "none connected".to_owned()
    } else {
        status
            .followers
            .iter()
            .map(|f| format!("{} {} bytes behind", f.name, f.lag_bytes))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Some(format!(
        "broker-lite leads epoch {} with no follower in sync (followers: {followers}): \
         {consequence}; start or repair a follower (`serve --role follower`)",
        status.epoch
    ))
}

/// `72 h`, or with two decimals when not a whole number of hours.
fn hours(ms: u64) -> String {
    if ms % HOUR_MS == 0 {
        format!("{} h", ms / HOUR_MS)
    } else {
        format!("{:.2} h", ms as f64 / HOUR_MS as f64)
    }
}

/// The risky settings (L2), one sentence each.
fn warnings(config: &Config, broker: Option<&BrokerDescription>) -> Vec<String> {
    let settings = &config.broker;
    let relay = &config.relay;
    let critical = &settings.critical_topics;
    let mut warnings = Vec::new();
    if !critical.is_empty() {
        match broker {
            Some(BrokerDescription {
                flush_mode: FlushMode::Async { interval },
                ..
            }) => warnings.push(format!(
                "broker-lite runs with ASYNC_FLUSH (fsync every {} ms) while critical \
                 topics {critical:?} are configured: acknowledged messages can be lost on power \
                 loss (B2); run it with `--flush sync` (SYNC_FLUSH, B1)",
                interval.as_millis()
            )),
            Some(_) => {}
            None => warnings.push(
                "critical topics are configured but this broker-lite does not report its flush \
                 mode: make sure it runs with `--flush sync` (SYNC_FLUSH, B1); ASYNC_FLUSH can \
                 lose acknowledged messages on power loss"
                    .to_owned(),
            ),
        }
        if broker.is_some_and(|b| b.replication == Replication::None) {
            warnings.push(format!(
                "no replication with critical topics {critical:?}: this broker-lite's disk is a \
                 single point of failure, a lost disk loses every stored message (B3/B4); run \
                 it as a SYNC_MASTER leader with a follower (`serve --role leader`, \
                 `--role follower`)"
            ));
        }
        if broker.is_some_and(|b| b.replication == Replication::AsyncMaster) {
            warnings.push(format!(
                "broker-lite is an ASYNC_MASTER leader while critical topics {critical:?} are \
                 configured: it acknowledges before a follower holds a message, so a failover \
                 loses the acknowledged messages of the replication lag (B3); run the leader \
                 with `--replication sync` (SYNC_MASTER)"
            ));
        }
        if settings.retries == 0 {
            warnings.push("broker.retries is 0 with critical topics: a transient error costs a full relay backoff (P4)".to_owned());
        }
        if relay.max_attempts < 3 {
            warnings.push(format!(
                "relay.max_attempts is {} with critical topics: messages reach the failure table after a short outage (P6)",
                relay.max_attempts
            ));
        }
    }
    if let Some(broker) = broker {
        if broker.is_exposed() {
            warnings.push(format!(
                "broker-lite listens on {} (not loopback) with authentication {} and TLS {}: \
                 anyone who can reach it can {}; configure [[users]] and tls_cert/tls_key in its \
                 config (issue 16)",
                broker.listen,
                if broker.authentication { "on" } else { "off" },
                if broker.tls { "on" } else { "off" },
                if broker.authentication {
                    "read the traffic"
                } else {
                    "send, consume, ack and administer"
                }
            ));
        }
        if let Some(w) = no_follower_in_sync(broker) {
            warnings.push(w);
        }
        if broker.retention_ms < MIN_RETENTION_MS {
            warnings.push(format!(
                "broker-lite keeps messages {} (fileReservedTime): messages not consumed within \
                 that time expire and are lost; keep at least 24 h (B5, default 72 h)",
                hours(broker.retention_ms)
            ));
        }
    }
    if !settings.oneway_topics.is_empty() {
        warnings.push(format!(
            "one-way sends are allowed for {:?}: their messages can be lost without trace (P3)",
            settings.oneway_topics
        ));
    }
    if settings.send_timeout_ms < 500 {
        warnings.push(format!(
            "broker.send_timeout_ms is {}: SYNC_FLUSH answers after an fsync, which can take longer",
            settings.send_timeout_ms
        ));
    }
    warnings
}

#[cfg(test)]
mod tests;
