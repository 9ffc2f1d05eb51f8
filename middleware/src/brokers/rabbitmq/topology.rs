//! Exchanges, queues and bindings, declared from code: durable, quorum queues unless told
//! otherwise, idempotent, and loud when the broker already has them with other arguments.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ExchangeKind};

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
        let mut table = self.type_table();
        for (name, value) in &self.arguments {
            table.insert(name.as_str().into(), value.to_amqp());
        }
        table
    }

    /// Only `x-queue-type`.
    fn type_table(&self) -> FieldTable {
        let mut table = FieldTable::default();
        let kind = match self.queue_type {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        };
        table.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
        table
    }

    /// The broker's PRECONDITION_FAILED text when the existing queue has another type: a
    /// declaration with the type alone.
    async fn type_conflict(
        &self,
        connection: &Connection,
    ) -> Result<Option<String>, RabbitMqError> {
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let declared = channel(connection)
            .await?
            .queue_declare(&self.name, options, self.type_table())
            .await;
        let text = declared.err().as_ref().and_then(precondition_failed);
        Ok(text.filter(|t| inequivalent_argument(t) == Some("x-queue-type")))
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
        self.apply_on(connection).await.map(drop)
    }

    /// Declares everything on `connection`, as [`declare_on`](Self::declare_on), and says what
    /// each exchange and queue was: [`AuditFinding::Created`] or [`AuditFinding::Matches`]
    /// (bindings are declared too; AMQP cannot tell whether one existed). For
    /// `outbox-relay topology apply`: a second run finds everything `Matches`.
    ///
    /// ```no_run
    /// # async fn demo(connection: lapin::Connection) -> Result<(), courier_middleware::RabbitMqError> {
    /// use courier_middleware::{AuditFinding, QueueSpec, RabbitMqTopology};
    ///
    /// let findings = RabbitMqTopology::new()
    ///     .exchange("orders")
    ///     .queue(QueueSpec::new("billing"))
    ///     .bind("billing", "orders", "#")
    ///     .apply_on(&connection)
    ///     .await?;
    /// let created = findings.iter().filter(|f| matches!(f, AuditFinding::Created { .. })).count();
    /// println!("{created} created");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`RabbitMqError::TopologyConflict`] when an existing queue or exchange has other
    /// arguments (nothing after it is declared), or the failed operation.
    pub async fn apply_on(
        &self,
        connection: &Connection,
    ) -> Result<Vec<AuditFinding>, RabbitMqError> {
        let mut findings = Vec::new();
        for item in self.items() {
            if let Item::Queue(queue) = item {
                if queue.queue_type == QueueType::Classic {
                    tracing::warn!(queue = %queue.name, "declaring a classic queue (opted out of quorum): a confirmed message lives on one node only");
                }
            }
            match item.settle(connection, true).await? {
                (
                    AuditFinding::Differs {
                        kind,
                        name,
                        argument,
                        expected,
                    },
                    Some(reply_text),
                ) => {
                    return Err(RabbitMqError::TopologyConflict {
                        kind,
                        name,
                        argument,
                        expected,
                        reply_text,
                    });
                }
                (finding, _) => findings.push(finding),
            }
        }
        let work = channel(connection).await?;
        for (queue, exchange, pattern) in &self.bindings {
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
        Ok(findings)
    }

    /// Compares what exists on the broker with this topology, changing nothing: each exchange and
    /// queue is looked up passively, and only an existing one is declared again with the
    /// configured arguments (a no-op when equivalent, a PRECONDITION_FAILED naming the first
    /// argument that differs otherwise). For `outbox-relay check` and `topology check`.
    ///
    /// # Errors
    ///
    /// A failed connection or channel.
    pub async fn audit_on(
        &self,
        connection: &Connection,
    ) -> Result<Vec<AuditFinding>, RabbitMqError> {
        let mut findings = Vec::new();
        for item in self.items() {
            findings.push(item.settle(connection, false).await?.0);
        }
        Ok(findings)
    }

    /// Exchanges first (bindings need them), then queues.
    fn items(&self) -> impl Iterator<Item = Item<'_>> {
        let exchanges = self.exchanges.iter().map(|e| Item::Exchange(e));
        exchanges.chain(self.queues.iter().map(Item::Queue))
    }
}

