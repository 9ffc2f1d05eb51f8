//! The broker-lite publisher: the envelope in, broker-lite's `SendResult` out.

use std::task::{Context, Poll};

use broker_lite_client::protocol::{ErrorCode, SendResult};
use broker_lite_client::{Addresses, ClientError, Producer, ProducerConfig, SendError};
use courier_core::{Message, Permanent};
use tower::{BoxError, Service};

use crate::boxed::BoxResponseFuture;
use crate::{HasSendStatus, SendStatus};

/// A `tower::Service<Message>` that sends each envelope with a broker-lite
/// [`Producer`] and answers the broker's [`SendResult`]: the publisher the outbox relay (and a
/// [`crate::Producer`]) publishes through.
///
/// - **Status** (P1): the result carries RocketMQ's status and implements [`HasSendStatus`], so
///   wrap the publisher in [`RequireSendOk`](crate::RequireSendOk) to turn anything but
///   `SEND_OK` into an error.
/// - **Failures**: a failed send is a [`SendError`] holding the message (nothing is dropped
///   silently). When the broker refused the message itself, so that sending it again can never
///   succeed (larger than the broker's `max_message_size`, an invalid topic name, a property
///   name reserved for the broker), the error is wrapped in [`courier_core::Permanent`] and the
///   relay moves the message to its failure table at once instead of retrying it (P6).
///   Everything else (connection lost, timeout, broker shutting down, an unknown topic that an
///   administrator may still create) stays retryable.
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
/// use courier_middleware::{BrokerLitePublisher, RequireSendOkLayer};
/// use courier_outbox::Relay;
/// use tokio_util::sync::CancellationToken;
/// use tower::ServiceBuilder;
///
/// let publisher = ServiceBuilder::new()
///     .layer(RequireSendOkLayer::new())
///     .service(BrokerLitePublisher::connect("127.0.0.1:9876", ProducerConfig::default()).await?);
/// Relay::builder(pool, publisher).build()?.run(CancellationToken::new()).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct BrokerLitePublisher {
    producer: Producer,
}

impl BrokerLitePublisher {
    /// Publishes through `producer`.
    pub fn new(producer: Producer) -> Self {
        Self { producer }
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
        BoxResponseFuture::new(Box::pin(async move {
            producer
                .send(super::to_broker(message))
                .await
                .map_err(classify)
        }))
    }
}

/// A send error, wrapped in [`Permanent`] when the broker refused the message itself.
fn classify(error: SendError) -> BoxError {
    if refused_for_good(&error.error) {
        Box::new(Permanent::new(error))
    } else {
        Box::new(error)
    }
}

/// Whether the broker refused the request as such, so that the same message can never pass.
fn refused_for_good(error: &ClientError) -> bool {
    match error {
        ClientError::Server(reply) => {
            matches!(
                reply.code,
                ErrorCode::InvalidRequest | ErrorCode::FrameTooLarge
            )
        }
        ClientError::RetriesExhausted { last, .. } => refused_for_good(last),
        _ => false,
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
    fn only_refusals_of_the_message_are_permanent() {
        let server = |code| ClientError::Server(ErrorReply::new(code, "no"));
        assert!(refused_for_good(&server(ErrorCode::InvalidRequest)));
        assert!(refused_for_good(&server(ErrorCode::FrameTooLarge)));
        assert!(!refused_for_good(&server(ErrorCode::NotFound)));
        assert!(!refused_for_good(&server(ErrorCode::ShuttingDown)));
        assert!(!refused_for_good(&ClientError::Elapsed(
            std::time::Duration::from_secs(3)
        )));
        assert!(refused_for_good(&ClientError::RetriesExhausted {
            attempts: 3,
            last: Box::new(server(ErrorCode::InvalidRequest)),
        }));
    }
}
