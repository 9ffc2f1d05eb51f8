//! Admin subcommands, through the [`Admin`] client.

use anyhow::{Context, Result};
use broker_lite_client::protocol::{BrokerDescription, FlushMode, Replication};
use broker_lite_client::{Admin, AdminConfig};
use clap::Subcommand;
use uuid::Uuid;

/// Topic commands.
#[derive(Debug, Subcommand)]
pub(crate) enum TopicsCommand {
    /// Create a topic.
    Create {
        /// Topic name.
        name: String,
        /// Number of queues.
        #[arg(long, default_value_t = 4)]
        queues: u32,
    },
    /// List topics with their queue counts.
    List,
}

/// Dead-letter commands.
#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// List a group's dead letters.
    List {
        /// Consumer group.
        group: String,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        max: u32,
    },
    /// Send a group's dead letters back for consumption, a page at a time, with progress.
    Redrive {
        /// Consumer group.
        group: String,
        /// Only these message ids (repeatable); all when absent.
        #[arg(long = "id")]
        ids: Vec<Uuid>,
    },
}

/// An admin command.
#[derive(Debug, Subcommand)]
pub(crate) enum AdminCommand {
    /// The broker's version and durability settings (flush, replication, retention).
    Describe,
    /// Create or list topics.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// List consumer groups.
    Groups,
    /// Lag of a consumer group per queue.
    Lag {
        /// Consumer group.
        group: String,
    },
    /// Find a message by id or by key.
    Lookup {
        /// Message id.
        #[arg(long, conflicts_with = "key", required_unless_present = "key")]
        id: Option<Uuid>,
        /// Message key (needs --topic).
        #[arg(long, requires = "topic")]
        key: Option<String>,
        /// Topic of the key.
        #[arg(long)]
        topic: Option<String>,
    },
    /// The life of one message, found by id or by key: stored, delivered, acked...
    Trace {
        /// Message id (`outbox_messages.id`, the `message` the producer logged).
        #[arg(conflicts_with = "key", required_unless_present = "key")]
        id: Option<Uuid>,
        /// Message key instead of an id (needs --topic); traces every message with this key.
        #[arg(long, requires = "topic")]
        key: Option<String>,
        /// Topic of the key.
        #[arg(long)]
        topic: Option<String>,
    },
    /// Dead letters.
    #[command(subcommand)]
    Dlq(DlqCommand),
}

