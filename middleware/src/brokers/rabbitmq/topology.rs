//! Exchanges, queues and bindings, declared from code: durable, quorum queues unless told
//! otherwise, idempotent, and loud when the broker already has them with other arguments.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ExchangeKind};

use super::RabbitMqError;
use super::error::{inequivalent_argument, precondition_failed};

/// The type of a declared queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum QueueType {
    /// Replicated (Raft), durable, the safe default: a confirmed message survives the loss of a
    /// minority of the cluster.
    #[default]
    Quorum,
    /// A classic queue, on one node only: a confirmed message is lost with that node's disk.
    /// An explicit opt-out, logged at every declaration.
    Classic,
}

/// A queue to declare; durable always.
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct QueueSpec {
    name: String,
    queue_type: QueueType,
    arguments: Vec<(String, Argument)>,
}

/// An argument value of a queue declaration.
#[derive(Debug, Clone, PartialEq)]
enum Argument {
    Text(String),
    Number(i64),
    Flag(bool),
}

impl Argument {
    fn to_amqp(&self) -> AMQPValue {
        match self {
            Self::Text(text) => AMQPValue::LongString(text.as_str().into()),
            Self::Number(n) => AMQPValue::LongLongInt(*n),
            Self::Flag(b) => AMQPValue::Boolean(*b),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Text(text) => format!("'{text}'"),
            Self::Number(n) => n.to_string(),
            Self::Flag(b) => b.to_string(),
        }
    }
}

impl QueueSpec {
    /// A durable quorum queue named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            queue_type: QueueType::Quorum,
            arguments: Vec::new(),
        }
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue type; [`QueueType::Quorum`] unless opted out.
    pub fn queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    /// One consumer at a time receives the queue's messages (the others stand by), so they are
    /// consumed in queue order: for ordered consumption.
    pub fn single_active_consumer(self) -> Self {
        self.argument("x-single-active-consumer", Argument::Flag(true))
    }

    /// Messages wait `ttl` in this queue, then go to `target` (through the default exchange).
    pub fn delay_into(self, target: &str, ttl: Duration) -> Self {
        let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        self.argument("x-message-ttl", Argument::Number(ms))
            .dead_letter_into(target)
    }

    /// Dead-lettered messages (expired, rejected, over the delivery limit) go to queue `target`,
    /// at least once: a quorum queue keeps a message until the target confirmed it (which needs
    /// `x-overflow = reject-publish`, set along).
    pub fn dead_letter_into(self, target: &str) -> Self {
        let spec = self
            .argument("x-dead-letter-exchange", Argument::Text(String::new()))
            .argument(
                "x-dead-letter-routing-key",
                Argument::Text(target.to_owned()),
            );
        if spec.queue_type == QueueType::Quorum {
            spec.argument(
                "x-dead-letter-strategy",
                Argument::Text("at-least-once".into()),
            )
            .argument("x-overflow", Argument::Text("reject-publish".into()))
        } else {
            spec
        }
    }

    /// A quorum queue dead-letters a message returned (requeued) more than `limit` times, as
    /// after repeated consumer crashes.
    pub fn delivery_limit(self, limit: u32) -> Self {
        self.argument("x-delivery-limit", Argument::Number(i64::from(limit)))
    }

    fn argument(mut self, name: &str, value: Argument) -> Self {
        self.arguments.retain(|(n, _)| n != name);
        self.arguments.push((name.to_owned(), value));
        self
    }

    fn table(&self) -> FieldTable {
        let mut table = FieldTable::default();
        let kind = match self.queue_type {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        };
        table.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
        for (name, value) in &self.arguments {
            table.insert(name.as_str().into(), value.to_amqp());
        }
        table
    }

    /// What this spec declares for `argument`, for the conflict message.
    fn expected(&self, argument: &str) -> String {
        match argument {
            "x-queue-type" => format!("{:?}", self.queue_type).to_lowercase(),
            "durable" => "durable".into(),
            other => self
                .arguments
                .iter()
                .find(|(name, _)| name == other)
                .map_or_else(|| "not set".into(), |(_, value)| value.describe()),
        }
    }
}

