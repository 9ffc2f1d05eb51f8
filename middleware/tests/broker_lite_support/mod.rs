//! An embedded broker-lite (SYNC_FLUSH, on a temporary directory) for the middleware's tests, with
//! helpers to publish, consume and wait. Broker time moves only through its `ManualClock`: tokio
//! time is never paused, since the broker's store writer is a plain thread.
// Shared by two test binaries, each of which uses only part of it.
#![allow(dead_code)]

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker_lite::broker::{ManualClock, StoredMessage, TraceKind};
use broker_lite::client::{ConsumerConfig, ProducerConfig};
use broker_lite::embedded::{self, EmbeddedBroker, EmbeddedConfig};
use broker_lite::storage::FlushMode;
use courier_middleware::{
    BrokerLitePublisher, BrokerLiteSource, CatchPanicLayer, Consumer, Delivery, DeliverySource,
    RequireSendOk, RequireSendOkLayer, TraceLayer,
};
use courier_outbox::Message;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt};
use uuid::Uuid;

/// How long a test waits for something that should happen in milliseconds.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

pub(crate) struct Env {
    _dir: tempfile::TempDir,
    pub(crate) clock: ManualClock,
    pub(crate) broker: EmbeddedBroker,
}

pub(crate) async fn start_broker(tweak: impl FnOnce(&mut EmbeddedConfig)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let mut config = EmbeddedConfig::default();
    config.broker.store.flush_mode = FlushMode::Sync;
    config.broker.store.segment_size = 1 << 20;
    config.broker.store.max_record_size = 64 * 1024;
    config.broker.max_message_size = 32 * 1024;
    config.broker.clock = Arc::new(clock.clone());
    config.broker.background_tasks = false;
    tweak(&mut config);
    let broker = embedded::start(dir.path(), config).await.unwrap();
    Env {
        _dir: dir,
        clock,
        broker,
    }
}

impl Env {
    pub(crate) async fn publisher(&self) -> RequireSendOk<BrokerLitePublisher> {
        let publisher = BrokerLitePublisher::connect(self.broker.addr(), ProducerConfig::default())
            .await
            .unwrap();
        RequireSendOkLayer::new().layer(publisher)
    }

    pub(crate) async fn source(&self, config: ConsumerConfig) -> BrokerLiteSource {
        BrokerLiteSource::connect(self.broker.addr(), config)
            .await
            .unwrap()
            .with_broker_config(self.broker.broker().config())
    }

    pub(crate) async fn publish(&self, message: Message) -> Uuid {
        let id = message.id;
        let sent = self.publisher().await.oneshot(message).await.unwrap();
        assert_eq!(sent.message_id, id, "the envelope id is the broker's id");
        id
    }

    /// How many events of message `id`'s trace match `kind`.
    pub(crate) fn count(&self, id: Uuid, kind: impl Fn(&TraceKind) -> bool) -> usize {
        self.broker
            .broker()
            .trace(id)
            .iter()
            .filter(|e| kind(&e.kind))
            .count()
    }

    /// The dead letters of consumer group `group`.
    pub(crate) async fn dead_letters(&self, group: &str) -> Vec<StoredMessage> {
        self.broker.broker().dead_letters(group, 10).await.unwrap()
    }
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
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every call the handler saw: (payload, attempt).
pub(crate) type Calls = Arc<Mutex<Vec<(String, u32)>>>;

/// A handler stack (trace, catch-panic) that records each call and answers what `decide` says.
pub(crate) fn recording<F>(
    calls: &Calls,
    decide: F,
) -> impl Service<Delivery, Response = (), Error = BoxError, Future: Send> + Clone + Send + 'static
where
    F: Fn(&Delivery) -> Result<(), BoxError> + Clone + Send + Sync + 'static,
{
    let calls = calls.clone();
    ServiceBuilder::new()
        .layer(TraceLayer::new())
        .layer(CatchPanicLayer::new())
        .service_fn(move |delivery: Delivery| {
            let calls = calls.clone();
            let decide = decide.clone();
            async move {
                let payload = String::from_utf8(delivery.message.payload.to_vec()).unwrap();
                calls.lock().unwrap().push((payload, delivery.attempt));
                decide(&delivery)
            }
        })
}

pub(crate) fn run<S, H>(consumer: Consumer<S, H>) -> (CancellationToken, JoinHandle<()>)
where
    S: DeliverySource,
    H: Service<Delivery> + Clone + Send + 'static,
    H::Error: Into<BoxError>,
    H::Future: Send + 'static,
    H::Response: Send + 'static,
{
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(consumer.run(shutdown.clone()));
    (shutdown, running)
}

pub(crate) async fn stop(shutdown: CancellationToken, running: JoinHandle<()>) {
    shutdown.cancel();
    tokio::time::timeout(PATIENCE, running)
        .await
        .expect("the consumer stops")
        .unwrap();
}

pub(crate) fn calls_of(calls: &Calls) -> Vec<(String, u32)> {
    calls.lock().unwrap().clone()
}
