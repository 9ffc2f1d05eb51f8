//! What can go wrong talking to RabbitMQ, and what each failure means to the relay.

use std::time::Duration;

use courier_core::Unavailable;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use tower::BoxError;
use uuid::Uuid;

/// An error of the RabbitMQ publisher, source or topology, saying what went wrong and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RabbitMqError {
    /// No connection to the broker could be opened.
    #[error(
        "could not connect to RabbitMQ at {address}: {source}; check that the broker runs and that the URL, user and vhost are right"
    )]
    Connect {
        /// The broker address, without credentials.
        address: String,
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
    /// An AMQP operation failed (the connection or channel broke, or the broker refused it).
    #[error("RabbitMQ {operation} failed: {source}")]
    Operation {
        /// What was being done.
        operation: &'static str,
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
    /// The broker accepted the message but could route it to no queue (`mandatory` returned it).
    #[error(
        "RabbitMQ returned message {message_id} as unroutable ({reply_code} {reply_text}): exchange '{exchange}' has no queue bound for routing key '{routing_key}'; declare the consumer's queue and binding (RabbitMqTopology) before publishing"
    )]
    Unroutable {
        /// The envelope id.
        message_id: Uuid,
        /// The exchange it was published to.
        exchange: String,
        /// Its routing key.
        routing_key: String,
        /// The broker's reply code (312 NO_ROUTE).
        reply_code: u16,
        /// The broker's reply text.
        reply_text: String,
    },
    /// The broker refused to take responsibility for the message (a publisher-confirm nack).
    #[error(
        "RabbitMQ nacked message {message_id}: the broker did not store it (a queue is unavailable or refused it); it will be published again"
    )]
    Nacked {
        /// The envelope id.
        message_id: Uuid,
    },
    /// No confirmation arrived in time; the message may or may not be stored, so it is published
    /// again (the consumer's idempotency absorbs a duplicate).
    #[error(
        "RabbitMQ did not confirm message {message_id} within {after:?}; it will be published again"
    )]
    ConfirmTimeout {
        /// The envelope id.
        message_id: Uuid,
        /// The confirm timeout.
        after: Duration,
    },
    /// An existing queue or exchange was declared with other arguments than this configuration.
    #[error(
        "RabbitMQ {kind} '{name}' already exists with a different {argument} than this configuration declares ({expected}); the broker says: {reply_text}. Either change the configuration to match the existing {kind}, or drain and delete it (rabbitmqctl delete_queue / rabbitmqadmin delete) and let courier declare it again"
    )]
    TopologyConflict {
        /// `queue` or `exchange`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The argument that differs, as the broker names it (`x-queue-type`, `durable` ...).
        argument: String,
        /// What this configuration declares for it.
        expected: String,
        /// The broker's PRECONDITION_FAILED text.
        reply_text: String,
    },
    /// The broker cancelled the consumer or ended its stream (the queue was deleted, or the
    /// connection closed); the next pull reconnects.
    #[error(
        "the RabbitMQ consumer of queue '{queue}' stopped: {reason}; reconnecting on the next pull"
    )]
    ConsumerStopped {
        /// The queue.
        queue: String,
        /// What happened.
        reason: String,
    },
}

impl RabbitMqError {
    pub(crate) fn operation(operation: &'static str) -> impl FnOnce(lapin::Error) -> Self {
        move |source| Self::Operation { operation, source }
    }

    /// True when the broker as a whole cannot be reached (connect failed, connection lost).
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Connect { .. } => true,
            Self::Operation { source, .. } => is_connection_failure(source),
            Self::ConsumerStopped { .. } => true,
            _ => false,
        }
    }

    /// The error as the relay should see it: wrapped in [`Unavailable`] when the broker cannot be
    /// reached (the relay pauses and probes instead of counting attempts), plain otherwise
    /// (retried after the backoff).
    pub(crate) fn into_publish_error(self) -> BoxError {
        if self.is_unreachable() {
            Box::new(Unavailable::new(self))
        } else {
            Box::new(self)
        }
    }
}

/// Whether `error` means the connection (not just a channel) is gone.
pub(crate) fn is_connection_failure(error: &lapin::Error) -> bool {
    match error {
        lapin::Error::IOError(_)
        | lapin::Error::InvalidConnectionState(_)
        | lapin::Error::MissingHeartbeatError
        | lapin::Error::ParsingError(_)
        | lapin::Error::SerialisationError(_) => true,
        lapin::Error::ProtocolError(error) => matches!(error.kind(), AMQPErrorKind::Hard(_)),
        _ => false,
    }
}

/// The PRECONDITION_FAILED text of `error`, when it is one.
pub(crate) fn precondition_failed(error: &lapin::Error) -> Option<String> {
    match error {
        lapin::Error::ProtocolError(error)
            if matches!(
                error.kind(),
                AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
            ) =>
        {
            Some(error.get_message().as_str().to_owned())
        }
        _ => None,
    }
}

/// The argument RabbitMQ names in an "inequivalent arg 'x-queue-type' for queue ..." text.
pub(crate) fn inequivalent_argument(reply_text: &str) -> Option<&str> {
    let rest = reply_text.split_once("inequivalent arg '")?.1;
    Some(rest.split_once('\'')?.0)
}

#[cfg(test)]
mod tests {
    use lapin::protocol::AMQPError;

    use super::*;

    #[test]
    fn the_differing_argument_is_read_from_the_reply() {
        let text = "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'orders' in vhost '/': received the value 'quorum' of type 'longstr' but current is none";
        assert_eq!(inequivalent_argument(text), Some("x-queue-type"));
        assert_eq!(inequivalent_argument("NOT_FOUND"), None);
        let error = lapin::Error::ProtocolError(AMQPError::new(
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED),
            text.into(),
        ));
        assert_eq!(precondition_failed(&error).as_deref(), Some(text));
    }

    #[test]
    fn lost_connections_are_unavailable_channel_errors_retryable() {
        let io = lapin::Error::IOError(std::sync::Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        let refused = RabbitMqError::Connect {
            address: "127.0.0.1:1".into(),
            source: io.clone(),
        }
        .into_publish_error();
        assert!(Unavailable::is_unavailable(refused.as_ref()), "{refused}");
        let lost = RabbitMqError::operation("publish")(io).into_publish_error();
        assert!(Unavailable::is_unavailable(lost.as_ref()), "{lost}");
        let not_found =
            RabbitMqError::operation("publish")(lapin::Error::ProtocolError(AMQPError::new(
                AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND),
                "no exchange".into(),
            )))
            .into_publish_error();
        assert!(!Unavailable::is_unavailable(not_found.as_ref()));
        let nacked = RabbitMqError::Nacked {
            message_id: Uuid::now_v7(),
        }
        .into_publish_error();
        assert!(!Unavailable::is_unavailable(nacked.as_ref()));
    }
}