/// A set of durable exchanges, queues and bindings, declared together.
///
/// Declaring is idempotent: declaring what exists with the same arguments changes nothing, so
/// every publisher and consumer may declare at start. An existing queue or exchange with other
/// arguments (a classic queue where a quorum queue is configured, another TTL) is not changed:
/// the declaration fails with [`RabbitMqError::TopologyConflict`], naming the argument.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> Result<(), courier_middleware::RabbitMqError> {
/// use courier_middleware::{QueueSpec, RabbitMqTopology};
///
/// RabbitMqTopology::new()
///     .exchange("orders")
///     .queue(QueueSpec::new("billing"))
///     .bind("billing", "orders", "#")
///     .declare("amqp://guest:guest@127.0.0.1:5672/%2f")
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[must_use]
pub struct RabbitMqTopology {
    exchanges: Vec<String>,
    queues: Vec<QueueSpec>,
    bindings: Vec<(String, String, String)>,
}

impl RabbitMqTopology {
    /// Nothing to declare yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A durable topic exchange named `name` (the publisher's exchange for topic `name`).
    pub fn exchange(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        if !self.exchanges.contains(&name) {
            self.exchanges.push(name);
        }
        self
    }

    /// A queue.
    pub fn queue(mut self, spec: QueueSpec) -> Self {
        self.queues.retain(|q| q.name != spec.name);
        self.queues.push(spec);
        self
    }

    /// Binds `queue` to `exchange` with `pattern` (`#` for every message; the routing key is the
    /// message tag, else the topic).
    pub fn bind(
        mut self,
        queue: impl Into<String>,
        exchange: impl Into<String>,
        pattern: impl Into<String>,
    ) -> Self {
        let binding = (queue.into(), exchange.into(), pattern.into());
        if !self.bindings.contains(&binding) {
            self.bindings.push(binding);
        }
        self
    }

    /// The queues, in declaration order.
    pub fn queues(&self) -> &[QueueSpec] {
        &self.queues
    }

    /// The exchanges, in declaration order.
    pub fn exchanges(&self) -> &[String] {
        &self.exchanges
    }

    /// Connects to `uri`, declares everything, and closes the connection.
    ///
    /// # Errors
    ///
    /// [`RabbitMqError::Connect`], [`RabbitMqError::TopologyConflict`] or the failed operation.
    pub async fn declare(&self, uri: &str) -> Result<(), RabbitMqError> {
        let connection = super::connection::Reconnecting::new(uri, Default::default());
        let result = self.declare_on(&*connection.connection().await?).await;
        connection.close().await;
        result
    }

    /// Declares everything on `connection`: exchanges, then queues, then bindings.
    ///
    /// # Errors
    ///
    /// [`RabbitMqError::TopologyConflict`] when an existing queue or exchange has other
    /// arguments, or the failed operation.
    pub async fn declare_on(&self, connection: &Connection) -> Result<(), RabbitMqError> {
        // A failed declaration closes its channel: one channel per step keeps the error precise.
        let channel = || async {
            connection
                .create_channel()
                .await
                .map_err(RabbitMqError::operation("opening a channel"))
        };
        for exchange in &self.exchanges {
            let options = ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            };
            let declared = channel()
                .await?
                .exchange_declare(
                    exchange,
                    ExchangeKind::Topic,
                    options,
                    FieldTable::default(),
                )
                .await;
            declared.map_err(|source| match precondition_failed(&source) {
                Some(reply_text) => RabbitMqError::TopologyConflict {
                    kind: "exchange",
                    name: exchange.clone(),
                    argument: inequivalent_argument(&reply_text)
                        .unwrap_or("type or durability")
                        .to_owned(),
                    expected: "a durable topic exchange".into(),
                    reply_text,
                },
                None => RabbitMqError::operation("declaring an exchange")(source),
            })?;
        }
        let mut work = channel().await?;
        for queue in &self.queues {
            if queue.queue_type == QueueType::Classic {
                tracing::warn!(queue = %queue.name, "declaring a classic queue (opted out of quorum): a confirmed message lives on one node only");
            }
            let options = QueueDeclareOptions {
                durable: true,
                ..Default::default()
            };
            match work
                .queue_declare(&queue.name, options, queue.table())
                .await
            {
                Ok(_) => {}
                Err(source) => match precondition_failed(&source) {
                    Some(reply_text) => {
                        let argument = inequivalent_argument(&reply_text)
                            .unwrap_or("argument")
                            .to_owned();
                        return Err(RabbitMqError::TopologyConflict {
                            kind: "queue",
                            name: queue.name.clone(),
                            expected: queue.expected(&argument),
                            argument,
                            reply_text,
                        });
                    }
                    None => {
                        return Err(RabbitMqError::operation("declaring a queue")(source));
                    }
                },
            }
        }
        for (queue, exchange, pattern) in &self.bindings {
            if !work.status().connected() {
                work = channel().await?;
            }
            work.queue_bind(
                queue,
                exchange,
                pattern,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(RabbitMqError::operation("binding a queue"))?;
        }
        let _ = work.close(200, "declared").await;
        Ok(())
    }
}

