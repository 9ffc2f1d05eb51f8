//! Streams and consumers, provisioned from code: created when missing, checked when present.
//!
//! Provisioning never changes an existing stream or consumer: when one contradicts the
//! configuration (memory storage where file storage is wanted, fewer replicas, a shorter duplicate
//! window, subjects missing …) it fails with [`TopologyError::Contradicts`], which names the field,
//! both values and what to do. Changing a stream that holds messages is an operator's decision.

use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, ErrorCode};

/// The duplicate window of a stream unless configured: 2 minutes, JetStream's default. The relay
/// must republish a message within it to have the repeat deduplicated; `outbox-relay check` warns
/// when the relay's retry horizon is longer.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// A stream as the application needs it; [`ensure`](Self::ensure) makes it so.
///
/// Durable by default: file storage, limits retention (messages stay until `max_age`, unlimited by
/// default, whatever the consumers do), new messages refused rather than old ones discarded when
/// a limit is reached, a [`DEFAULT_DUPLICATE_WINDOW`], one replica (set 3 on a cluster with
/// [`replicas`](Self::replicas)).
///
/// ```no_run
/// # async fn demo(jetstream: async_nats::jetstream::Context) -> Result<(), tower::BoxError> {
/// use std::time::Duration;
/// use courier_middleware::nats::StreamSpec;
///
/// StreamSpec::new("ORDERS", ["orders.>"])
///     .replicas(3)
///     .duplicate_window(Duration::from_secs(600))
///     .ensure(&jetstream)
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    name: String,
    subjects: Vec<String>,
    storage: StorageType,
    replicas: usize,
    duplicate_window: Duration,
    max_age: Duration,
}

