//! `outbox-relay topology apply` and `topology check`: the streams (NATS) or exchanges and queues
//! (RabbitMQ) the configured topics and consumer groups need, with durable defaults, created when
//! missing and never changed when present. An existing stream or queue that contradicts the
//! configuration (memory storage, a classic queue …) is an error naming the field; broker-lite
//! needs nothing provisioned.
//!
//! ```toml
//! [topology]
//! topics = ["ORDER_CREATED", "PAYMENT_DONE"]
//! groups = { payment-service = ["ORDER_CREATED"] }
//! replicas = 3                    # NATS streams; default 1
//! duplicate_window_ms = 3600000   # NATS; default the relay's retry horizon, at least 2 minutes
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use courier_middleware::lapin::{Connection, ConnectionProperties};
use courier_middleware::nats::{DEFAULT_DUPLICATE_WINDOW, Provisioned, StreamSpec, TopologyError};
use courier_middleware::{AuditFinding, RabbitMqSourceConfig, RabbitMqTopology};
use serde::Deserialize;

use crate::config::{BrokerKind, Config};
use crate::publisher;

/// `[topology]`: what the relay's topics and their consumers need on the broker.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct TopologySettings {
    /// Topics the relay publishes: a stream each on NATS ([`StreamSpec::for_topic`]), a durable
    /// topic exchange each on RabbitMQ.
    pub(crate) topics: BTreeSet<String>,
    /// Consumer groups and the topics each consumes. RabbitMQ: the group's quorum queue, delay
    /// queues and dead-letter queue bound to each topic's exchange, as `RabbitMqSource` declares
    /// them with its defaults. NATS: each consumed topic's dead-letter stream (the durable
    /// consumer itself is the source's, with its `ack_wait`).
    pub(crate) groups: BTreeMap<String, BTreeSet<String>>,
    /// NATS: copies of each stream (default 1; 3 on a cluster).
    pub(crate) replicas: Option<usize>,
    /// NATS: each stream's duplicate window (default: the relay's retry horizon, at least 2 min).
    pub(crate) duplicate_window_ms: Option<u64>,
}

/// `outbox-relay topology …`.
#[derive(Debug, Subcommand)]
pub(crate) enum TopologyCommand {
    /// Create the streams / exchanges / queues the topics and groups need; existing ones are
    /// checked, never changed. Idempotent.
    Apply(TopologyArgs),
    /// Compare what exists with what the topics and groups need, changing nothing; exit 1 when
    /// something is missing or contradicts the configuration.
    Check(TopologyArgs),
}

/// Topics and groups given on the command line, added to `[topology]`.
#[derive(Debug, clap::Args)]
pub(crate) struct TopologyArgs {
    /// A topic the relay publishes (repeatable).
    #[arg(long = "topic", value_name = "TOPIC")]
    topics: Vec<String>,
    /// A consumer group and a topic it consumes (repeatable).
    #[arg(long = "group", value_name = "GROUP=TOPIC", value_parser = group_and_topic)]
    groups: Vec<(String, String)>,
}

fn group_and_topic(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((group, topic)) if !group.is_empty() && !topic.is_empty() => {
            Ok((group.to_owned(), topic.to_owned()))
        }
        _ => Err(format!(
            "{value:?} is not GROUP=TOPIC, e.g. payment-service=ORDER_CREATED"
        )),
    }
}

pub(crate) async fn run(config: &Config, command: TopologyCommand) -> anyhow::Result<()> {
    let (args, apply) = match command {
        TopologyCommand::Apply(args) => (args, true),
        TopologyCommand::Check(args) => (args, false),
    };
    let mut settings = config.topology.clone();
    settings.topics.extend(args.topics);
    for (group, topic) in args.groups {
        settings.groups.entry(group).or_default().insert(topic);
    }
    // A consumed topic is a topic too.
    let consumed: BTreeSet<String> = settings.groups.values().flatten().cloned().collect();
    settings.topics.extend(consumed);
    if settings.topics.is_empty() {
        bail!(
            "no topics to provision: pass --topic TOPIC (and --group GROUP=TOPIC), or set \
             topology.topics in the config file"
        );
    }
    let outcome = match config.broker_kind() {
        BrokerKind::BrokerLite => {
            println!(
                "broker-lite creates a topic when its first message arrives and a consumer group \
                 when it first subscribes: nothing to provision for {:?}",
                settings.topics
            );
            return Ok(());
        }
        BrokerKind::Nats => nats(config, &settings, apply).await?,
        BrokerKind::RabbitMq => rabbitmq(config, &settings, apply).await?,
    };
    outcome.finish(apply)
}

