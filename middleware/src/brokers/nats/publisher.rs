//! The NATS JetStream publisher: the envelope in, the stream's PubAck out.

use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, publish::PublishAck};
use courier_core::batch::{BatchFuture, PublishBatch, by_key};
use courier_core::{Message, Permanent, Unavailable};
use tower::{BoxError, Service};

use super::envelope::{self, SubjectMapping};
use crate::boxed::BoxResponseFuture;
use crate::{HasSendStatus, SendStatus};

/// How long the publisher waits for a stream's PubAck unless configured: 5 s.
pub const DEFAULT_PUB_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// How many messages of a batch wait for their PubAck at once by default (one per key at a
/// time; see the [`PublishBatch`] impl of [`NatsPublisher`]).
///
/// ```
/// assert_eq!(courier_middleware::nats::DEFAULT_MAX_IN_FLIGHT, 256);
/// ```
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;

/// A `tower::Service<Message>` that publishes each envelope to JetStream and answers the stream's
/// acknowledgement ([`NatsPublished`]): the publisher the outbox relay publishes through.
///
/// - **Acknowledged or failed** (P1): every publish waits for the stream's PubAck. No PubAck within
///   the timeout (5 s, [`with_ack_timeout`](Self::with_ack_timeout)), or a JetStream error, is a
///   failed attempt: the relay keeps the row and publishes it again. There is no ack-less mode.
/// - **Deduplicated** (P7): `Nats-Msg-Id` is the outbox message id, so a publish the relay repeats
///   within the stream's duplicate window (2 minutes by default; see
///   [`StreamSpec::duplicate_window`](super::StreamSpec)) is stored once. The server answers a
///   repeat with `duplicate: true`, which is a success: the stream has the message.
/// - **Failures**: a message NATS can never take (larger than the server's `max_payload`, a topic
///   or key that is not a valid subject, a reserved or malformed header) is
///   [`courier_core::Permanent`]: the relay parks it in its failure table at once. When the server
///   cannot be reached (connection refused or lost, no PubAck in time, `no responders`: JetStream
///   or the stream is not there) the error is [`courier_core::Unavailable`]: the relay counts no
///   attempt and pauses, probing, until the server answers. Anything else is retryable.
/// - **Subject**: the topic, or topic and key ([`SubjectMapping`]); key, tag, creation time and
///   headers (the `traceparent` the relay or [`TracePublish`](crate::TracePublish) set included)
///   travel as headers, listed in [`envelope`](crate::nats#the-envelope).
///
/// What a PubAck is worth depends on the stream: a file stream with one replica acknowledges
/// before its data is fsynced (every 2 minutes by default); see the
/// [module documentation](crate::nats#guarantees) and `outbox-relay check`.
///
/// Cheap to clone: clones share the connection. Publishes of clones are pipelined on it.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), tower::BoxError> {
/// use courier_middleware::nats::{NatsPublisher, StreamSpec};
/// use courier_outbox::Relay;
/// use tokio_util::sync::CancellationToken;
///
/// let publisher = NatsPublisher::connect("nats://127.0.0.1:4222").await?;
/// // A file stream for the topics, with a duplicate window: provisioned once, idempotent.
/// StreamSpec::new("ORDERS", ["orders.>"]).ensure(publisher.jetstream()).await?;
/// Relay::builder(pool, publisher).build()?.run(CancellationToken::new()).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct NatsPublisher {
    jetstream: jetstream::Context,
    subjects: SubjectMapping,
    max_in_flight: usize,
}