impl StreamSpec {
    /// A file-backed stream `name` over `subjects` (wildcards allowed: `orders.>`).
    pub fn new(
        name: impl Into<String>,
        subjects: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            name: name.into(),
            subjects: subjects.into_iter().map(Into::into).collect(),
            storage: StorageType::File,
            replicas: 1,
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            max_age: Duration::ZERO,
        }
    }

    /// The stream for `topic` when nothing else is configured, as
    /// [`BrokerAddress::subscribe`](crate::BrokerAddress::subscribe) and `outbox-relay topology
    /// apply` provision it: named after the topic (upper case, each character a stream name
    /// cannot hold as `_`), capturing the topic's subject (the publisher's default
    /// [`SubjectMapping::Topic`](super::SubjectMapping::Topic)).
    ///
    /// ```
    /// use courier_middleware::nats::StreamSpec;
    ///
    /// let spec = StreamSpec::for_topic("orders.created");
    /// assert_eq!(spec.name(), "ORDERS_CREATED");
    /// assert_eq!(spec.config().subjects, ["orders.created"]);
    /// ```
    pub fn for_topic(topic: &str) -> Self {
        let name: String = topic
            .chars()
            .map(|c| match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' => c.to_ascii_uppercase(),
                _ => '_',
            })
            .collect();
        Self::new(name, [topic])
    }

    /// Keeps `n` copies on a cluster (at least 1). Default 1.
    #[must_use]
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = n.max(1);
        self
    }

    /// Stores a message published twice with the same id within `window` once. Default
    /// [`DEFAULT_DUPLICATE_WINDOW`]; make it at least the relay's retry horizon.
    #[must_use]
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    /// Drops messages older than `age` (zero: never, the default).
    #[must_use]
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }

    /// **Opt-out**: keeps the stream in memory only. A server restart loses every message in it,
    /// acknowledged or not; only for topics declared loss-tolerant.
    #[must_use]
    pub fn memory_storage_loses_messages_on_restart(mut self) -> Self {
        tracing::warn!(stream = %self.name, "NATS stream configured with memory storage: a server restart loses its messages");
        self.storage = StorageType::Memory;
        self
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The stream's configuration for the server.
    pub fn config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            subjects: self.subjects.clone(),
            storage: self.storage,
            num_replicas: self.replicas,
            duplicate_window: self.duplicate_window,
            max_age: self.max_age,
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::New,
            ..Default::default()
        }
    }

    /// Creates the stream, or checks the existing one agrees with this specification.
    ///
    /// # Errors
    ///
    /// [`TopologyError::Contradicts`] when the stream exists with a configuration that is less
    /// durable or covers other subjects; [`TopologyError::Request`] when the server cannot be
    /// asked.
    pub async fn ensure(
        &self,
        jetstream: &jetstream::Context,
    ) -> Result<stream::Info, TopologyError> {
        self.apply(jetstream).await.map(|(info, _)| info)
    }

    /// As [`ensure`](Self::ensure), saying whether the stream was created or already there as
    /// specified (for `outbox-relay topology apply`: a second run changes nothing).
    ///
    /// ```no_run
    /// # async fn demo(jetstream: async_nats::jetstream::Context) -> Result<(), tower::BoxError> {
    /// use courier_middleware::nats::{Provisioned, StreamSpec};
    ///
    /// let (info, provisioned) = StreamSpec::for_topic("orders").apply(&jetstream).await?;
    /// assert!(matches!(provisioned, Provisioned::Created | Provisioned::Unchanged));
    /// println!("{} holds {} messages", info.config.name, info.state.messages);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`ensure`](Self::ensure).
    pub async fn apply(
        &self,
        jetstream: &jetstream::Context,
    ) -> Result<(stream::Info, Provisioned), TopologyError> {
        if let Some(info) = self.existing(jetstream).await? {
            self.check(&info.config)?;
            return Ok((info, Provisioned::Unchanged));
        }
        tracing::info!(stream = %self.name, subjects = ?self.subjects, "creating NATS stream");
        let mut stream = match jetstream.create_stream(self.config()).await {
            Ok(stream) => stream,
            // Another process created it meanwhile: check what it created.
            Err(error) if error.to_string().contains("already in use") => {
                let info = self
                    .existing(jetstream)
                    .await?
                    .ok_or_else(|| request(error))?;
                self.check(&info.config)?;
                return Ok((info, Provisioned::Unchanged));
            }
            Err(error) => return Err(request(error)),
        };
        let info = stream.info().await.map_err(request)?.clone();
        Ok((info, Provisioned::Created))
    }

    /// Checks the stream on the server against this specification, changing nothing: `None`
    /// when it does not exist, its information when it is at least as durable as specified.
    ///
    /// ```no_run
    /// # async fn demo(jetstream: async_nats::jetstream::Context) -> Result<(), tower::BoxError> {
    /// use courier_middleware::nats::StreamSpec;
    ///
    /// match StreamSpec::for_topic("orders").verify(&jetstream).await? {
    ///     Some(info) => println!("{} as specified", info.config.name),
    ///     None => println!("missing"),
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`ensure`](Self::ensure): [`TopologyError::Contradicts`] names the field that differs.
    pub async fn verify(
        &self,
        jetstream: &jetstream::Context,
    ) -> Result<Option<stream::Info>, TopologyError> {
        let existing = self.existing(jetstream).await?;
        if let Some(info) = &existing {
            self.check(&info.config)?;
        }
        Ok(existing)
    }

    /// The stream as the server has it, `None` when it does not exist.
    async fn existing(
        &self,
        jetstream: &jetstream::Context,
    ) -> Result<Option<stream::Info>, TopologyError> {
        match jetstream.get_stream(&self.name).await {
            Ok(mut stream) => Ok(Some(stream.info().await.map_err(request)?.clone())),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => Err(request(error)),
        }
    }

    /// `Ok` when `existing` is at least as durable as this specification and covers its
    /// subjects.
    fn check(&self, existing: &stream::Config) -> Result<(), TopologyError> {
        let contradicts = |field: &'static str, existing: String, wanted: String| {
            Err(TopologyError::Contradicts {
                kind: "stream",
                name: self.name.clone(),
                field,
                existing,
                wanted,
            })
        };
        if existing.storage != self.storage {
            return contradicts(
                "storage",
                format!("{:?}", existing.storage),
                format!("{:?}", self.storage),
            );
        }
        if existing.num_replicas.max(1) < self.replicas {
            return contradicts(
                "replicas",
                existing.num_replicas.to_string(),
                self.replicas.to_string(),
            );
        }
        if existing.duplicate_window < self.duplicate_window {
            return contradicts(
                "duplicate_window",
                format!("{:?}", existing.duplicate_window),
                format!("{:?}", self.duplicate_window),
            );
        }
        if let Some(missing) = self
            .subjects
            .iter()
            .find(|s| !existing.subjects.contains(s))
        {
            return contradicts(
                "subjects",
                format!("{:?}", existing.subjects),
                format!("{:?} (missing {missing:?})", self.subjects),
            );
        }
        let expires = |age: Duration| age != Duration::ZERO;
        if expires(existing.max_age) && (!expires(self.max_age) || existing.max_age < self.max_age)
        {
            return contradicts(
                "max_age",
                format!("{:?}", existing.max_age),
                match expires(self.max_age) {
                    true => format!("{:?}", self.max_age),
                    false => "0 (messages never expire unconsumed)".to_owned(),
                },
            );
        }
        let limited = existing.max_messages > 0 || existing.max_bytes > 0;
        if limited && existing.discard != DiscardPolicy::New {
            return contradicts(
                "discard",
                format!(
                    "{:?} (with max_messages or max_bytes set)",
                    existing.discard
                ),
                "New (a full stream refuses publishes instead of deleting old messages)".to_owned(),
            );
        }
        if existing.retention != RetentionPolicy::Limits {
            return contradicts(
                "retention",
                format!("{:?}", existing.retention),
                "Limits".to_owned(),
            );
        }
        Ok(())
    }
}