/// What a run found, counted.
#[derive(Debug, Default)]
struct Outcome {
    created: usize,
    unchanged: usize,
    missing: usize,
    contradictions: usize,
}

impl Outcome {
    fn finish(self, apply: bool) -> anyhow::Result<()> {
        let Self {
            created,
            unchanged,
            missing,
            contradictions,
        } = self;
        if apply {
            match created {
                0 => println!("nothing to change: {unchanged} already as configured"),
                _ => println!("{created} created, {unchanged} already as configured"),
            }
            return Ok(());
        }
        if missing + contradictions > 0 {
            bail!(
                "{missing} missing and {contradictions} contradicting the configuration \
                 ({unchanged} as configured): run `outbox-relay topology apply` for the missing; \
                 a contradiction needs the operator (see the lines above)"
            );
        }
        println!("everything as configured: {unchanged} checked");
        Ok(())
    }
}

/// The streams: one per topic, and the dead-letter stream of each consumed topic, as
/// `NatsSourceConfig::new` provisions it.
fn nats_streams(config: &Config, settings: &TopologySettings) -> Vec<StreamSpec> {
    let window = settings
        .duplicate_window_ms
        .map(Duration::from_millis)
        .unwrap_or_else(|| whole_minutes(config.retry_horizon()).max(DEFAULT_DUPLICATE_WINDOW));
    let replicas = settings.replicas.unwrap_or(1);
    let consumed: BTreeSet<&String> = settings.groups.values().flatten().collect();
    let mut specs = Vec::new();
    for topic in &settings.topics {
        let stream = StreamSpec::for_topic(topic)
            .replicas(replicas)
            .duplicate_window(window);
        if consumed.contains(topic) {
            let name = stream.name().to_owned();
            specs.push(stream);
            specs.push(
                StreamSpec::new(
                    format!("{name}_DEAD_LETTERS"),
                    [format!("courier.dead-letter.{name}.>")],
                )
                .replicas(replicas),
            );
        } else {
            specs.push(stream);
        }
    }
    specs
}

/// `duration` rounded up to whole minutes.
fn whole_minutes(duration: Duration) -> Duration {
    Duration::from_secs(duration.as_secs().div_ceil(60) * 60)
}

fn describe(spec: &StreamSpec) -> String {
    let config = spec.config();
    format!(
        "{:?} storage, {} replica(s), duplicate window {:?}, subjects {:?}",
        config.storage, config.num_replicas, config.duplicate_window, config.subjects
    )
}

async fn nats(
    config: &Config,
    settings: &TopologySettings,
    apply: bool,
) -> anyhow::Result<Outcome> {
    let publisher = publisher::nats(config).await?;
    let jetstream = publisher.jetstream();
    let mut outcome = Outcome::default();
    for spec in nats_streams(config, settings) {
        let name = spec.name();
        if apply {
            let (_, provisioned) = spec
                .apply(jetstream)
                .await
                .with_context(|| format!("provisioning NATS stream {name}"))?;
            match provisioned {
                Provisioned::Created => {
                    outcome.created += 1;
                    println!("stream {name}: created ({})", describe(&spec));
                }
                _ => {
                    outcome.unchanged += 1;
                    println!("stream {name}: exists, at least as durable as configured");
                }
            }
            continue;
        }
        match spec.verify(jetstream).await {
            Ok(Some(_)) => {
                outcome.unchanged += 1;
                println!("stream {name}: as configured");
            }
            Ok(None) => {
                outcome.missing += 1;
                println!(
                    "stream {name}: missing (apply creates it: {})",
                    describe(&spec)
                );
            }
            Err(error @ TopologyError::Contradicts { .. }) => {
                outcome.contradictions += 1;
                println!("stream {name}: {error}");
            }
            Err(error) => return Err(error).context(format!("checking NATS stream {name}")),
        }
    }
    if !settings.groups.is_empty() {
        println!(
            "(the durable consumers of {:?} are created by each consumer's NatsSource, with its ack_wait)",
            settings.groups.keys().collect::<Vec<_>>()
        );
    }
    Ok(outcome)
}

