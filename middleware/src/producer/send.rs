//! Send helpers (safeguards P1, P2, P8): synchronous, asynchronous (future and callback), each
//! result impossible to ignore quietly.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use courier_core::Message;
use tokio::task::JoinHandle;
use tower::{BoxError, Service, ServiceExt};

/// Sends messages through a publisher stack (`tower::Service<Message>`), for applications that
/// send directly rather than through the outbox.
///
/// Every result is `#[must_use]`, and a failed send is also logged and counted
/// (`courier_send_failures_total{topic}`) even if the caller drops the handle.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower::BoxError> {
/// use courier_middleware::{Producer, RequireSendOkLayer, SendStatus, SendTimeoutLayer};
/// use courier_core::Message;
/// use tower::ServiceBuilder;
///
/// let broker = tower::service_fn(|_: Message| async { Ok::<_, tower::BoxError>(SendStatus::SendOk) });
/// let producer = Producer::new(
///     ServiceBuilder::new()
///         .layer(SendTimeoutLayer::default())
///         .layer(RequireSendOkLayer::new())
///         .service(broker),
/// );
/// let status = producer.send(Message::new("orders", "{}")).await?;
/// assert_eq!(status, SendStatus::SendOk);
/// let pending = producer.send_async(Message::new("orders", "{}"));
/// assert_eq!(pending.await?, SendStatus::SendOk);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Producer<S> {
    publisher: S,
}

impl<S> Producer<S>
where
    S: Service<Message> + Clone + Send + 'static,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    /// Sends through `publisher`.
    pub fn new(publisher: S) -> Self {
        Self { publisher }
    }

    /// Sends and waits for the broker's answer (P1).
    ///
    /// # Errors
    ///
    /// Whatever the publisher stack answers: a timeout, a status other than `SendOk`, the last
    /// error after the retries, [`Parked`](crate::Parked) when the failure fallback kept it.
    pub async fn send(&self, message: Message) -> Result<S::Response, BoxError> {
        send(self.publisher.clone(), message).await
    }

    /// Starts the send in the background and returns a handle to await its result (P2).
    pub fn send_async(&self, message: Message) -> SendHandle<S::Response> {
        SendHandle {
            task: tokio::spawn(send(self.publisher.clone(), message)),
        }
    }

    /// Starts the send in the background and calls `callback` with its result (P2's callback
    /// form). The callback runs on a tokio task.
    pub fn send_with_callback<F>(&self, message: Message, callback: F)
    where
        F: FnOnce(Result<S::Response, BoxError>) + Send + 'static,
    {
        let publisher = self.publisher.clone();
        tokio::spawn(async move { callback(send(publisher, message).await) });
    }

    /// The publisher stack.
    pub fn get_ref(&self) -> &S {
        &self.publisher
    }
}

async fn send<S>(publisher: S, message: Message) -> Result<S::Response, BoxError>
where
    S: Service<Message>,
    S::Error: Into<BoxError>,
{
    let topic = message.topic.clone();
    let id = message.id;
    let result = publisher.oneshot(message).await.map_err(Into::into);
    if let Err(error) = &result {
        tracing::warn!(%topic, message.id = %id, %error, "send failed");
        metrics::counter!("courier_send_failures_total", "topic" => topic).increment(1);
    }
    result
}

/// The result of [`Producer::send_async`], to await. Dropping it does not cancel the send, but
/// loses its result: the compiler warns (P8).
#[derive(Debug)]
#[must_use = "a send can fail: await the handle and handle its error (safeguard P8)"]
pub struct SendHandle<R> {
    task: JoinHandle<Result<R, BoxError>>,
}

impl<R> Future for SendHandle<R> {
    type Output = Result<R, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.task)
            .poll(cx)
            .map(|joined| match joined {
                Ok(result) => result,
                Err(error) => Err(BoxError::from(error)),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;
    use tower_test::{assert_request_eq, mock};

    #[tokio::test]
    async fn every_send_form_reports_its_failure() {
        let (service, mut handle) = mock::pair::<Message, ()>();
        let producer = Producer::new(service);
        let message = Message::new("orders", "x");

        let sync = tokio::spawn({
            let producer = producer.clone();
            let message = message.clone();
            async move { producer.send(message).await }
        });
        assert_request_eq!(handle, message.clone()).send_error("broker down");
        assert_eq!(sync.await.unwrap().unwrap_err().to_string(), "broker down");

        let pending = producer.send_async(message.clone());
        assert_request_eq!(handle, message.clone()).send_error("broker down");
        assert!(pending.await.is_err());

        let (tx, rx) = oneshot::channel();
        producer.send_with_callback(message.clone(), move |result| {
            let _ = tx.send(result.is_err());
        });
        assert_request_eq!(handle, message).send_error("broker down");
        assert!(rx.await.unwrap());
    }
}
