//! The SEND_OK check (safeguard P1): any broker status but `SendOk` is an error.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use courier_core::Message;
use courier_core::batch::{BatchFuture, PublishBatch};
use pin_project_lite::pin_project;
use tower::{BoxError, Layer, Service};

/// What the broker said about a send, as RocketMQ's `SendStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum SendStatus {
    /// Stored as configured (flushed and replicated where required).
    SendOk,
    /// Stored in memory, but the synchronous flush to disk timed out.
    FlushDiskTimeout,
    /// Stored on the leader, but the synchronous copy to the follower timed out.
    FlushSlaveTimeout,
    /// Stored on the leader, but no follower is available for a synchronous copy.
    SlaveNotAvailable,
}

impl fmt::Display for SendStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::SendOk => "SEND_OK",
            Self::FlushDiskTimeout => "FLUSH_DISK_TIMEOUT",
            Self::FlushSlaveTimeout => "FLUSH_SLAVE_TIMEOUT",
            Self::SlaveNotAvailable => "SLAVE_NOT_AVAILABLE",
        })
    }
}

/// A publisher response that carries a [`SendStatus`]. Implement it for a broker client's send
/// result (broker-lite's `SendResult`, a JetStream publish ack which is always `SendOk`).
pub trait HasSendStatus {
    /// The broker's status for this send.
    fn send_status(&self) -> SendStatus;
}

impl HasSendStatus for SendStatus {
    fn send_status(&self) -> SendStatus {
        *self
    }
}

/// A publisher that answers `()` only answers once the broker has the message.
impl HasSendStatus for () {
    fn send_status(&self) -> SendStatus {
        SendStatus::SendOk
    }
}

/// The broker answered with a status that was not accepted; retryable (the relay retries, and
/// the message may then be stored twice, which consumers deduplicate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotSendOk {
    status: SendStatus,
}

impl NotSendOk {
    pub(crate) fn new(status: SendStatus) -> Self {
        Self { status }
    }

    /// The status the broker answered.
    pub fn status(&self) -> SendStatus {
        self.status
    }
}

impl fmt::Display for NotSendOk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the broker answered {} instead of SEND_OK", self.status)
    }
}

impl std::error::Error for NotSendOk {}

/// Turns every response whose [`SendStatus`] is not accepted into a [`NotSendOk`] error. Only
/// `SendOk` is accepted unless you [`accept`](RequireSendOkLayer::accept) more (for example
/// `SlaveNotAvailable` on a topic that tolerates a single copy).
///
/// Every publisher that ships with courier checks `SEND_OK` itself (the broker-lite publisher
/// refuses anything else unless told otherwise with `BrokerLitePublisher::accept_status`), so
/// this layer is for publishers of your own whose response carries a status they do not check;
/// around one that checks, it changes nothing.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use courier_middleware::{NotSendOk, RequireSendOkLayer, SendStatus};
/// use tower::{Layer, ServiceExt};
///
/// let broker = tower::service_fn(|_: ()| async { Ok::<_, tower::BoxError>(SendStatus::FlushDiskTimeout) });
/// let error = RequireSendOkLayer::new().layer(broker).oneshot(()).await.unwrap_err();
/// assert_eq!(error.downcast_ref::<NotSendOk>().unwrap().status(), SendStatus::FlushDiskTimeout);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RequireSendOk<S> {
    inner: S,
    accepted: Arc<BTreeSet<SendStatus>>,
}

impl<S> RequireSendOk<S> {
    /// Accepts only `SendOk`.
    pub fn new(inner: S) -> Self {
        RequireSendOkLayer::new().layer(inner)
    }

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
}

impl<S, Request> Service<Request> for RequireSendOk<S>
where
    S: Service<Request>,
    S::Response: HasSendStatus,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        ResponseFuture {
            inner: self.inner.call(request),
            accepted: self.accepted.clone(),
        }
    }
}

pin_project! {
    /// The response future of [`RequireSendOk`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        accepted: Arc<BTreeSet<SendStatus>>,
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    T: HasSendStatus,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = match this.inner.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(result) => result.map_err(Into::into)?,
        };
        Poll::Ready(check(response, this.accepted))
    }
}

