//! `outbox-relay check` against RabbitMQ: the broker, publisher confirms, the exchange of each
//! critical topic, and the consumer queues named in `broker.audit_queues` (AMQP cannot list the
//! queues bound to an exchange, so they are named).

use courier_middleware::lapin::options::ConfirmSelectOptions;
use courier_middleware::lapin::{Connection, ConnectionProperties};
use courier_middleware::{AuditFinding, RabbitMqSourceConfig, RabbitMqTopology};

use crate::config::Config;

pub(crate) async fn run(config: &Config) -> anyhow::Result<()> {
    let address = config.broker.addresses.trim();
    let shown = redacted(address);
    let connection = Connection::connect(address, ConnectionProperties::default())
        .await
        .map_err(|error| {
            anyhow::anyhow!(
                "cannot reach RabbitMQ at {shown}: {error}; start it, or fix broker.addresses"
            )
        })?;
    println!("broker: reachable (RabbitMQ at {shown})");
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|error| anyhow::anyhow!("RabbitMQ refused publisher confirms: {error}"))?;
    let _ = channel.close(200, "checked").await;

    let mut exchanges = RabbitMqTopology::new();
    for topic in &config.broker.critical_topics {
        exchanges = exchanges.exchange(topic);
    }
    let mut findings = exchanges.audit_on(&connection).await?;
    for queue in audited_queues(config) {
        // The declaration RabbitMqSource makes with its defaults.
        let topology = RabbitMqSourceConfig::new(queue).topology();
        let work = topology
            .queues()
            .iter()
            .find(|q| q.name() == queue)
            .cloned()
            .expect("the source topology declares its queue");
        findings.extend(
            RabbitMqTopology::new()
                .queue(work)
                .audit_on(&connection)
                .await?,
        );
    }
    let _ = connection.close(200, "checked").await;

    println!("durability profile:");
    println!("  publisher confirms:  always on, awaited per message (mandatory, persistent)");
    println!(
        "  confirm wait:        {} ms per attempt",
        config.broker.send_timeout_ms
    );
    for finding in &findings {
        println!("  {}", describe(finding));
    }
    println!("  critical topics:     {:?}", config.broker.critical_topics);
    println!("  audited queues:      {:?}", audited_queues(config));
    let warnings = warnings(config, &findings);
    for warning in &warnings {
        println!("WARNING: {warning}");
    }
    println!("{} warning(s)", warnings.len());
    Ok(())
}

fn describe(finding: &AuditFinding) -> String {
    match finding {
        AuditFinding::Matches { kind, name } if *kind == "queue" => {
            format!("queue {name:?}: durable quorum queue as courier declares it")
        }
        AuditFinding::Matches { kind, name } => format!("{kind} {name:?}: durable topic exchange"),
        AuditFinding::Missing { kind, name } => format!("{kind} {name:?}: missing"),
        AuditFinding::Differs {
            kind,
            name,
            argument,
            expected,
        } => format!("{kind} {name:?}: {argument} differs (courier declares {expected})"),
        other => format!("{other:?}"),
    }
}

/// The risky findings, one sentence each.
pub(crate) fn warnings(config: &Config, findings: &[AuditFinding]) -> Vec<String> {
    let mut warnings = Vec::new();
    for finding in findings {
        match finding {
            AuditFinding::Missing { kind, name } if *kind == "exchange" => warnings.push(format!(
                "no exchange for critical topic {name:?}: every publish fails (the relay keeps the rows and retries) until it exists; start the consumer (RabbitMqSource declares it) or declare it with RabbitMqTopology"
            )),
            AuditFinding::Missing { name, .. } => warnings.push(format!(
                "queue {name:?} does not exist: messages published before it is declared and bound are returned as unroutable (and retried)"
            )),
            AuditFinding::Differs { name, argument, .. } if argument == "x-queue-type" => {
                warnings.push(format!(
                    "queue {name:?} is not a quorum queue: a confirmed message lives on one node, and that node's disk loss loses it; move it to a quorum queue (declare a new one and shovel the messages)"
                ));
            }
            AuditFinding::Differs { kind, name, argument, .. } if argument == "durable" => {
                warnings.push(format!(
                    "{kind} {name:?} is not durable: a broker restart deletes it and its messages; declare it durable"
                ));
            }
            AuditFinding::Differs {
                kind,
                name,
                argument,
                expected,
            } => warnings.push(format!(
                "{kind} {name:?} differs from what courier declares in {argument} (courier: {expected}); its durability could not be confirmed"
            )),
            _ => {}
        }
    }
    if config.broker.critical_topics.is_empty() {
        warnings.push("no critical topics configured, so no exchange was audited".to_owned());
    } else if audited_queues(config).is_empty() {
        warnings.push(
            "no consumer queue audited: a confirmed message lives in the queues bound to the exchange, and a classic or non-durable one can lose it; name them in broker.audit_queues (or topology.groups)"
                .to_owned(),
        );
    }
    warnings
}

/// `broker.audit_queues` and the consumer groups of `[topology]` (a group's queue is its name).
fn audited_queues(config: &Config) -> std::collections::BTreeSet<&String> {
    let groups = config.topology.groups.keys();
    config.broker.audit_queues.iter().chain(groups).collect()
}

/// `amqp://user:password@host/vhost` as `amqp://host/vhost`.
pub(crate) fn redacted(uri: &str) -> String {
    match uri.split_once("://") {
        Some((scheme, rest)) => {
            format!(
                "{scheme}://{}",
                rest.rsplit_once('@').map_or(rest, |(_, host)| host)
            )
        }
        None => uri.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_non_durable_and_missing_are_each_reported() {
        let config: Config = toml::from_str(
            "[broker]\naddresses = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\ncritical_topics = [\"orders\"]\n",
        )
        .unwrap();
        assert_eq!(config.broker_kind(), crate::config::BrokerKind::RabbitMq);
        let findings = [
            AuditFinding::Missing {
                kind: "exchange",
                name: "orders".into(),
            },
            AuditFinding::Differs {
                kind: "queue",
                name: "billing".into(),
                argument: "x-queue-type".into(),
                expected: "quorum".into(),
            },
            AuditFinding::Differs {
                kind: "queue",
                name: "audit".into(),
                argument: "durable".into(),
                expected: "durable".into(),
            },
            AuditFinding::Matches {
                kind: "queue",
                name: "shipping".into(),
            },
        ];
        let warnings = warnings(&config, &findings);
        assert_eq!(warnings.len(), 4, "{warnings:#?}");
        assert!(
            warnings[3].contains("no consumer queue audited"),
            "{warnings:#?}"
        );
        assert!(warnings[0].contains("no exchange for critical topic"));
        assert!(warnings[1].contains("not a quorum queue"));
        assert!(warnings[2].contains("not durable"));
        assert_eq!(redacted("amqp://u:p@h:5672/v"), "amqp://h:5672/v");
    }
}
