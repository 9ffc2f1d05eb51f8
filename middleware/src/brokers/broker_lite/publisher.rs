//! The broker-lite publisher: the envelope in, broker-lite's `SendResult` out.
//!
//! Safe by default: the publisher itself turns every status but `SEND_OK` into an error (the
//! relay then keeps the row and retries it), so `Relay::builder(pool, publisher)` cannot delete a
//! row the broker did not store durably. Accepting a degraded status is an explicit opt-out,
//! [`BrokerLitePublisher::accept_status`], logged at every send. It classifies client errors for
//! the relay too: refusals of the message are [`Permanent`], failures of the broker as a whole
//! are [`Unavailable`] (the relay then pauses instead of counting attempts), the rest retryable.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::task::{Context, Poll};

use broker_lite_client::protocol::{DEFAULT_MAX_FRAME_SIZE, ErrorCode, SendResult};
use broker_lite_client::{Addresses, ClientError, Producer, ProducerConfig, SendError};
use courier_core::batch::{BatchFuture, NotAttempted, Outcomes, PublishBatch, by_key, fail_all};
use courier_core::{Message, Permanent, Unavailable};
use tower::{BoxError, Service};

use crate::boxed::BoxResponseFuture;
use crate::{HasSendStatus, NotSendOk, SendStatus};

/// A `tower::Service<Message>` that sends each envelope with a broker-lite
/// [`Producer`] and answers the broker's [`SendResult`]: the publisher the outbox relay (and a
/// [`crate::Producer`]) publishes through.
///
/// - **Status** (P1): only `SEND_OK` is a success. Any other status (`FLUSH_DISK_TIMEOUT`,
///   `FLUSH_SLAVE_TIMEOUT`, `SLAVE_NOT_AVAILABLE`, or one this version does not know) is a
///   retryable [`NotSendOk`] error: the relay keeps the row, counts the attempt and publishes it
///   again after its backoff (the broker may then store it twice; consumers deduplicate on the
///   id). To accept a degraded status anyway, opt out per status with
///   [`accept_status`](Self::accept_status). Wrapping the publisher in
///   [`RequireSendOk`](crate::RequireSendOk) as well is harmless but no longer needed.
/// - **Failures**: a failed send is a [`SendError`] holding the message (nothing is dropped
///   silently). When the broker refused the message itself, so that sending it again can never
///   succeed (larger than the broker's `max_message_size`, an invalid topic name, a property
///   name reserved for the broker), the error is wrapped in [`courier_core::Permanent`] and the
///   relay moves the message to its failure table at once instead of retrying it (P6). When the
///   broker as a whole could not be reached (connection refused or lost, no answer within the
///   send timeout, the broker shutting down or at its connection limit) the error is wrapped in
///   [`courier_core::Unavailable`]: the relay counts no attempt and pauses, probing the broker,
///   until it answers again. Everything else (an unknown topic that an administrator may still
///   create, an internal broker error) stays an ordinary retryable failure.
/// - **Retries and timeouts**: the producer's own (3 s per attempt, 2 retries, failover across
///   the address list: P4, P5, P9); the middleware's [`SendTimeoutLayer`](crate::SendTimeoutLayer)
///   and [`SendRetryLayer`](crate::SendRetryLayer) can go around it too.
///
/// Cheap to clone: clones share the producer's connection.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), tower::BoxError> {
/// use broker_lite_client::ProducerConfig;
/// use courier_middleware::BrokerLitePublisher;
/// use courier_outbox::Relay;
/// use tokio_util::sync::CancellationToken;
///
/// // Anything but SEND_OK fails the publish: the relay keeps the row and retries it.
/// let publisher = BrokerLitePublisher::connect("127.0.0.1:9876", ProducerConfig::default()).await?;
/// Relay::builder(pool, publisher).build()?.run(CancellationToken::new()).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct BrokerLitePublisher {
    producer: Producer,
    /// Statuses besides `SendOk` answered as a success (the opt-out); empty by default.
    accepted: Arc<BTreeSet<SendStatus>>,
}

impl BrokerLitePublisher {
    /// Publishes through `producer`, accepting only `SEND_OK`.
    pub fn new(producer: Producer) -> Self {
        Self {
            producer,
            accepted: Arc::default(),
        }
    }

    /// Connects a producer to the first reachable address of `addresses` (`"h1:p;h2:p"`).
    ///
    /// # Errors
    ///
    /// [`ClientError::InvalidAddress`] for an empty list, [`ClientError::Connect`] when no
    /// address accepts a connection.
    pub async fn connect(
        addresses: impl Into<Addresses>,
        config: ProducerConfig,
    ) -> Result<Self, ClientError> {
        Producer::connect(addresses, config).await.map(Self::new)
    }