/// `response` if its status is `SendOk` or accepted, else a [`NotSendOk`].
fn check<T: HasSendStatus>(response: T, accepted: &BTreeSet<SendStatus>) -> Result<T, BoxError> {
    let status = response.send_status();
    if status == SendStatus::SendOk || accepted.contains(&status) {
        if status != SendStatus::SendOk {
            tracing::warn!(%status, "send accepted with a degraded status");
        }
        Ok(response)
    } else {
        Err(NotSendOk::new(status).into())
    }
}

/// The check applies to each message's outcome: one answered with a status not accepted fails
/// alone.
impl<S> PublishBatch for RequireSendOk<S>
where
    S: PublishBatch,
    S::Response: HasSendStatus,
{
    type Response = S::Response;

    fn publish_batch(&mut self, messages: Vec<Message>) -> BatchFuture<S::Response> {
        let call = self.inner.publish_batch(messages);
        let accepted = self.accepted.clone();
        Box::pin(async move {
            call.await
                .into_iter()
                .map(|outcome| outcome.and_then(|response| check(response, &accepted)))
                .collect()
        })
    }
}

/// Applies [`RequireSendOk`].
#[derive(Debug, Clone, Default)]
pub struct RequireSendOkLayer {
    accepted: BTreeSet<SendStatus>,
}

impl RequireSendOkLayer {
    /// Accepts only `SendOk`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also accepts `status` (logged as a warning each time).
    #[must_use]
    pub fn accept(mut self, status: SendStatus) -> Self {
        self.accepted.insert(status);
        self
    }
}

impl<S> Layer<S> for RequireSendOkLayer {
    type Service = RequireSendOk<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireSendOk {
            inner,
            accepted: Arc::new(self.accepted.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;
    use tower_test::{assert_request_eq, mock};

    #[tokio::test]
    async fn each_outcome_of_a_batch_is_checked() {
        #[derive(Clone)]
        struct Statuses;
        impl PublishBatch for Statuses {
            type Response = SendStatus;
            fn publish_batch(&mut self, messages: Vec<Message>) -> BatchFuture<SendStatus> {
                Box::pin(async move {
                    messages
                        .iter()
                        .map(|m| match m.payload.as_ref() {
                            b"late" => Ok(SendStatus::FlushDiskTimeout),
                            b"error" => Err("broker error".into()),
                            _ => Ok(SendStatus::SendOk),
                        })
                        .collect()
                })
            }
        }
        let mut checked = RequireSendOk::new(Statuses);
        let outcomes = checked
            .publish_batch(vec![
                Message::new("t", "ok"),
                Message::new("t", "late"),
                Message::new("t", "error"),
            ])
            .await;
        assert_eq!(*outcomes[0].as_ref().unwrap(), SendStatus::SendOk);
        let late = outcomes[1].as_ref().unwrap_err();
        assert_eq!(
            late.downcast_ref::<NotSendOk>().unwrap().status(),
            SendStatus::FlushDiskTimeout
        );
        assert_eq!(
            outcomes[2].as_ref().unwrap_err().to_string(),
            "broker error"
        );
    }

    #[tokio::test]
    async fn only_send_ok_passes_unless_accepted() {
        for (status, accepted, ok) in [
            (SendStatus::SendOk, None, true),
            (SendStatus::FlushDiskTimeout, None, false),
            (SendStatus::FlushSlaveTimeout, None, false),
            (SendStatus::SlaveNotAvailable, None, false),
            (
                SendStatus::SlaveNotAvailable,
                Some(SendStatus::SlaveNotAvailable),
                true,
            ),
            (
                SendStatus::FlushDiskTimeout,
                Some(SendStatus::SlaveNotAvailable),
                false,
            ),
        ] {
            let (service, mut handle) = mock::pair::<u8, SendStatus>();
            let mut layer = RequireSendOkLayer::new();
            if let Some(accepted) = accepted {
                layer = layer.accept(accepted);
            }
            let call = tokio::spawn(layer.layer(service).oneshot(1));
            assert_request_eq!(handle, 1).send_response(status);
            let result = call.await.unwrap();
            assert_eq!(result.is_ok(), ok, "{status} with {accepted:?} accepted");
            if let Err(error) = result {
                assert_eq!(error.downcast_ref::<NotSendOk>().unwrap().status(), status);
            }
        }
    }
}