impl NatsPublisher {
    /// Publishes through `client`, waiting [`DEFAULT_PUB_ACK_TIMEOUT`] for each PubAck.
    pub fn new(client: async_nats::Client) -> Self {
        let mut jetstream = jetstream::new(client);
        jetstream.set_timeout(DEFAULT_PUB_ACK_TIMEOUT);
        Self {
            jetstream,
            subjects: SubjectMapping::default(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }

    /// Connects to the server(s) at `url` (`nats://host:port`, comma-separated for several).
    ///
    /// # Errors
    ///
    /// When no server accepts the connection.
    pub async fn connect(url: &str) -> Result<Self, async_nats::ConnectError> {
        async_nats::connect(url).await.map(Self::new)
    }

    /// Waits `timeout` for each PubAck (and for the publish to be written to the connection);
    /// past it the publish is a failed attempt.
    #[must_use]
    pub fn with_ack_timeout(mut self, timeout: Duration) -> Self {
        self.jetstream.set_timeout(timeout);
        self
    }

    /// How many messages of a batch wait for their PubAck at once (at least 1). Default
    /// [`DEFAULT_MAX_IN_FLIGHT`].
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), async_nats::ConnectError> {
    /// let publisher = courier_middleware::nats::NatsPublisher::connect("nats://127.0.0.1:4222")
    ///     .await?
    ///     .with_max_in_flight(64);
    /// # let _ = publisher;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn with_max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// Derives subjects as `mapping` says. Default [`SubjectMapping::Topic`].
    #[must_use]
    pub fn with_subjects(mut self, mapping: SubjectMapping) -> Self {
        self.subjects = mapping;
        self
    }

    /// The JetStream context, to provision streams with ([`StreamSpec::ensure`](super::StreamSpec::ensure)).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// The connection (a handle sharing it).
    pub fn client(&self) -> async_nats::Client {
        self.jetstream.client()
    }
}

/// The stream's acknowledgement of a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatsPublished {
    /// The stream that stored the message.
    pub stream: String,
    /// Its sequence in the stream (of the first copy, for a duplicate).
    pub sequence: u64,
    /// The stream had the message already (same `Nats-Msg-Id` within the duplicate window).
    pub duplicate: bool,
}

impl From<PublishAck> for NatsPublished {
    fn from(ack: PublishAck) -> Self {
        Self {
            stream: ack.stream,
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        }
    }
}

impl HasSendStatus for NatsPublished {
    /// A PubAck is the stream's `SEND_OK`: a failure never becomes a `NatsPublished`.
    fn send_status(&self) -> SendStatus {
        SendStatus::SendOk
    }
}

/// A publish the stream did not acknowledge.
#[derive(Debug, thiserror::Error)]
#[error("publishing message {id} to NATS subject {subject:?} failed: {source}")]
pub struct NatsPublishError {
    id: uuid::Uuid,
    subject: String,
    #[source]
    source: BoxError,
}

impl Service<Message> for NatsPublisher {
    type Response = NatsPublished;
    type Error = BoxError;
    type Future = BoxResponseFuture<NatsPublished>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, message: Message) -> Self::Future {
        let jetstream = self.jetstream.clone();
        let subjects = self.subjects;
        BoxResponseFuture::new(Box::pin(async move {
            let failed = |subject: &str, source: BoxError| NatsPublishError {
                id: message.id,
                subject: subject.to_owned(),
                source,
            };
            let (subject, headers) = match envelope::subject(&message, subjects)
                .and_then(|subject| envelope::headers(&message).map(|headers| (subject, headers)))
            {
                Ok(prepared) => prepared,
                Err(error) => {
                    let error = failed(&message.topic, error.into());
                    return Err(Box::new(Permanent::new(error)) as BoxError);
                }
            };
            let publish = PublishMessage::build()
                .payload(message.payload.clone())
                .headers(headers);
            let acked = async {
                jetstream
                    .send_publish(subject.clone(), publish)
                    .await?
                    .await
            };
            match acked.await {
                Ok(ack) => Ok(NatsPublished::from(ack)),
                Err(error) => {
                    let state = jetstream.client().connection_state();
                    let kind = kind(&error, &state);
                    let error = failed(&subject, error.into());
                    Err(match kind {
                        Kind::Refused => Box::new(Permanent::new(error)),
                        Kind::Unreachable => Box::new(Unavailable::new(error)),
                        Kind::Failed => Box::new(error) as BoxError,
                    })
                }
            }
        }))
    }
}

/// What a publish error says about the message.
/// A batch is published with its PubAcks pipelined: the first message of every key (up to
/// [`with_max_in_flight`](NatsPublisher::with_max_in_flight)) is published at once, each key's
/// next one once the previous is acked, so a failed message never has a later message of its
/// key stored before it. Each PubAck is checked on its own, with the same classification and
/// `Nats-Msg-Id` deduplication as a single publish: an error or a missing ack fails only that
/// message (a missing ack also marks the broker unavailable, which stops the batch's keys that
/// have not started).
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), tower::BoxError> {
/// use courier_middleware::nats::NatsPublisher;
/// use courier_outbox::Relay;
///
/// let publisher = NatsPublisher::connect("nats://127.0.0.1:4222").await?;
/// let relay = Relay::batch_builder(pool, publisher).build()?;
/// # let _ = relay;
/// # Ok(()) }
/// ```
impl PublishBatch for NatsPublisher {
    type Response = NatsPublished;

    fn publish_batch(&mut self, messages: Vec<Message>) -> BatchFuture<NatsPublished> {
        let publisher = self.clone();
        Box::pin(async move {
            let publisher = &publisher;
            by_key(messages, publisher.max_in_flight, |message| {
                let mut publisher = publisher.clone();
                async move { publisher.call(message).await }
            })
            .await
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// NATS refuses this message; it can never pass.
    Refused,
    /// The server (or its JetStream) cannot be reached; every message would fail alike.
    Unreachable,
    /// This publish failed; another may pass.
    Failed,
}

fn kind(error: &PublishError, state: &State) -> Kind {
    match error.kind() {
        PublishErrorKind::MaxPayloadExceeded => Kind::Refused,
        // No PubAck in time, the connection gone, `no responders` (no JetStream, or no stream for
        // the subject: an operator has to act, the relay should wait rather than count attempts).
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::StreamNotFound => Kind::Unreachable,
        _ if *state != State::Connected => Kind::Unreachable,
        _ => Kind::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_large_is_permanent_unreachable_is_unavailable_the_rest_retryable() {
        let error = |kind| PublishError::new(kind);
        let up = State::Connected;
        for (kind_, state, expected) in [
            (PublishErrorKind::MaxPayloadExceeded, &up, Kind::Refused),
            (PublishErrorKind::TimedOut, &up, Kind::Unreachable),
            (PublishErrorKind::BrokenPipe, &up, Kind::Unreachable),
            (PublishErrorKind::StreamNotFound, &up, Kind::Unreachable),
            (PublishErrorKind::Other, &up, Kind::Failed),
            (PublishErrorKind::MaxAckPending, &up, Kind::Failed),
            (
                PublishErrorKind::Other,
                &State::Disconnected,
                Kind::Unreachable,
            ),
        ] {
            assert_eq!(kind(&error(kind_), state), expected, "{kind_}");
        }
    }

    #[test]
    fn a_puback_is_send_ok_and_keeps_the_duplicate_flag() {
        let published = NatsPublished {
            stream: "ORDERS".into(),
            sequence: 7,
            duplicate: true,
        };
        assert_eq!(published.send_status(), SendStatus::SendOk);
    }
}