    /// Opts out of the `SEND_OK` check for `status`: a send the broker answers with `status`
    /// becomes a success, and the relay deletes the row. Call it once per status to accept.
    ///
    /// Only for topics that tolerate the risk: `FLUSH_DISK_TIMEOUT` means the message is in the
    /// broker's memory but not on disk, and a broker crash then loses it;
    /// `SLAVE_NOT_AVAILABLE` means it has a single copy. Logged as a warning now and at each send
    /// answered so. Accepting `SendOk` changes nothing.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tower::BoxError> {
    /// use broker_lite_client::ProducerConfig;
    /// use courier_middleware::{BrokerLitePublisher, SendStatus};
    ///
    /// let metrics = BrokerLitePublisher::connect("127.0.0.1:9876", ProducerConfig::default())
    ///     .await?
    ///     .accept_status(SendStatus::SlaveNotAvailable);
    /// # let _ = metrics;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn accept_status(mut self, status: SendStatus) -> Self {
        if status != SendStatus::SendOk {
            tracing::warn!(
                %status,
                "broker-lite publisher accepts a status other than SEND_OK: a message answered so counts as published though it may not be durable"
            );
            Arc::make_mut(&mut self.accepted).insert(status);
        }
        self
    }

    /// The statuses accepted besides `SendOk` (empty unless opted out).
    pub fn accepted_statuses(&self) -> impl Iterator<Item = SendStatus> + '_ {
        self.accepted.iter().copied()
    }

    /// The producer.
    pub fn get_ref(&self) -> &Producer {
        &self.producer
    }

    /// The producer, mutably.
    pub fn get_mut(&mut self) -> &mut Producer {
        &mut self.producer
    }

    /// Unwraps the producer.
    pub fn into_inner(self) -> Producer {
        self.producer
    }
}

impl Service<Message> for BrokerLitePublisher {
    type Response = SendResult;
    type Error = BoxError;
    type Future = BoxResponseFuture<SendResult>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, message: Message) -> Self::Future {
        let producer = self.producer.clone();
        let accepted = self.accepted.clone();
        BoxResponseFuture::new(Box::pin(async move {
            let result = producer
                .send(super::to_broker(message))
                .await
                .map_err(classify)?;
            check_status(&result, &accepted)?;
            Ok(result)
        }))
    }
}

/// Largest estimated size of one batch request: half the default frame limit, so a batch never
/// reaches the limit at which the broker closes the connection.
const BATCH_BYTES: usize = DEFAULT_MAX_FRAME_SIZE as usize / 2;

/// Keys publishing at once when a refused batch is sent again one message at a time.
const ONE_BY_ONE_IN_FLIGHT: usize = 64;

/// The batch publisher the relay uses through `Relay::batch_builder`: a batch goes in one
/// `SEND_BATCH` request, which the broker validates as a whole and stores in one group commit
/// (one fsync under SYNC_FLUSH; each message is acked only once on disk, as with `send`).
///
/// - **Outcomes**: one per message, with the same status check as a single send (only
///   `SEND_OK` or an opted-in status passes).
/// - **A refused batch** (a message too large, a reserved property: the broker stores nothing
///   then) is sent again one message at a time, so only the refused message fails
///   ([`Permanent`]) and the rest are stored.
/// - **Large batches** are split into requests of at most 4 MiB, sent one after the other; after
///   a failed request the rest is not sent ([`NotAttempted`]), so no key overtakes itself.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), tower::BoxError> {
/// use broker_lite_client::ProducerConfig;
/// use courier_middleware::BrokerLitePublisher;
/// use courier_outbox::Relay;
/// use tokio_util::sync::CancellationToken;
///
/// let publisher = BrokerLitePublisher::connect("127.0.0.1:9876", ProducerConfig::default()).await?;
/// // One request and one group commit per claimed batch.
/// Relay::batch_builder(pool, publisher).build()?.run(CancellationToken::new()).await?;
/// # Ok(()) }
/// ```
impl PublishBatch for BrokerLitePublisher {
    type Response = SendResult;

    fn publish_batch(&mut self, messages: Vec<Message>) -> BatchFuture<SendResult> {
        let publisher = self.clone();
        Box::pin(async move {
            let mut outcomes = Vec::with_capacity(messages.len());
            let mut chunks = chunks(messages).into_iter();
            for chunk in chunks.by_ref() {
                let sent = publisher.send_chunk(chunk).await;
                let failed = sent.iter().any(Result::is_err);
                outcomes.extend(sent);
                if failed {
                    break;
                }
            }
            for chunk in chunks {
                outcomes.extend(
                    chunk
                        .iter()
                        .map(|m| Err(NotAttempted::after_failure(m.key.as_deref()).into())),
                );
            }
            outcomes
        })
    }
}