/// What [`RabbitMqTopology::audit_on`] found for one exchange or queue.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuditFinding {
    /// It exists with the declared type, durability and arguments.
    Matches {
        /// `queue` or `exchange`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// It does not exist (publishing to a missing exchange fails; consumers declare their queues).
    Missing {
        /// `queue` or `exchange`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// It exists with another type, durability or argument than declared (a classic queue where
    /// a quorum queue is configured, a non-durable exchange ...).
    Differs {
        /// `queue` or `exchange`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The argument RabbitMQ named.
        argument: String,
        /// What the configuration declares for it.
        expected: String,
    },
}

impl RabbitMqTopology {
    /// Compares what exists on the broker with this topology, changing nothing: each exchange and
    /// queue is looked up passively, and only an existing one is declared again with the
    /// configured arguments (a no-op when equivalent, a PRECONDITION_FAILED naming the first
    /// argument that differs otherwise). For `outbox-relay check`.
    ///
    /// # Errors
    ///
    /// A failed connection or channel.
    pub async fn audit_on(
        &self,
        connection: &Connection,
    ) -> Result<Vec<AuditFinding>, RabbitMqError> {
        let channel = || async {
            connection
                .create_channel()
                .await
                .map_err(RabbitMqError::operation("opening a channel"))
        };
        let mut findings = Vec::new();
        for exchange in &self.exchanges {
            let passive = ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            };
            let exists = channel()
                .await?
                .exchange_declare(
                    exchange,
                    ExchangeKind::Topic,
                    passive,
                    FieldTable::default(),
                )
                .await
                .is_ok();
            if !exists {
                findings.push(AuditFinding::Missing {
                    kind: "exchange",
                    name: exchange.clone(),
                });
                continue;
            }
            let options = ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            };
            let declared = channel()
                .await?
                .exchange_declare(
                    exchange,
                    ExchangeKind::Topic,
                    options,
                    FieldTable::default(),
                )
                .await;
            findings.push(
                match declared.as_ref().err().and_then(precondition_failed) {
                    None => AuditFinding::Matches {
                        kind: "exchange",
                        name: exchange.clone(),
                    },
                    Some(text) => AuditFinding::Differs {
                        kind: "exchange",
                        name: exchange.clone(),
                        argument: inequivalent_argument(&text)
                            .unwrap_or("type or durability")
                            .to_owned(),
                        expected: "a durable topic exchange".into(),
                    },
                },
            );
        }
        for queue in &self.queues {
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            let exists = channel()
                .await?
                .queue_declare(&queue.name, passive, FieldTable::default())
                .await
                .is_ok();
            if !exists {
                findings.push(AuditFinding::Missing {
                    kind: "queue",
                    name: queue.name.clone(),
                });
                continue;
            }
            let options = QueueDeclareOptions {
                durable: true,
                ..Default::default()
            };
            let declared = channel()
                .await?
                .queue_declare(&queue.name, options, queue.table())
                .await;
            findings.push(
                match declared.as_ref().err().and_then(precondition_failed) {
                    None => AuditFinding::Matches {
                        kind: "queue",
                        name: queue.name.clone(),
                    },
                    Some(text) => {
                        let argument = inequivalent_argument(&text)
                            .unwrap_or("argument")
                            .to_owned();
                        AuditFinding::Differs {
                            kind: "queue",
                            name: queue.name.clone(),
                            expected: queue.expected(&argument),
                            argument,
                        }
                    }
                },
            );
        }
        Ok(findings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_dead_lettering_is_at_least_once() {
        let spec =
            QueueSpec::new("billing.delay.1000ms").delay_into("billing", Duration::from_secs(1));
        let table = spec.table();
        let get = |name: &str| table.inner().get(name).cloned();
        assert_eq!(
            get("x-queue-type"),
            Some(AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(get("x-message-ttl"), Some(AMQPValue::LongLongInt(1000)));
        assert_eq!(
            get("x-dead-letter-strategy"),
            Some(AMQPValue::LongString("at-least-once".into()))
        );
        assert_eq!(
            get("x-overflow"),
            Some(AMQPValue::LongString("reject-publish".into()))
        );
        assert_eq!(spec.expected("x-message-ttl"), "1000");
        assert_eq!(spec.expected("x-queue-type"), "quorum");
    }
}
