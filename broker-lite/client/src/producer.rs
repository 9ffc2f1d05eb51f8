//! The producer client (safeguards P1-P5, P8, P9).

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{debug, warn};
use uuid::Uuid;

use super::endpoints::{Addresses, ConnectOptions, Endpoints};
use super::error::{ClientError, Result, SendError};
use super::security::Security;
use crate::protocol::{DEFAULT_MAX_FRAME_SIZE, Message, Request, Response, SendResult, SendStatus};

/// Producer settings. The defaults match RocketMQ's.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProducerConfig {
    /// How long one attempt waits for the broker's answer (`sendMsgTimeout`, P5). Default 3 s.
    pub send_timeout: Duration,
    /// Extra attempts after a failed one (`retryTimesWhenSendFailed`, P4), and after an answer
    /// `FLUSH_SLAVE_TIMEOUT` / `SLAVE_NOT_AVAILABLE` (stored on the leader, not yet replicated;
    /// the broker deduplicates the retry by message id). Default 2. With a replicated
    /// broker-lite keep `send_timeout` above the leader's slave timeout, so that a send waiting
    /// for replicas gets its answer instead of timing out.
    pub retries: u32,
    /// Backoff before the first retry; doubled for each further one, with jitter. Default 100 ms.
    pub retry_backoff: Duration,
    /// Upper bound of the backoff. Default 2 s.
    pub max_retry_backoff: Duration,
    /// How long connecting to one address may take. Default 3 s.
    pub connect_timeout: Duration,
    /// Topics that accept one-way sends (P3). One-way sends to any other topic are refused,
    /// so critical topics never lose messages that way. Default: none.
    pub oneway_topics: HashSet<String>,
    /// Largest frame accepted from the broker. Default 8 MiB.
    pub max_frame_size: u32,
    /// Credentials and TLS for the broker (issue 16). Default: neither, for a broker on
    /// loopback that runs open.
    pub security: Security,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            send_timeout: Duration::from_secs(3),
            retries: 2,
            retry_backoff: Duration::from_millis(100),
            max_retry_backoff: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(3),
            oneway_topics: HashSet::new(),
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            security: Security::default(),
        }
    }
}

/// Sends messages to a broker, failing over across an address list.
///
/// Cheap to clone; clones share the connection. Every message is given a UUIDv7 id before the
/// first attempt (unless it has one), so a retry after a lost answer stores a duplicate with the
/// *same* id, which idempotent consumers recognise (C7). The queue is left to the broker, which
/// picks it by key hash, so one key stays in one queue, in order.
///
/// ```no_run
/// use broker_lite_client::{Producer, ProducerConfig};
/// use broker_lite_client::protocol::{Message, SendStatus};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let producer = Producer::connect("127.0.0.1:9876;127.0.0.1:9877", ProducerConfig::default()).await?;
/// let result = producer.send(Message::new("orders", "order 42 created").with_key("order-42")).await?;
/// assert_eq!(result.status, SendStatus::SendOk);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    endpoints: Endpoints,
    config: ProducerConfig,
}

impl Producer {
    /// Connects to the first reachable address of `addresses`.
    ///
    /// # Errors
    ///
    /// [`ClientError::InvalidAddress`] for an empty list, [`ClientError::Connect`] when no
    /// address accepts a connection.
    pub async fn connect(
        addresses: impl Into<Addresses>,
        config: ProducerConfig,
    ) -> Result<Producer> {
        let options = ConnectOptions {
            connect_timeout: config.connect_timeout,
            max_frame_size: config.max_frame_size,
            security: config.security.clone(),
        };
        let endpoints = Endpoints::new(addresses.into(), options)?;
        endpoints.connection().await?;
        Ok(Producer {
            inner: Arc::new(Inner { endpoints, config }),
        })
    }

    /// Sends `message` and waits for the broker's [`SendResult`] (P1).
    ///
    /// Each attempt waits up to [`ProducerConfig::send_timeout`]; connection failures, timeouts
    /// and retryable broker errors are retried [`ProducerConfig::retries`] times with backoff,
    /// moving to the next address. `FLUSH_SLAVE_TIMEOUT` and `SLAVE_NOT_AVAILABLE` are retried
    /// the same way, with the same message id. Any other result whose status is not `SendOk`,
    /// and those two once the retries are spent, is returned as is: check it (the result is
    /// `#[must_use]`).
    ///
    /// # Errors
    ///
    /// A [`SendError`] holding the message and the last error.
    pub async fn send(&self, mut message: Message) -> Result<SendResult, SendError> {
        message.message_id.get_or_insert_with(Uuid::now_v7);
        let request = Request::Send(message);
        let result = self.inner.with_retries(&request).await;
        let Request::Send(message) = request else {
            unreachable!()
        };
        match result {
            Ok(Response::Send(result)) => {
                metrics::counter!("broker_lite_client_sends_total", "outcome" => "answered")
                    .increment(1);
                Ok(result)
            }
            Ok(_) => Err(SendError {
                message,
                error: ClientError::UnexpectedResponse("send"),
            }),
            Err(error) => {
                metrics::counter!("broker_lite_client_sends_total", "outcome" => "failed")
                    .increment(1);
                warn!(topic = %message.topic, message_id = ?message.message_id, error = %super::error::chain(&error), "send failed");
                Err(SendError { message, error })
            }
        }
    }