/// Runs `command` against the brokers at `addresses`.
pub(crate) async fn run(addresses: &str, command: AdminCommand) -> Result<()> {
    let mut config = AdminConfig::default();
    // BROKER_LITE_USER / _PASSWORD(_FILE) / _TLS_CA: secrets stay out of the command line.
    config.security = broker_lite_client::Security::from_env()?;
    let admin = Admin::connect(addresses, config)
        .await
        .with_context(|| format!("cannot reach a broker at {addresses}"))?;
    match command {
        AdminCommand::Describe => print_description(&admin.describe().await?),
        AdminCommand::Topics(TopicsCommand::Create { name, queues }) => {
            admin.create_topic(&name, queues).await?;
            println!("created topic {name} with {queues} queues");
        }
        AdminCommand::Topics(TopicsCommand::List) => {
            let topics = admin.topics().await?;
            println!("{:<40} {:>6}", "TOPIC", "QUEUES");
            for t in topics {
                println!("{:<40} {:>6}", t.name, t.queues);
            }
        }
        AdminCommand::Groups => {
            let groups = admin.groups().await?;
            println!("{:<30} {:<12} {:<30} MEMBERS", "GROUP", "MODEL", "TOPICS");
            for g in groups {
                let model = format!("{:?}", g.model).to_lowercase();
                println!(
                    "{:<30} {:<12} {:<30} {}",
                    g.name,
                    model,
                    g.topics.join(","),
                    g.members.join(",")
                );
            }
        }
        AdminCommand::Lag { group } => {
            let lags = admin.lag(&group).await?;
            // A clustering group shares one cursor per queue among its members, so the broker
            // names no member per queue; say who the members are instead of a column of `-`.
            let per_member = lags.iter().any(|l| l.consumer_id.is_some());
            let member_column = if per_member { " MEMBER" } else { "" };
            println!(
                "{:<30} {:>5} {:>12} {:>12} {:>10} {:>10}{member_column}",
                "TOPIC", "QUEUE", "COMMITTED", "MAX", "LAG", "UNSETTLED"
            );
            for l in &lags {
                let member = match &l.consumer_id {
                    Some(member) => format!(" {member}"),
                    None => String::new(),
                };
                println!(
                    "{:<30} {:>5} {:>12} {:>12} {:>10} {:>10}{member}",
                    l.topic, l.queue_id, l.committed, l.max, l.lag, l.unsettled,
                );
            }
            println!("total lag: {}", lags.iter().map(|l| l.lag).sum::<u64>());
            if !per_member {
                let members = admin
                    .groups()
                    .await?
                    .into_iter()
                    .find(|g| g.name == group)
                    .map(|g| g.members)
                    .unwrap_or_default();
                println!(
                    "members (clustering: the queues are shared out among them): {}",
                    if members.is_empty() {
                        "none connected".to_owned()
                    } else {
                        members.join(", ")
                    }
                );
            }
        }
        AdminCommand::Lookup { id, key, topic } => {
            let messages = match (id, key, topic) {
                (Some(id), _, _) => admin.lookup_by_id(id).await?.into_iter().collect(),
                (None, Some(key), Some(topic)) => admin.lookup_by_key(&topic, &key, 100).await?,
                _ => anyhow::bail!("pass --id, or --key with --topic"),
            };
            if messages.is_empty() {
                anyhow::bail!("no such message");
            }
            for m in messages {
                println!(
                    "{} {}:{}@{} key={} tag={} stored={} body={}",
                    m.message_id,
                    m.topic,
                    m.queue_id,
                    m.queue_offset,
                    m.key.as_deref().unwrap_or("-"),
                    m.tag.as_deref().unwrap_or("-"),
                    timestamp(m.stored_timestamp_ms),
                    String::from_utf8_lossy(&m.body)
                );
            }
        }
        AdminCommand::Trace { id, key, topic } => {
            let ids = match (id, key, topic) {
                (Some(id), _, _) => vec![id],
                (None, Some(key), Some(topic)) => {
                    let found = admin.lookup_by_key(&topic, &key, 100).await?;
                    if found.is_empty() {
                        anyhow::bail!("no message with key {key:?} in topic {topic}");
                    }
                    found.into_iter().map(|m| m.message_id).collect()
                }
                _ => anyhow::bail!("pass a message id, or --key with --topic"),
            };
            for id in ids {
                let events = admin.trace(id).await?;
                if events.is_empty() {
                    anyhow::bail!(
                        "no trace for {id}: the broker never stored it, or it restarted since (the \
                         trace is in memory); `lookup --id {id}` finds a stored message"
                    );
                }
                println!("message {id}");
                for e in events {
                    println!(
                        "  {}  {:<14} {}",
                        timestamp(e.timestamp_ms),
                        e.event,
                        e.detail
                    );
                }
            }
        }
        AdminCommand::Dlq(DlqCommand::List { group, max }) => {
            for m in admin.dead_letters(&group, max).await? {
                println!(
                    "{} {}@{} {}",
                    m.message_id,
                    m.topic,
                    m.queue_offset,
                    String::from_utf8_lossy(&m.body)
                );
            }
        }
        AdminCommand::Dlq(DlqCommand::Redrive { group, ids }) => {
            let n = crate::redrive::redrive(&admin, &group, ids).await?;
            println!("redrove {n} dead letters of group {group}");
        }
    }
    Ok(())
}