/// The exchanges of the topics, then each group's queues and bindings.
fn rabbitmq_topologies(settings: &TopologySettings) -> Vec<RabbitMqTopology> {
    let mut exchanges = RabbitMqTopology::new();
    for topic in &settings.topics {
        exchanges = exchanges.exchange(topic);
    }
    let mut all = vec![exchanges];
    for (group, topics) in &settings.groups {
        let config = topics
            .iter()
            .fold(RabbitMqSourceConfig::new(group), |c, topic| {
                c.bind(topic, "#")
            });
        all.push(config.topology());
    }
    all
}

async fn rabbitmq(
    config: &Config,
    settings: &TopologySettings,
    apply: bool,
) -> anyhow::Result<Outcome> {
    let address = config.broker.addresses.trim();
    let connection = Connection::connect(address, ConnectionProperties::default())
        .await
        .map_err(|error| {
            anyhow::anyhow!(
                "cannot reach RabbitMQ at {}: {error}; start it, or fix broker.addresses",
                crate::rabbitmq_check::redacted(address)
            )
        })?;
    let mut outcome = Outcome::default();
    let mut result = Ok(());
    for topology in rabbitmq_topologies(settings) {
        let findings = match apply {
            true => topology.apply_on(&connection).await,
            false => topology.audit_on(&connection).await,
        };
        let findings = match findings {
            Ok(findings) => findings,
            Err(error) => {
                result = Err(error);
                break;
            }
        };
        for finding in findings {
            match finding {
                AuditFinding::Created { kind, name } => {
                    outcome.created += 1;
                    println!("{kind} {name}: created (durable{})", quorum(kind));
                }
                AuditFinding::Matches { kind, name } => {
                    outcome.unchanged += 1;
                    println!("{kind} {name}: as configured");
                }
                AuditFinding::Missing { kind, name } => {
                    outcome.missing += 1;
                    println!("{kind} {name}: missing (apply declares it)");
                }
                AuditFinding::Differs {
                    kind,
                    name,
                    argument,
                    expected,
                } => {
                    outcome.contradictions += 1;
                    println!(
                        "{kind} {name}: exists with a different {argument} (the configuration declares {expected}); drain and delete it, or change the configuration"
                    );
                }
                other => println!("{other:?}"),
            }
        }
    }
    let _ = connection.close(200, "topology").await;
    result.context("declaring the RabbitMQ topology")?;
    Ok(outcome)
}

fn quorum(kind: &str) -> &'static str {
    if kind == "queue" {
        ", quorum"
    } else {
        ", topic exchange"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_cover_the_retry_horizon_and_consumed_topics_get_a_dead_letter_stream() {
        let config: Config = toml::from_str(
            "[broker]\naddresses = \"nats://127.0.0.1:4222\"\n\
             [topology]\ntopics = [\"ORDER_CREATED\", \"PAYMENT_DONE\"]\n\
             groups = { payment-service = [\"ORDER_CREATED\"] }\n",
        )
        .unwrap();
        let streams = nats_streams(&config, &config.topology);
        let names: Vec<&str> = streams.iter().map(StreamSpec::name).collect();
        assert_eq!(
            names,
            [
                "ORDER_CREATED",
                "ORDER_CREATED_DEAD_LETTERS",
                "PAYMENT_DONE"
            ]
        );
        let window = streams[0].config().duplicate_window;
        assert!(window >= config.retry_horizon(), "{window:?}");
        assert_eq!(window.as_secs() % 60, 0);
        assert_eq!(
            group_and_topic("billing=orders").unwrap(),
            ("billing".into(), "orders".into())
        );
        assert!(
            group_and_topic("billing")
                .unwrap_err()
                .contains("GROUP=TOPIC")
        );
    }
}