/// What [`RabbitMqTopology::audit_on`] and [`RabbitMqTopology::apply_on`] found for one exchange
/// or queue.
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
    /// It did not exist and [`apply_on`](RabbitMqTopology::apply_on) declared it.
    Created {
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

/// One exchange or queue of a topology: what declaring and auditing share.
#[derive(Clone, Copy)]
enum Item<'a> {
    Exchange(&'a str),
    Queue(&'a QueueSpec),
}

impl Item<'_> {
    fn kind(self) -> &'static str {
        match self {
            Self::Exchange(_) => "exchange",
            Self::Queue(_) => "queue",
        }
    }

    fn name(self) -> String {
        match self {
            Self::Exchange(name) => name.to_owned(),
            Self::Queue(queue) => queue.name.clone(),
        }
    }

    /// Declares it durable with its arguments, or only looks it up (`passive`).
    async fn declare(self, channel: &Channel, passive: bool) -> Result<(), lapin::Error> {
        match self {
            Self::Exchange(name) => {
                let options = ExchangeDeclareOptions {
                    passive,
                    durable: true,
                    ..Default::default()
                };
                channel
                    .exchange_declare(name, ExchangeKind::Topic, options, FieldTable::default())
                    .await
            }
            Self::Queue(queue) => {
                let options = QueueDeclareOptions {
                    passive,
                    durable: true,
                    ..Default::default()
                };
                let arguments = if passive {
                    FieldTable::default()
                } else {
                    queue.table()
                };
                channel
                    .queue_declare(&queue.name, options, arguments)
                    .await
                    .map(drop)
            }
        }
    }

    /// Looks it up, declares it when it exists (or when `create`), and says what it found; a
    /// [`AuditFinding::Differs`] comes with the broker's PRECONDITION_FAILED text. A channel per
    /// step: a failed declaration closes its channel.
    async fn settle(
        self,
        connection: &Connection,
        create: bool,
    ) -> Result<(AuditFinding, Option<String>), RabbitMqError> {
        let (kind, name) = (self.kind(), self.name());
        let exists = match self.declare(&channel(connection).await?, true).await {
            Ok(()) => true,
            Err(error) if is_not_found(&error) => false,
            Err(error) => {
                return Err(RabbitMqError::operation("looking up a queue or exchange")(
                    error,
                ));
            }
        };
        if !exists && !create {
            return Ok((AuditFinding::Missing { kind, name }, None));
        }
        let Err(error) = self.declare(&channel(connection).await?, false).await else {
            return Ok(match exists {
                true => (AuditFinding::Matches { kind, name }, None),
                false => (AuditFinding::Created { kind, name }, None),
            });
        };
        let Some(mut reply_text) = precondition_failed(&error) else {
            let operation = match self {
                Self::Exchange(_) => "declaring an exchange",
                Self::Queue(_) => "declaring a queue",
            };
            return Err(RabbitMqError::operation(operation)(error));
        };
        // RabbitMQ names the first argument it compares, often a dead-letter setting; whether
        // the queue is of another type (a classic queue: one copy) matters most, so ask that too.
        if let Self::Queue(queue) = self {
            if inequivalent_argument(&reply_text) != Some("x-queue-type") {
                if let Some(text) = queue.type_conflict(connection).await? {
                    reply_text = text;
                }
            }
        }
        let (argument, expected) = match self {
            Self::Exchange(_) => (
                inequivalent_argument(&reply_text).unwrap_or("type or durability"),
                "a durable topic exchange".to_owned(),
            ),
            Self::Queue(queue) => {
                let argument = inequivalent_argument(&reply_text).unwrap_or("argument");
                (argument, queue.expected(argument))
            }
        };
        let argument = argument.to_owned();
        let finding = AuditFinding::Differs {
            kind,
            name,
            argument,
            expected,
        };
        Ok((finding, Some(reply_text)))
    }
}

async fn channel(connection: &Connection) -> Result<Channel, RabbitMqError> {
    connection
        .create_channel()
        .await
        .map_err(RabbitMqError::operation("opening a channel"))
}

/// A passive declaration of something that does not exist: NOT_FOUND (which closes the channel).
pub(crate) fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error, lapin::Error::ProtocolError(e) if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
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
