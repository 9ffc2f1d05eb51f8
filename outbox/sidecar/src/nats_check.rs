//! `outbox-relay check` against NATS JetStream: the server, and for each critical topic the stream
//! that captures it (storage, replicas, duplicate window against the relay's retry horizon),
//! with the fsync caveat JetStream always has.

use std::time::Duration;

use async_nats::jetstream::{self, stream::StorageType};

use crate::config::Config;
use crate::publisher;

/// What `check` learnt about the stream of one topic.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StreamFacts {
    pub(crate) topic: String,
    /// `None`: no stream captures the topic.
    pub(crate) stream: Option<(String, StorageType, usize, Duration)>,
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
                "  topic {:?}: stream {name}, {storage:?} storage, {replicas} replica(s), duplicate window {window:?}",
                fact.topic
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
        }];
        assert!(warnings_for(&config, "2.10.1", &single)[0].contains("sync_interval: always"));
    }

    fn warnings_for(config: &Config, version: &str, facts: &[StreamFacts]) -> Vec<String> {
        warnings(config, version, facts)
    }
}
