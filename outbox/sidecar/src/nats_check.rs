//! `outbox-relay check` against NATS JetStream: the server, and for each critical topic the stream
//! that captures it (storage, replicas, duplicate window against the relay's retry horizon,
//! retention, expiry and discard policy: whatever can drop an acknowledged message), with the
//! fsync caveat JetStream always has.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    stream::{DiscardPolicy, RetentionPolicy, StorageType},
};

use crate::config::Config;
use crate::publisher;

/// What `check` learnt about the stream of one topic.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StreamFacts {
    pub(crate) topic: String,
    /// `None`: no stream captures the topic.
    pub(crate) stream: Option<(String, StorageType, usize, Duration)>,
    /// The stream's settings that delete messages whatever the consumers did.
    pub(crate) deletion: Deletion,
}

/// How a stream deletes messages on its own.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Deletion {
    pub(crate) retention: Option<RetentionPolicy>,
    /// Zero: never.
    pub(crate) max_age: Duration,
    /// Old messages deleted when `max_messages` or `max_bytes` is reached.
    pub(crate) discards_old_when_full: bool,
}

pub(crate) async fn run(config: &Config) -> anyhow::Result<()> {
    let publisher = publisher::nats(config).await?;
    let client = publisher.client();
    let version = client.server_info().version;
    println!(
        "broker: reachable (NATS {version} at {})",
        config.broker.addresses
    );
    let jetstream = publisher.jetstream().clone();
    let mut facts = Vec::new();
    for topic in &config.broker.critical_topics {
        facts.push(stream_facts(&jetstream, topic).await?);
    }

    println!("durability profile:");
    println!("  nats-server version: {version}");
    for fact in &facts {
        match &fact.stream {
            Some((name, storage, replicas, window)) => println!(
                "  topic {:?}: stream {name}, {storage:?} storage, {replicas} replica(s), duplicate window {window:?}, {:?} retention, max_age {:?}",
                fact.topic,
                fact.deletion.retention.unwrap_or(RetentionPolicy::Limits),
                fact.deletion.max_age,
            ),
            None => println!("  topic {:?}: no stream captures it", fact.topic),
        }
    }
    println!(
        "  PubAck wait:         {} ms per attempt",
        config.broker.send_timeout_ms
    );
    println!(
        "  relay retry horizon: {:?} over {} attempts",
        config.retry_horizon(),
        config.relay.max_attempts
    );
    println!("  critical topics:     {:?}", config.broker.critical_topics);

    let warnings = warnings(config, &version, &facts);
    for warning in &warnings {
        println!("WARNING: {warning}");
    }
    println!("{} warning(s)", warnings.len());
    Ok(())
}

async fn stream_facts(jetstream: &jetstream::Context, topic: &str) -> anyhow::Result<StreamFacts> {
    let Ok(name) = jetstream.stream_by_subject(topic).await else {
        return Ok(StreamFacts {
            topic: topic.to_owned(),
            stream: None,
            deletion: Deletion::default(),
        });
    };
    let mut stream = jetstream.get_stream(&name).await?;
    let config = &stream.info().await?.config;
    Ok(StreamFacts {
        topic: topic.to_owned(),
        stream: Some((
            name,
            config.storage,
            config.num_replicas.max(1),
            config.duplicate_window,
        )),
        deletion: Deletion {
            retention: Some(config.retention),
            max_age: config.max_age,
            discards_old_when_full: config.discard == DiscardPolicy::Old
                && (config.max_messages > 0 || config.max_bytes > 0),
        },
    })
}

