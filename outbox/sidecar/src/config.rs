//! The sidecar's settings: a TOML file, overridden by environment variables and flags.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

/// The shortest `broker.send_timeout_ms` accepted: below it, sends time out before a plausible
/// fsync and every retry stores the message again.
const MIN_SEND_TIMEOUT_MS: u64 = 100;
/// The largest batch the relay accepts (its own limit).
const MAX_BATCH_SIZE: usize = 100_000;

/// Everything `outbox-relay` can be told. Durations are in milliseconds unless named otherwise.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Config {
    /// The application's database (Postgres, or MySQL / MariaDB), where the outbox tables live.
    pub(crate) database_url: Option<String>,
    pub(crate) broker: BrokerSettings,
    pub(crate) relay: RelaySettings,
    pub(crate) http: HttpSettings,
    pub(crate) telemetry: TelemetrySettings,
    pub(crate) topology: crate::topology::TopologySettings,
    pub(crate) console: ConsoleSettings,
}

/// The web console under `/console` on the HTTP listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ConsoleSettings {
    /// Serve the console (default true).
    pub(crate) enabled: bool,
    /// File holding the token write actions need (or `OUTBOX_RELAY_CONSOLE_TOKEN`). Without one,
    /// writes are allowed only when `http.listen` is a loopback address.
    pub(crate) token_file: Option<std::path::PathBuf>,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            token_file: None,
        }
    }
}

/// OpenTelemetry export of the relay's spans (`outbox.publish`, continuing each row's
/// `traceparent`). Off unless an endpoint is given.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct TelemetrySettings {
    /// An OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`; `None` exports nothing.
    pub(crate) otlp_endpoint: Option<String>,
    /// The `service.name` of the exported spans.
    pub(crate) service_name: String,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "outbox-relay".to_owned(),
        }
    }
}

/// Where messages go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct BrokerSettings {
    /// The broker's address; its form picks the broker ([`Config::broker_kind`]):
    /// `nats://host:port[,nats://host:port]` for NATS JetStream, `amqp://user:password@host:port/vhost`
    /// for RabbitMQ, a plain `host:port;host:port`
    /// for broker-lite (P9).
    pub(crate) addresses: String,
    /// Per-attempt send timeout (P5).
    pub(crate) send_timeout_ms: u64,
    /// Extra attempts after a failed send (P4).
    pub(crate) retries: u32,
    /// Topics whose loss would be a business failure; `check` warns about risky settings for them.
    pub(crate) critical_topics: BTreeSet<String>,
    /// Topics allowed to use one-way sends (P3); never a critical topic.
    pub(crate) oneway_topics: BTreeSet<String>,
    /// RabbitMQ: consumer queues `check` audits (quorum, durable); AMQP cannot list the queues
    /// bound to a topic's exchange, so they are named here.
    pub(crate) audit_queues: BTreeSet<String>,
    /// broker-lite user (issue 16); its password comes from `password_file`, or from
    /// `BROKER_LITE_PASSWORD(_FILE)`, never from this file. Unset: `BROKER_LITE_USER`, or none.
    pub(crate) user: Option<String>,
    /// File holding the broker-lite password.
    pub(crate) password_file: Option<std::path::PathBuf>,
    /// PEM CA that signed broker-lite's certificate: connect with TLS. Unset:
    /// `BROKER_LITE_TLS_CA`, or plain TCP.
    pub(crate) tls_ca: Option<std::path::PathBuf>,
}

/// The broker the relay publishes to, from the form of `broker.addresses`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BrokerKind {
    /// `host:port;host:port`: the bundled broker.
    BrokerLite,
    /// `nats://…`: NATS JetStream.
    Nats,
    /// `amqp://…` / `amqps://…`: RabbitMQ.
    RabbitMq,
}