impl BrokerLitePublisher {
    /// One `SEND_BATCH` request; on a refusal, the messages one by one.
    async fn send_chunk(&self, messages: Vec<Message>) -> Outcomes<SendResult> {
        let count = messages.len();
        let refused_again = messages.clone();
        let request = messages.into_iter().map(super::to_broker).collect();
        match self.producer.send_batch(request).await {
            Ok(results) if results.len() == count => results
                .into_iter()
                .map(|result| {
                    check_status(&result, &self.accepted)?;
                    Ok(result)
                })
                .collect(),
            Ok(results) => fail_all(
                format!(
                    "broker-lite answered {} results for a batch of {count}",
                    results.len()
                )
                .into(),
                count,
            ),
            Err(error) if about_a_message(&error) => {
                tracing::warn!(error = %error, messages = count,
                    "broker-lite refused the batch; sending its messages one by one so only the refused ones fail");
                let publisher = self.clone();
                let publisher = &publisher;
                by_key(refused_again, ONE_BY_ONE_IN_FLIGHT, |message| {
                    let mut publisher = publisher.clone();
                    async move { publisher.call(message).await }
                })
                .await
            }
            Err(error) => fail_all(classify_client(error), count),
        }
    }
}

/// Splits a batch into requests of at most [`BATCH_BYTES`] (estimated), in order.
fn chunks(messages: Vec<Message>) -> Vec<Vec<Message>> {
    let mut chunks = vec![Vec::new()];
    let mut bytes = 0;
    for message in messages {
        let size = message.payload.len()
            + message.topic.len()
            + message.key.as_ref().map_or(0, String::len)
            + message.tag.as_ref().map_or(0, String::len)
            + message
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len() + 8)
                .sum::<usize>()
            + 128;
        let last = chunks.last_mut().expect("never empty");
        if !last.is_empty() && bytes + size > BATCH_BYTES {
            chunks.push(vec![message]);
            bytes = size;
        } else {
            last.push(message);
            bytes += size;
        }
    }
    chunks
}

/// `Ok` for `SEND_OK` and the statuses opted into; a retryable [`NotSendOk`] otherwise.
fn check_status(result: &SendResult, accepted: &BTreeSet<SendStatus>) -> Result<(), NotSendOk> {
    let status = result.send_status();
    if status == SendStatus::SendOk {
        return Ok(());
    }
    if accepted.contains(&status) {
        tracing::warn!(%status, message_id = %result.message_id, "send accepted with a degraded status (opted in)");
        return Ok(());
    }
    Err(NotSendOk::new(status))
}

/// What a client error says about the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The broker refused this message; it can never pass.
    Refused,
    /// The broker as a whole cannot be reached; every message would fail alike.
    Unreachable,
    /// Anything else: this send failed, another may pass.
    Failed,
}

/// A send error, wrapped in [`Permanent`] when the broker refused the message itself and in
/// [`Unavailable`] when the broker could not be reached.
fn classify(error: SendError) -> BoxError {
    match kind(&error.error) {
        Kind::Refused => Box::new(Permanent::new(error)),
        Kind::Unreachable => Box::new(Unavailable::new(error)),
        Kind::Failed => Box::new(error),
    }
}

/// As [`classify`], for an error of a whole batch request.
fn classify_client(error: ClientError) -> BoxError {
    match kind(&error) {
        Kind::Refused => Box::new(Permanent::new(error)),
        Kind::Unreachable => Box::new(Unavailable::new(error)),
        Kind::Failed => Box::new(error),
    }
}

/// Whether the broker refused a whole batch for what one of its messages is or names (too
/// large, invalid, an unknown topic, a topic this principal may not produce to, a limit): the
/// broker validates a batch before storing any of it, so one such message fails them all, and only
/// sending them one by one tells which. A broker that cannot be reached or failed to store fails
/// every message alike, and a retry of the whole batch is the right answer.
fn about_a_message(error: &ClientError) -> bool {
    match error {
        ClientError::Server(reply) => matches!(
            reply.code,
            ErrorCode::InvalidRequest
                | ErrorCode::FrameTooLarge
                | ErrorCode::NotFound
                | ErrorCode::Forbidden
                | ErrorCode::LimitExceeded
        ),
        ClientError::RetriesExhausted { last, .. } => about_a_message(last),
        _ => false,
    }
}