    /// Sends a batch; one result per message, in order. Same retries as [`Producer::send`].
    ///
    /// # Errors
    ///
    /// The last error; the messages are not given back, keep a copy (they are cheap to clone).
    pub async fn send_batch(&self, mut messages: Vec<Message>) -> Result<Vec<SendResult>> {
        for m in &mut messages {
            m.message_id.get_or_insert_with(Uuid::now_v7);
        }
        match self
            .inner
            .with_retries(&Request::SendBatch(messages))
            .await?
        {
            Response::SendBatch(results) => Ok(results),
            _ => Err(ClientError::UnexpectedResponse("send batch")),
        }
    }

    /// Sends `message` in the background (P2); await the handle for the result.
    pub fn send_async(&self, message: Message) -> SendHandle {
        let copy = message.clone();
        let producer = self.clone();
        SendHandle {
            task: tokio::spawn(async move { producer.send(message).await }),
            message: Some(copy),
        }
    }

    /// Sends `message` in the background and calls `callback` with the outcome (P2).
    pub fn send_with_callback<F>(&self, message: Message, callback: F)
    where
        F: FnOnce(Result<SendResult, SendError>) + Send + 'static,
    {
        let producer = self.clone();
        tokio::spawn(async move { callback(producer.send(message).await) });
    }

    /// Sends without waiting for any answer (P3): the message may be lost without notice.
    ///
    /// Only for topics listed in [`ProducerConfig::oneway_topics`]; logged with a warning and
    /// counted in `broker_lite_client_oneway_sends_total`.
    ///
    /// # Errors
    ///
    /// [`ClientError::Refused`] for a topic not opted in; a connection error when no broker is
    /// reachable.
    pub async fn send_oneway(&self, message: Message) -> Result<()> {
        if !self.inner.config.oneway_topics.contains(&message.topic) {
            return Err(ClientError::Refused(format!(
                "one-way sends to topic {} are not enabled (ProducerConfig::oneway_topics); use send",
                message.topic
            )));
        }
        warn!(topic = %message.topic, "one-way send: the message may be lost without notice (P3)");
        metrics::counter!("broker_lite_client_oneway_sends_total", "topic" => message.topic.clone()).increment(1);
        let conn = self.inner.endpoints.connection().await?;
        conn.send_oneway(&Request::SendOneway(message)).await
    }
}

impl Inner {
    async fn with_retries(&self, request: &Request) -> Result<Response> {
        let attempts = self.config.retries + 1;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match self.endpoints.call(request, self.config.send_timeout).await {
                // Stored on the leader but not known replicated: the same message id again,
                // which the broker deduplicates (it answers from the stored copy).
                Ok(response) if attempt < attempts && awaits_replicas(&response) => {
                    debug!(
                        attempt,
                        "send not yet replicated; retrying with the same id"
                    );
                    metrics::counter!("broker_lite_client_send_retries_total").increment(1);
                    tokio::time::sleep(backoff(
                        self.config.retry_backoff,
                        self.config.max_retry_backoff,
                        attempt,
                    ))
                    .await;
                    continue;
                }
                Ok(response) => {
                    debug!(
                        attempt,
                        command = request.code().name(),
                        "send attempt answered"
                    );
                    return Ok(response);
                }
                Err(e) => e,
            };
            debug!(attempt, attempts, error = %super::error::chain(&error), "send attempt failed");
            if !error.is_retryable() {
                return Err(error);
            }
            if attempts == 1 {
                return Err(error);
            }
            if attempt >= attempts {
                return Err(ClientError::RetriesExhausted {
                    attempts,
                    last: Box::new(error),
                });
            }
            metrics::counter!("broker_lite_client_send_retries_total").increment(1);
            tokio::time::sleep(backoff(
                self.config.retry_backoff,
                self.config.max_retry_backoff,
                attempt,
            ))
            .await;
        }
    }
}

/// Whether an answer holds a `FLUSH_SLAVE_TIMEOUT` or `SLAVE_NOT_AVAILABLE` status: the
/// message is on the leader, not yet on enough followers; retried like a lost answer.
fn awaits_replicas(response: &Response) -> bool {
    let waiting = |r: &SendResult| {
        matches!(
            r.status,
            SendStatus::FlushSlaveTimeout | SendStatus::SlaveNotAvailable
        )
    };
    match response {
        Response::Send(r) => waiting(r),
        Response::SendBatch(results) => results.iter().any(waiting),
        _ => false,
    }
}

/// Exponential backoff with "equal jitter": half fixed, half random.
fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << (attempt - 1).min(16)).min(max);
    let half = exp / 2;
    half + half.mul_f64(rand::random::<f64>())
}

/// The outcome of a [`Producer::send_async`].
#[derive(Debug)]
#[must_use = "a send handle must be awaited to learn whether the message was stored (P8)"]
pub struct SendHandle {
    task: JoinHandle<Result<SendResult, SendError>>,
    message: Option<Message>,
}

impl Future for SendHandle {
    type Output = Result<SendResult, SendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.task).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(result)) => Poll::Ready(result),
            Poll::Ready(Err(join)) => Poll::Ready(Err(SendError {
                message: self.message.take().expect("polled after completion"),
                error: ClientError::Refused(format!("the send task did not complete: {join}")),
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_rocketmq() {
        let config = ProducerConfig::default();
        assert_eq!(
            config.send_timeout,
            Duration::from_secs(3),
            "sendMsgTimeout (P5)"
        );
        assert_eq!(config.retries, 2, "retryTimesWhenSendFailed (P4)");
        assert!(
            config.oneway_topics.is_empty(),
            "one-way sends are opt-in (P3)"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for attempt in 1..20 {
            let b = backoff(base, max, attempt);
            let exp = base.saturating_mul(1 << (attempt - 1).min(16)).min(max);
            assert!(b >= exp / 2 && b <= exp, "attempt {attempt}: {b:?}");
        }
    }
}