fn print_description(d: &BrokerDescription) {
    let flush = match d.flush_mode {
        FlushMode::Sync => format!(
            "sync (SYNC_FLUSH; fsync before the answer, FLUSH_DISK_TIMEOUT after {} ms)",
            d.sync_flush_timeout_ms
        ),
        FlushMode::Async { interval } => {
            format!(
                "async (ASYNC_FLUSH; fsync every {} ms)",
                interval.as_millis()
            )
        }
    };
    let replication = match d.replication {
        Replication::None => "none (single node)".to_owned(),
        Replication::SyncMaster {
            min_sync_replicas,
            slave_timeout,
        } => format!(
            "SYNC_MASTER leader (SEND_OK once {min_sync_replicas} follower(s) hold the message; slave timeout {} ms)",
            slave_timeout.as_millis()
        ),
        Replication::AsyncMaster => {
            "ASYNC_MASTER leader (acknowledged before replication: a failover loses the lag)"
                .to_owned()
        }
        Replication::Follower => "follower (takes no sends until promoted)".to_owned(),
    };
    println!("version:             {}", d.version);
    println!("flush mode:          {flush}");
    println!("replication:         {replication}");
    if let Some(r) = &d.replication_status {
        println!("epoch:               {}", r.epoch);
        println!("log end:             {}", r.log_end);
        println!("commit position:     {}", r.commit_position);
        if let Some(leader) = &r.leader {
            println!("leader:              {leader}");
        }
        let in_sync: Vec<&str> = r
            .followers
            .iter()
            .filter(|f| f.in_sync)
            .map(|f| f.name.as_str())
            .collect();
        if r.leader.is_none() {
            println!("in-sync followers:   {in_sync:?}");
        }
        for f in &r.followers {
            println!(
                "follower {}: acked {} lag {} bytes, {}, last fetch {} ms ago",
                f.name,
                f.acked_position,
                f.lag_bytes,
                if f.in_sync { "in sync" } else { "NOT in sync" },
                f.since_fetch_ms
            );
        }
    }
    println!("retention:           {}", retention(d.retention_ms));
    println!(
        "max disk bytes:      {}",
        d.max_disk_bytes
            .map_or("none".to_owned(), |bytes| bytes.to_string())
    );
    println!("max message size:    {} bytes", d.max_message_size);
    println!("consume timeout:     {} ms", d.consume_timeout_ms);
    println!("max reconsume times: {}", d.max_reconsume_times);
    println!("listen:              {}", d.listen);
    println!(
        "authentication:      {}",
        on_off(d.authentication, "SCRAM-SHA-256, per-user permissions")
    );
    println!("tls:                 {}", on_off(d.tls, "rustls"));
    if d.is_exposed() {
        println!(
            "warning:             the broker listens on a non-loopback address without {}: \
             anyone who can reach it can read or change what it is not protected against",
            match (d.authentication, d.tls) {
                (false, false) => "authentication and TLS",
                (false, true) => "authentication",
                _ => "TLS",
            }
        );
    } else if !d.authentication {
        println!(
            "note:                open broker on loopback: every local process may do anything"
        );
    }
}

fn on_off(on: bool, what: &str) -> String {
    if on {
        format!("on ({what})")
    } else {
        "off".to_owned()
    }
}

/// `72 h`, or fractional hours with the exact milliseconds when not a whole number of hours.
fn retention(ms: u64) -> String {
    const HOUR: u64 = 3_600_000;
    if ms % HOUR == 0 {
        format!("{} h", ms / HOUR)
    } else {
        format!("{:.2} h ({ms} ms)", ms as f64 / HOUR as f64)
    }
}

/// `2026-11-30 08:00:00.123 UTC` for milliseconds since the Unix epoch.
pub(crate) fn timestamp(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(
            || format!("{ms} ms after the epoch"),
            |at| at.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string(),
        )
}

#[cfg(test)]
mod tests {
    use super::timestamp;

    #[test]
    fn timestamps_are_readable_utc() {
        assert_eq!(timestamp(1_764_489_600_123), "2025-11-30 08:00:00.123 UTC");
        assert_eq!(
            timestamp(u64::MAX),
            "18446744073709551615 ms after the epoch"
        );
    }
}