fn kind(error: &ClientError) -> Kind {
    match error {
        ClientError::Server(reply) => match reply.code {
            ErrorCode::InvalidRequest | ErrorCode::FrameTooLarge => Kind::Refused,
            // The broker answers, but for no message at all until it restarts or frees a slot.
            ErrorCode::ShuttingDown | ErrorCode::TooManyConnections => Kind::Unreachable,
            _ => Kind::Failed,
        },
        // The connection, not the message: refused, dropped, or no answer within the timeout.
        ClientError::Connect { .. }
        | ClientError::ConnectionLost { .. }
        | ClientError::Elapsed(_) => Kind::Unreachable,
        ClientError::RetriesExhausted { last, .. } => kind(last),
        _ => Kind::Failed,
    }
}

impl HasSendStatus for SendResult {
    fn send_status(&self) -> SendStatus {
        use broker_lite_client::protocol::SendStatus as Lite;
        match self.status {
            Lite::SendOk => SendStatus::SendOk,
            Lite::FlushDiskTimeout => SendStatus::FlushDiskTimeout,
            Lite::FlushSlaveTimeout => SendStatus::FlushSlaveTimeout,
            Lite::SlaveNotAvailable => SendStatus::SlaveNotAvailable,
            // A status this version does not know is not SEND_OK: an error to RequireSendOk.
            _ => SendStatus::FlushSlaveTimeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use broker_lite_client::protocol::ErrorReply;

    use super::*;

    #[test]
    fn refusals_are_permanent_connection_failures_unavailable_the_rest_retryable() {
        let server = |code| ClientError::Server(ErrorReply::new(code, "no"));
        let io = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        for (error, expected) in [
            (server(ErrorCode::InvalidRequest), Kind::Refused),
            (server(ErrorCode::FrameTooLarge), Kind::Refused),
            (server(ErrorCode::NotFound), Kind::Failed),
            (server(ErrorCode::Internal), Kind::Failed),
            (server(ErrorCode::ShuttingDown), Kind::Unreachable),
            (server(ErrorCode::TooManyConnections), Kind::Unreachable),
            (
                ClientError::Elapsed(std::time::Duration::from_secs(3)),
                Kind::Unreachable,
            ),
            (
                ClientError::Connect {
                    addr: "127.0.0.1:1".into(),
                    source: io(),
                },
                Kind::Unreachable,
            ),
            (
                ClientError::ConnectionLost {
                    addr: "127.0.0.1:1".into(),
                    reason: "reset".into(),
                },
                Kind::Unreachable,
            ),
            (ClientError::UnexpectedResponse("send"), Kind::Failed),
        ] {
            let text = error.to_string();
            assert_eq!(kind(&error), expected, "{text}");
            let exhausted = ClientError::RetriesExhausted {
                attempts: 3,
                last: Box::new(error),
            };
            assert_eq!(kind(&exhausted), expected, "after retries: {text}");
        }
    }

    #[test]
    fn classified_errors_carry_the_relay_markers() {
        let send = |error| SendError {
            message: broker_lite_client::protocol::Message::new("orders", "x"),
            error,
        };
        let refused = classify(send(ClientError::Connect {
            addr: "127.0.0.1:1".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        }));
        assert!(Unavailable::is_unavailable(refused.as_ref()), "{refused}");
        let invalid = classify(send(ClientError::Server(ErrorReply::new(
            ErrorCode::InvalidRequest,
            "bad",
        ))));
        assert!(Permanent::is_permanent(invalid.as_ref()), "{invalid}");
    }

    #[test]
    fn only_send_ok_passes_unless_opted_out() {
        use broker_lite_client::protocol::SendStatus as Lite;
        let result = |status| SendResult {
            status,
            message_id: uuid::Uuid::now_v7(),
            queue_id: 0,
            queue_offset: 0,
            duplicate: false,
        };
        let none = BTreeSet::new();
        assert!(check_status(&result(Lite::SendOk), &none).is_ok());
        for (lite, status) in [
            (Lite::FlushDiskTimeout, SendStatus::FlushDiskTimeout),
            (Lite::FlushSlaveTimeout, SendStatus::FlushSlaveTimeout),
            (Lite::SlaveNotAvailable, SendStatus::SlaveNotAvailable),
        ] {
            let error = check_status(&result(lite), &none).unwrap_err();
            assert_eq!(error.status(), status);
            // Retryable: neither marker.
            let boxed: BoxError = Box::new(error);
            assert!(!Permanent::is_permanent(boxed.as_ref()));
            assert!(!Unavailable::is_unavailable(boxed.as_ref()));
        }
        let opted = BTreeSet::from([SendStatus::SlaveNotAvailable]);
        assert!(check_status(&result(Lite::SlaveNotAvailable), &opted).is_ok());
        assert!(check_status(&result(Lite::FlushDiskTimeout), &opted).is_err());
    }
}