/// How the relay drains the outbox.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RelaySettings {
    pub(crate) name: String,
    pub(crate) batch_size: usize,
    pub(crate) max_attempts: u32,
    pub(crate) poll_interval_ms: u64,
    pub(crate) publish_timeout_ms: u64,
    pub(crate) backoff_base_ms: u64,
    pub(crate) backoff_max_ms: u64,
    /// Keep published rows this many hours instead of deleting them.
    pub(crate) retention_hours: Option<u64>,
    pub(crate) shutdown_grace_ms: u64,
    /// How long the relay's database connection may stay silent before Postgres ends it and
    /// another relay takes its partitions and its batch (a relay cut off by a network partition).
    pub(crate) session_timeout_ms: u64,
    /// How long `run` waits for the outbox tables to appear before it gives up: a sidecar usually
    /// starts beside its service, which creates them when it starts. 0 gives up at once.
    pub(crate) migrations_wait_ms: u64,
}

/// The health and metrics endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct HttpSettings {
    /// `/healthz`, `/readyz` and `/metrics`; `"off"` disables the endpoint.
    pub(crate) listen: String,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            addresses: "127.0.0.1:9876".to_owned(),
            send_timeout_ms: 3_000,
            retries: 2,
            critical_topics: BTreeSet::new(),
            oneway_topics: BTreeSet::new(),
            audit_queues: BTreeSet::new(),
            user: None,
            password_file: None,
            tls_ca: None,
        }
    }
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            name: "outbox-relay".to_owned(),
            batch_size: 500,
            max_attempts: 16,
            poll_interval_ms: 5_000,
            publish_timeout_ms: 10_000,
            backoff_base_ms: 1_000,
            backoff_max_ms: 300_000,
            retention_hours: None,
            shutdown_grace_ms: 10_000,
            session_timeout_ms: 30_000,
            migrations_wait_ms: 120_000,
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9400".to_owned(),
        }
    }
}

impl Config {
    /// Reads `path` (if given) over the defaults.
    pub(crate) fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// The database URL, or an error that says how to give one.
    pub(crate) fn database_url(&self) -> anyhow::Result<&str> {
        self.database_url.as_deref().context(
            "no database URL: pass --database-url, set DATABASE_URL, or set database_url in the config file",
        )
    }

    /// The HTTP listen address, `None` when disabled.
    pub(crate) fn http_listen(&self) -> anyhow::Result<Option<SocketAddr>> {
        if self.http.listen == "off" {
            return Ok(None);
        }
        self.http.listen.parse().map(Some).with_context(|| {
            format!(
                "http.listen {:?} is not host:port or \"off\"",
                self.http.listen
            )
        })
    }

    /// Which broker `broker.addresses` names.
    pub(crate) fn broker_kind(&self) -> BrokerKind {
        let addresses = self.broker.addresses.trim();
        if addresses.starts_with("nats://") || addresses.starts_with("tls://") {
            return BrokerKind::Nats;
        }
        if addresses.starts_with("amqp://") || addresses.starts_with("amqps://") {
            return BrokerKind::RabbitMq;
        }
        BrokerKind::BrokerLite
    }

    /// The relay's retry horizon: how long after its first attempt a message may still be
    /// published again (the backoff summed over `relay.max_attempts`).
    pub(crate) fn retry_horizon(&self) -> Duration {
        let backoff = courier_outbox::Backoff {
            base: Duration::from_millis(self.relay.backoff_base_ms),
            max: Duration::from_millis(self.relay.backoff_max_ms),
            jitter: 0.0,
            ..courier_outbox::Backoff::default()
        };
        (1..self.relay.max_attempts.max(1))
            .map(|attempt| backoff.delay(attempt))
            .sum()
    }