/// `(major, minor)` of a `2.10.3`-style version.
fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.trim_start_matches('v').split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The risky settings, one sentence each.
pub(crate) fn warnings(config: &Config, version: &str, facts: &[StreamFacts]) -> Vec<String> {
    let mut warnings = Vec::new();
    let horizon = config.retry_horizon();
    let sync_option = match major_minor(version) {
        Some(v) if v >= (2, 10) => "set `jetstream { sync_interval: always }` in the server configuration (every write fsynced before the ack, slower)".to_owned(),
        _ => format!("nats-server {version} has no `sync_interval` option (2.10 and later have `jetstream {{ sync_interval: always }}`)"),
    };
    for fact in facts {
        let topic = &fact.topic;
        let Some((name, storage, replicas, window)) = &fact.stream else {
            warnings.push(format!(
                "no stream captures critical topic {topic:?}: publishes get no responders and the relay pauses until a stream exists (StreamSpec::ensure, or `nats stream add`)"
            ));
            continue;
        };
        if *storage == StorageType::Memory {
            warnings.push(format!(
                "stream {name} (topic {topic:?}) uses memory storage: a server restart loses every message in it; use file storage"
            ));
        }
        if *replicas < 3 {
            warnings.push(format!(
                "stream {name} (topic {topic:?}) has {replicas} replica(s) and JetStream acknowledges a publish before it is fsynced (every 2 minutes by default): a machine crash can lose acknowledged messages; run 3 replicas on a cluster, or {sync_option}"
            ));
        }
        match fact.deletion.retention {
            Some(RetentionPolicy::Interest) => warnings.push(format!(
                "stream {name} (topic {topic:?}) has interest retention: a message published while no consumer is subscribed is acknowledged and then deleted; use limits retention"
            )),
            Some(RetentionPolicy::WorkQueue) => warnings.push(format!(
                "stream {name} (topic {topic:?}) has work-queue retention: a message is deleted once any one consumer acks it, so a second consumer group never sees it and a message no filter matches is refused; use limits retention"
            )),
            _ => {}
        }
        if fact.deletion.max_age > Duration::ZERO {
            warnings.push(format!(
                "stream {name} (topic {topic:?}) deletes messages after {:?} (max_age) whether consumed or not: a consumer down longer loses them; set max_age 0 or longer than any outage",
                fact.deletion.max_age
            ));
        }
        if fact.deletion.discards_old_when_full {
            warnings.push(format!(
                "stream {name} (topic {topic:?}) discards its oldest messages when max_messages or max_bytes is reached, consumed or not; use discard new (a full stream then refuses publishes and the relay keeps them)"
            ));
        }
        if *window < horizon {
            warnings.push(format!(
                "stream {name} (topic {topic:?}) deduplicates for {window:?} but the relay may republish a message up to {horizon:?} after its first attempt: a late retry is stored twice (consumers must deduplicate); raise the stream's duplicate_window or lower relay.max_attempts / backoff"
            ));
        }
    }
    if facts.is_empty() {
        warnings.push(format!(
            "no critical topics configured, so no stream was audited; note that JetStream acknowledges before fsync (every 2 minutes by default): use 3 replicas, or {sync_option}"
        ));
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        toml::from_str(
            "[broker]\naddresses = \"nats://127.0.0.1:4222\"\ncritical_topics = [\"orders\"]\n",
        )
        .unwrap()
    }

    #[test]
    fn a_single_replica_a_memory_stream_and_a_short_window_are_each_reported() {
        let config = config();
        assert_eq!(config.broker_kind(), crate::config::BrokerKind::Nats);
        let facts = [StreamFacts {
            topic: "orders".into(),
            stream: Some((
                "ORDERS".into(),
                StorageType::Memory,
                1,
                Duration::from_secs(120),
            )),
            deletion: Deletion::default(),
        }];
        let warnings = warnings(&config, "2.9.10", &facts);
        assert_eq!(warnings.len(), 3, "{warnings:#?}");
        assert!(warnings[0].contains("memory storage"));
        assert!(
            warnings[1].contains("has no `sync_interval` option"),
            "{}",
            warnings[1]
        );
        assert!(
            warnings[2].contains("deduplicates for 120s"),
            "{}",
            warnings[2]
        );
        let durable = [StreamFacts {
            topic: "orders".into(),
            stream: Some((
                "ORDERS".into(),
                StorageType::File,
                3,
                Duration::from_secs(30 * 86400),
            )),
            deletion: Deletion::default(),
        }];
        assert!(warnings_for(&config, "2.10.1", &durable).is_empty());
        let single = [StreamFacts {
            topic: "orders".into(),
            stream: Some((
                "ORDERS".into(),
                StorageType::File,
                1,
                Duration::from_secs(30 * 86400),
            )),
            deletion: Deletion::default(),
        }];
        assert!(warnings_for(&config, "2.10.1", &single)[0].contains("sync_interval: always"));
    }

    #[test]
    fn streams_that_delete_unconsumed_messages_are_reported() {
        let config = config();
        let facts = [StreamFacts {
            topic: "orders".into(),
            stream: Some((
                "ORDERS".into(),
                StorageType::File,
                3,
                Duration::from_secs(30 * 86400),
            )),
            deletion: Deletion {
                retention: Some(RetentionPolicy::Interest),
                max_age: Duration::from_secs(3600),
                discards_old_when_full: true,
            },
        }];
        let warnings = warnings_for(&config, "2.10.1", &facts);
        assert_eq!(warnings.len(), 3, "{warnings:#?}");
        assert!(warnings[0].contains("interest retention"));
        assert!(warnings[1].contains("after 3600s (max_age)"));
        assert!(warnings[2].contains("discards its oldest"));
    }

    fn warnings_for(config: &Config, version: &str, facts: &[StreamFacts]) -> Vec<String> {
        warnings(config, version, facts)
    }
}