/// What [`StreamSpec::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Provisioned {
    /// The stream did not exist and was created.
    Created,
    /// The stream existed, at least as durable as specified; nothing was changed.
    Unchanged,
}

/// The durable pull consumer behind a [`NatsSource`](super::NatsSource).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConsumerSpec {
    pub(crate) stream: String,
    pub(crate) durable: String,
    pub(crate) filter_subject: String,
    pub(crate) ack_wait: Duration,
    pub(crate) max_ack_pending: i64,
}

impl ConsumerSpec {
    pub(crate) fn config(&self) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: Some(self.durable.clone()),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            // Unlimited: the source dead-letters after its own maximum; a server-side limit would
            // silently stop delivering a message instead.
            max_deliver: -1,
            filter_subject: self.filter_subject.clone(),
            max_ack_pending: self.max_ack_pending,
            ..Default::default()
        }
    }

    /// Creates the consumer, or checks the existing one settles messages the way the source
    /// needs.
    pub(crate) async fn ensure(
        &self,
        jetstream: &jetstream::Context,
    ) -> Result<consumer::PullConsumer, TopologyError> {
        let stream = jetstream.get_stream(&self.stream).await.map_err(|error| {
            if is_not_found(&error) {
                TopologyError::MissingStream(self.stream.clone())
            } else {
                request(error)
            }
        })?;
        match stream.consumer_info(&self.durable).await {
            Ok(info) => self.check(&info.config)?,
            Err(error) if error.to_string().contains("not found") => {
                tracing::info!(stream = %self.stream, consumer = %self.durable, "creating NATS consumer");
                stream
                    .create_consumer(self.config())
                    .await
                    .map_err(request)?;
            }
            Err(error) => return Err(request(error)),
        }
        stream
            .get_consumer(&self.durable)
            .await
            .map_err(TopologyError::Request)
    }

    fn check(&self, existing: &consumer::Config) -> Result<(), TopologyError> {
        let contradicts = |field: &'static str, existing: String, wanted: String| {
            Err(TopologyError::Contradicts {
                kind: "consumer",
                name: format!("{}/{}", self.stream, self.durable),
                field,
                existing,
                wanted,
            })
        };
        if existing.deliver_subject.is_some() {
            return contradicts("type", "push".into(), "pull".into());
        }
        if existing.ack_policy != AckPolicy::Explicit {
            return contradicts(
                "ack_policy",
                format!("{:?}", existing.ack_policy),
                "Explicit".into(),
            );
        }
        if existing.filter_subject != self.filter_subject {
            return contradicts(
                "filter_subject",
                format!("{:?}", existing.filter_subject),
                format!("{:?}", self.filter_subject),
            );
        }
        if existing.ack_wait != self.ack_wait {
            return contradicts(
                "ack_wait",
                format!("{:?}", existing.ack_wait),
                format!("{:?}", self.ack_wait),
            );
        }
        if existing.max_deliver > 0 {
            return contradicts(
                "max_deliver",
                existing.max_deliver.to_string(),
                "-1 (unlimited: the source dead-letters)".into(),
            );
        }
        Ok(())
    }
}

