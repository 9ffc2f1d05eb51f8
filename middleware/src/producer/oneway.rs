//! One-way sends (safeguard P3): fire and forget, only where losing a message is acceptable.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use courier_core::{Message, Permanent};
use tower::{BoxError, Layer, Service, ServiceExt};

use crate::boxed::BoxResponseFuture;

/// A one-way send to a topic that was not declared loss-tolerant was refused; the message was not
/// sent and is given back. Wrapped in `courier_core::Permanent` when returned, so no retry
/// layer retries it.
#[derive(Debug)]
pub struct OneWayRefused {
    /// The refused message.
    pub message: Message,
}

impl fmt::Display for OneWayRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "one-way send to topic `{}` refused: the topic is not declared loss-tolerant; \
             send it synchronously, or declare it with OneWayLayer::loss_tolerant",
            self.message.topic
        )
    }
}

impl std::error::Error for OneWayRefused {}

/// Sends without waiting for the broker: the call answers `Ok(())` at once and the send runs in
/// the background, its failure only logged. Allowed only for topics declared loss-tolerant (and
/// never for one declared critical); other topics get [`OneWayRefused`]. Every one-way send is
/// counted (`courier_send_oneway_total{topic}`) and failures too
/// (`courier_send_oneway_failures_total{topic}`).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use courier_middleware::{OneWayLayer, OneWayRefused};
/// use courier_core::Message;
/// use tower::{Layer, ServiceExt};
///
/// let broker = tower::service_fn(|_: Message| async { Ok::<_, tower::BoxError>(()) });
/// let oneway = OneWayLayer::new().loss_tolerant(["telemetry"]).layer(broker);
/// oneway.clone().oneshot(Message::new("telemetry", "cpu=3")).await.unwrap();
/// let refused = oneway.oneshot(Message::new("payments", "{}")).await.unwrap_err();
/// assert!(courier_core::Permanent::is_permanent(refused.as_ref()));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct OneWay<S> {
    inner: S,
    topics: Arc<Topics>,
}

#[derive(Debug, Default)]
struct Topics {
    loss_tolerant: BTreeSet<String>,
    critical: BTreeSet<String>,
}

impl Topics {
    fn allows(&self, topic: &str) -> bool {
        self.loss_tolerant.contains(topic) && !self.critical.contains(topic)
    }
}

impl<S> OneWay<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Whether one-way sends to `topic` are allowed.
    pub fn allows(&self, topic: &str) -> bool {
        self.topics.allows(topic)
    }
}

impl<S> Service<Message> for OneWay<S>
where
    S: Service<Message> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = BoxError;
    type Future = BoxResponseFuture<()>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The send runs in the background on a clone that waits for its own readiness.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, message: Message) -> Self::Future {
        if !self.topics.allows(&message.topic) {
            tracing::error!(topic = %message.topic, message.id = %message.id,
                "one-way send refused: topic not declared loss-tolerant");
            metrics::counter!("courier_send_oneway_refused_total", "topic" => message.topic.clone())
                .increment(1);
            let refused: BoxError = Permanent::new(OneWayRefused { message }).into();
            return BoxResponseFuture::new(Box::pin(async move { Err(refused) }));
        }
        let topic = message.topic.clone();
        let id = message.id;
        tracing::warn!(%topic, message.id = %id, "one-way send: the result will not be checked");
        metrics::counter!("courier_send_oneway_total", "topic" => topic.clone()).increment(1);
        let service = self.inner.clone();
        tokio::spawn(async move {
            if let Err(error) = service.oneshot(message).await {
                let error: BoxError = error.into();
                tracing::warn!(%topic, message.id = %id, %error, "one-way send failed; the message is lost");
                metrics::counter!("courier_send_oneway_failures_total", "topic" => topic)
                    .increment(1);
            }
        });
        BoxResponseFuture::new(Box::pin(async { Ok(()) }))
    }
}

/// Applies [`OneWay`]; no topic is loss-tolerant until declared.
#[derive(Debug, Clone, Default)]
pub struct OneWayLayer {
    loss_tolerant: BTreeSet<String>,
    critical: BTreeSet<String>,
}

impl OneWayLayer {
    /// A layer that refuses every topic.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares `topics` loss-tolerant: one-way sends to them are allowed.
    #[must_use]
    pub fn loss_tolerant<I: IntoIterator<Item = T>, T: Into<String>>(mut self, topics: I) -> Self {
        self.loss_tolerant
            .extend(topics.into_iter().map(Into::into));
        self
    }

    /// Declares `topics` critical: one-way sends to them are refused even if also declared
    /// loss-tolerant.
    #[must_use]
    pub fn critical<I: IntoIterator<Item = T>, T: Into<String>>(mut self, topics: I) -> Self {
        self.critical.extend(topics.into_iter().map(Into::into));
        self
    }
}

impl<S> Layer<S> for OneWayLayer {
    type Service = OneWay<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OneWay {
            inner,
            topics: Arc::new(Topics {
                loss_tolerant: self.loss_tolerant.clone(),
                critical: self.critical.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_test::{assert_request_eq, mock};

    #[tokio::test]
    async fn loss_tolerant_topics_are_sent_in_the_background_and_others_refused() {
        let (service, mut handle) = mock::pair::<Message, ()>();
        let oneway = OneWayLayer::new()
            .loss_tolerant(["telemetry", "audit"])
            .critical(["audit"])
            .layer(service);
        let telemetry = Message::new("telemetry", "x");
        // Answers before the broker does.
        oneway.clone().oneshot(telemetry.clone()).await.unwrap();
        assert_request_eq!(handle, telemetry).send_error("lost, as accepted");

        for topic in ["payments", "audit"] {
            let error = oneway
                .clone()
                .oneshot(Message::new(topic, "y"))
                .await
                .unwrap_err();
            assert!(Permanent::is_permanent(error.as_ref()));
            let refused = error
                .source()
                .unwrap()
                .downcast_ref::<OneWayRefused>()
                .unwrap();
            assert_eq!(refused.message.topic, topic);
        }
    }
}