    /// Checks what the types cannot.
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        if self
            .broker
            .addresses
            .split(';')
            .all(|a| a.trim().is_empty())
        {
            bail!("broker.addresses is empty: give at least one host:port");
        }
        if self.broker_kind() == BrokerKind::RabbitMq && !self.broker.oneway_topics.is_empty() {
            bail!(
                "broker.oneway_topics is set but the broker is RabbitMQ: every RabbitMQ publish \
                 waits for its publisher confirm; remove broker.oneway_topics"
            );
        }
        if self.broker_kind() == BrokerKind::Nats && !self.broker.oneway_topics.is_empty() {
            bail!(
                "broker.oneway_topics is set but the broker is NATS: every NATS publish waits for \
                 the stream's PubAck; remove broker.oneway_topics"
            );
        }
        for address in self.broker_addresses() {
            check_broker_address(address)?;
        }
        if let Some(topic) = self
            .broker
            .oneway_topics
            .intersection(&self.broker.critical_topics)
            .next()
        {
            bail!(
                "topic {topic:?} is both critical and one-way: one-way sends can lose messages (P3)"
            );
        }
        if self.broker.send_timeout_ms < MIN_SEND_TIMEOUT_MS {
            bail!(
                "broker.send_timeout_ms is {}, below {MIN_SEND_TIMEOUT_MS}: broker-lite answers a \
                 send after storing it (with SYNC_FLUSH after an fsync), which takes longer than \
                 that on many disks, and a send that times out is sent again although the broker \
                 kept it, so every attempt could store the message up to {} times; use at least \
                 {MIN_SEND_TIMEOUT_MS} (default 3000)",
                self.broker.send_timeout_ms,
                u64::from(self.broker.retries) + 1
            );
        }
        // The relay refuses these too, but only after connecting; refusing them here makes them
        // what they are, invalid configuration (exit 2), whatever the database and the broker do.
        if self.relay.batch_size == 0 || self.relay.batch_size > MAX_BATCH_SIZE {
            bail!(
                "relay.batch_size must be 1 to {MAX_BATCH_SIZE}, got {}",
                self.relay.batch_size
            );
        }
        for (name, value) in [
            ("relay.publish_timeout_ms", self.relay.publish_timeout_ms),
            ("relay.poll_interval_ms", self.relay.poll_interval_ms),
        ] {
            if value == 0 {
                bail!("{name} is 0: it must be at least 1 (milliseconds)");
            }
        }
        if self.relay.session_timeout_ms < 100 {
            bail!(
                "relay.session_timeout_ms is {}: it must be at least 100 (the relay pings every \
                 third of it while it publishes); seconds to a minute suit most networks",
                self.relay.session_timeout_ms
            );
        }
        if self.relay.max_attempts == 0 {
            bail!("relay.max_attempts must be at least 1");
        }
        if self.relay.backoff_base_ms > self.relay.backoff_max_ms {
            bail!("relay.backoff_base_ms is larger than relay.backoff_max_ms");
        }
        self.http_listen()?;
        Ok(())
    }

    /// broker-lite credentials and TLS: this file's fields over the `BROKER_LITE_*` environment.
    pub(crate) fn broker_lite_security(&self) -> anyhow::Result<broker_lite_client::Security> {
        let mut security = broker_lite_client::Security::from_env()?;
        let b = &self.broker;
        match (&b.user, &b.password_file) {
            (Some(user), Some(file)) => {
                security.credentials = Some(broker_lite_client::Credentials::from_file(
                    user.as_str(),
                    file,
                )?);
            }
            (None, Some(_)) => bail!("broker.password_file is set without broker.user"),
            (Some(user), None) => match std::env::var("BROKER_LITE_PASSWORD") {
                Ok(password) if !password.is_empty() => {
                    security.credentials = Some(broker_lite_client::Credentials::new(
                        user.as_str(),
                        password,
                    ));
                }
                _ => {
                    bail!("broker.user is set without broker.password_file or BROKER_LITE_PASSWORD")
                }
            },
            (None, None) => {}
        }
        if let Some(ca) = &b.tls_ca {
            security.tls = Some(broker_lite_client::ClientTls::from_ca_file(ca)?);
        }
        Ok(security)
    }

    pub(crate) fn send_timeout(&self) -> Duration {
        Duration::from_millis(self.broker.send_timeout_ms)
    }

    /// The addresses of `broker.addresses`, in failover order, without empty entries.
    pub(crate) fn broker_addresses(&self) -> impl Iterator<Item = &str> {
        self.broker
            .addresses
            .split(';')
            .map(str::trim)
            .filter(|a| !a.is_empty())
    }

    /// The console token: `console.token_file`'s content, else `OUTBOX_RELAY_CONSOLE_TOKEN`.
    pub(crate) fn console_token(&self) -> anyhow::Result<Option<String>> {
        if let Some(file) = &self.console.token_file {
            let token = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read console.token_file {}", file.display()))?;
            let token = token.trim().to_owned();
            if token.is_empty() {
                bail!(
                    "console.token_file {} is empty: write the token in it",
                    file.display()
                );
            }
            return Ok(Some(token));
        }
        Ok(std::env::var("OUTBOX_RELAY_CONSOLE_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
            .map(|t| t.trim().to_owned()))
    }

    /// How long `run` waits for the outbox tables.
    pub(crate) fn migrations_wait(&self) -> Duration {
        Duration::from_millis(self.relay.migrations_wait_ms)
    }
}

