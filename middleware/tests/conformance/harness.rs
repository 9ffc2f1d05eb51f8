//! What every broker adapter provides to the conformance suite: an isolated topic and group per
//! test, a publisher, a source, a look into the broker (dead letters, stored copies, settled
//! messages), and a way to take the broker down and bring it back.

use std::future::Future;
use std::time::Duration;

use courier_middleware::DeliverySource;
use courier_outbox::Message;
use tower::{BoxError, Service};
use uuid::Uuid;

/// How long a test waits for something that should happen in milliseconds; past it the test fails
/// instead of hanging.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

/// One test's topic and consumer group, unique to the test so that tests run in parallel on a
/// shared broker.
#[derive(Debug, Clone)]
pub(crate) struct Topic {
    /// What messages are published to (`Message::topic`).
    pub(crate) topic: String,
    /// The consumer group the source consumes as.
    pub(crate) group: String,
}

impl Topic {
    /// A topic and group named after `case`, with a random suffix.
    pub(crate) fn unique(case: &str) -> Self {
        let suffix = Uuid::now_v7().simple().to_string();
        let suffix = &suffix[suffix.len() - 12..];
        Self {
            topic: format!("conformance.{case}.{suffix}"),
            group: format!("{case}-{suffix}"),
        }
    }

    /// A message to this topic.
    pub(crate) fn message(&self, payload: impl Into<String>) -> Message {
        Message::new(self.topic.clone(), payload.into())
    }
}

/// What an adapter promises beyond the common cases; a case that needs a promise the adapter does
/// not make checks the weaker property the adapter's docs state instead.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Promises {
    /// The broker stores a message published twice with the same id once (NATS `Nats-Msg-Id`
    /// inside the duplicate window). Without it the suite checks one *effect* only.
    pub(crate) deduplicates_publishes: bool,
}

/// A broker under test. Each test starts its own (or connects to a shared one and uses a unique
/// [`Topic`]); dropping it stops whatever it started.
pub(crate) trait Adapter: Sized + Send + Sync + 'static {
    /// The relay-side publisher.
    type Publisher: Service<Message, Response: Send, Error = BoxError, Future: Send>
        + Clone
        + Send
        + 'static;
    /// The consumer-side source.
    type Source: DeliverySource;

    /// What this adapter promises beyond the common cases.
    const PROMISES: Promises;

    /// A broker for one test.
    fn start() -> impl Future<Output = Self> + Send;

    /// A fresh topic and group named after `case`, provisioned (stream, consumer ...) where the
    /// broker needs it. `max_deliveries` is the runtime's limit the source should agree with.
    fn topic(&self, case: &str) -> impl Future<Output = Topic> + Send;

    /// A publisher to the broker.
    fn publisher(&self) -> impl Future<Output = Self::Publisher> + Send;

    /// A source consuming `topic` as its group.
    fn source(&self, topic: &Topic) -> impl Future<Output = Self::Source> + Send;

    /// The ids of the messages in `topic`'s group dead-letter destination.
    fn dead_letters(&self, topic: &Topic) -> impl Future<Output = Vec<Uuid>> + Send;

    /// How many copies of message `id` the broker stored in `topic`.
    fn stored_copies(&self, topic: &Topic, id: Uuid) -> impl Future<Output = usize> + Send;

    /// Whether the broker considers message `id` settled (acked, or dead-lettered) for `topic`'s
    /// group: nothing of it is left to deliver.
    fn settled(&self, topic: &Topic, id: Uuid) -> impl Future<Output = bool> + Send;

    /// Takes the broker down hard (kill -9 where it is a process), keeping its data.
    fn kill(&mut self) -> impl Future<Output = ()> + Send;

    /// Brings the broker back on the same address with the same data.
    fn restart(&mut self) -> impl Future<Output = ()> + Send;
}

/// Checks `condition` every few milliseconds until it holds; fails the test after [`PATIENCE`].
pub(crate) async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Publishes `message` through a fresh publisher of `adapter`, retrying while the broker is
/// unreachable (after a restart), until [`PATIENCE`] runs out.
pub(crate) async fn publish<A: Adapter>(adapter: &A, message: Message) {
    use tower::ServiceExt;
    let publisher = adapter.publisher().await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match publisher.clone().oneshot(message.clone()).await {
            Ok(_) => return,
            Err(error) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "publishing {} failed: {error}",
                    message.id
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