/// Provisioning a stream or consumer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyError {
    /// An existing stream or consumer is configured otherwise than asked; nothing was changed.
    #[error(
        "NATS {kind} {name} exists with {field} = {existing}, the configuration wants {wanted}: \
         change the {kind} (`nats {kind} edit`, or delete and recreate it if it may lose its \
         data) or the configuration"
    )]
    Contradicts {
        /// `"stream"` or `"consumer"`.
        kind: &'static str,
        /// Its name (`stream/consumer` for a consumer).
        name: String,
        /// The field that differs.
        field: &'static str,
        /// Its value on the server.
        existing: String,
        /// The value asked for.
        wanted: String,
    },
    /// The stream a consumer is asked on does not exist.
    #[error(
        "NATS stream {0} does not exist: provision it first (`StreamSpec::ensure`, or `outbox-relay` with the stream configured)"
    )]
    MissingStream(String),
    /// The server could not be asked, or refused the request.
    #[error("NATS JetStream request failed: {0}")]
    Request(#[source] async_nats::Error),
}

fn request(error: impl Into<async_nats::Error>) -> TopologyError {
    TopologyError::Request(error.into())
}

fn is_not_found(error: &jetstream::context::GetStreamError) -> bool {
    matches!(
        error.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_less_durable_existing_stream_contradicts_the_spec() {
        let spec = StreamSpec::new("ORDERS", ["orders.>"]).replicas(3);
        assert!(spec.check(&spec.config()).is_ok());
        let mut memory = spec.config();
        memory.storage = StorageType::Memory;
        let mut fewer = spec.config();
        fewer.num_replicas = 1;
        let mut short = spec.config();
        short.duplicate_window = Duration::from_secs(10);
        let mut other = spec.config();
        other.subjects = vec!["payments.>".into()];
        let mut expiring = spec.config();
        expiring.max_age = Duration::from_secs(3600);
        let mut discarding = spec.config();
        discarding.max_messages = 1000;
        discarding.discard = DiscardPolicy::Old;
        for (config, field) in [
            (expiring, "max_age"),
            (discarding, "discard"),
            (memory, "storage"),
            (fewer, "replicas"),
            (short, "duplicate_window"),
            (other, "subjects"),
        ] {
            let error = spec.check(&config).unwrap_err();
            assert!(
                matches!(&error, TopologyError::Contradicts { field: f, .. } if *f == field),
                "{error}"
            );
            assert!(error.to_string().contains("ORDERS"), "{error}");
        }
        let mut longer = spec.config();
        longer.duplicate_window = Duration::from_secs(3600);
        longer.num_replicas = 5;
        assert!(spec.check(&longer).is_ok(), "more durable is fine");
    }
}