/// A `host:port` address needs both: without the port the connection fails with no more than
/// "invalid socket address", and the relay would report an unreachable broker instead.
fn check_broker_address(address: &str) -> anyhow::Result<()> {
    if address.contains("://") {
        // A URL names its own scheme and default port; its client checks it.
        return Ok(());
    }
    let port = address
        .rsplit_once(':')
        .map(|(host, port)| (host, port.parse::<u16>()));
    match port {
        Some((host, Ok(port))) if !host.is_empty() && port != 0 => Ok(()),
        _ => bail!(
            "broker address {address:?} is not host:port: add the port, for example \
             {}:9876 (broker-lite's default)",
            address.rsplit_once(':').map_or(address, |(host, _)| host)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::Config;

    fn invalid(toml: &str) -> String {
        let config: Config = toml::from_str(toml).unwrap();
        format!("{:#}", config.validate().unwrap_err())
    }

    #[test]
    fn the_defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn spans_are_exported_only_when_an_endpoint_is_configured() {
        let default = Config::default().telemetry;
        assert_eq!(default.otlp_endpoint, None);
        assert_eq!(default.service_name, "outbox-relay");
        let config: Config = toml::from_str(
            "[telemetry]\notlp_endpoint = \"http://collector:4317\"\nservice_name = \"payments-relay\"\n",
        )
        .unwrap();
        assert_eq!(
            config.telemetry.otlp_endpoint.as_deref(),
            Some("http://collector:4317")
        );
        assert_eq!(config.telemetry.service_name, "payments-relay");
        assert!(toml::from_str::<Config>("[telemetry]\nendpoint = \"x\"\n").is_err());
    }

    #[test]
    fn a_send_timeout_below_a_plausible_fsync_is_refused() {
        for value in [0, 1, 99] {
            let error = invalid(&format!("[broker]\nsend_timeout_ms = {value}\n"));
            assert!(
                error.contains(&format!("broker.send_timeout_ms is {value}, below 100")),
                "{error}"
            );
            assert!(error.contains("up to 3 times"), "{error}");
        }
        let config: Config = toml::from_str("[broker]\nsend_timeout_ms = 100\n").unwrap();
        config.validate().unwrap();
    }

    #[test]
    fn a_broker_address_without_a_port_is_refused_with_the_fix() {
        let error = invalid("[broker]\naddresses = \"127.0.0.1:9876;broker-2\"\n");
        assert_eq!(
            error,
            "broker address \"broker-2\" is not host:port: add the port, for example \
             broker-2:9876 (broker-lite's default)"
        );
        assert!(invalid("[broker]\naddresses = \"127.0.0.1:x\"\n").contains("127.0.0.1:9876"));
        let config: Config =
            toml::from_str("[broker]\naddresses = \"127.0.0.1:9876; broker-2:9877;\"\n").unwrap();
        config.validate().unwrap();
        assert_eq!(
            config.broker_addresses().collect::<Vec<_>>(),
            ["127.0.0.1:9876", "broker-2:9877"]
        );
    }

    #[test]
    fn what_the_relay_would_refuse_is_refused_up_front() {
        assert!(
            invalid("[relay]\npublish_timeout_ms = 0\n").contains("relay.publish_timeout_ms is 0")
        );
        assert!(invalid("[relay]\npoll_interval_ms = 0\n").contains("relay.poll_interval_ms is 0"));
        assert!(
            invalid("[relay]\nbatch_size = 100001\n")
                .contains("relay.batch_size must be 1 to 100000")
        );
        assert!(
            invalid("[relay]\nsession_timeout_ms = 99\n")
                .contains("relay.session_timeout_ms is 99")
        );
    }
}
