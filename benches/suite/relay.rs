//! Scenario 2, relay drain: a Postgres backlog published by one or two relays to broker-lite over
//! TCP (SYNC_FLUSH, ASYNC_FLUSH) or to an in-memory sink, beside a raw `DELETE … RETURNING` loop
//! with the same batch size, in the same run. Also where a relay batch spends its time, what one
//! claim costs, and (full mode) that cost at 1M against 10k in the same repeat.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use broker_lite::embedded::{self, EmbeddedBroker, EmbeddedConfig};
use broker_lite::storage::FlushMode;
use courier::broker::protocol::{self, SendStatus};
use courier::broker::{Producer, ProducerConfig};
use courier::middleware::BrokerLitePublisher;
use courier::outbox::batch::BatchFuture;
use courier::outbox::{Message, PublishBatch, Publisher, Relay, RelayState};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tower::{BoxError, service_fn};
use tracing::span;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::Params;
use crate::enqueue::{fill_backlog, raw_drain};
use crate::report::{Report, size_label};

pub(crate) const BATCH: usize = 500;
pub(crate) const SCENARIO: &str = "2. Relay drain (batch 500, 256-byte payloads, 1024 keys)";

/// Where a relay publishes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Sink {
    Memory,
    Broker(FlushMode),
    /// `BrokerLitePublisher` through `Relay::batch_builder`: one request per claimed batch.
    BrokerBatch(FlushMode),
}

impl Sink {
    fn label(self) -> &'static str {
        match self {
            Sink::Memory => "in-memory sink",
            Sink::Broker(FlushMode::Sync) => "broker-lite SYNC_FLUSH",
            Sink::Broker(_) => "broker-lite ASYNC_FLUSH",
            Sink::BrokerBatch(FlushMode::Sync) => "broker-lite SYNC_FLUSH, batch publish",
            Sink::BrokerBatch(_) => "broker-lite ASYNC_FLUSH, batch publish",
        }
    }
}

/// Starts an embedded broker-lite (TCP on 127.0.0.1, ephemeral port) in a fresh directory.
pub(crate) async fn start_broker(
    flush: FlushMode,
) -> anyhow::Result<(EmbeddedBroker, tempfile::TempDir)> {
    // Under the target directory rather than /tmp, which may be a tmpfs where fsync costs nothing.
    let parent = crate::target_dir().join("bench-data");
    std::fs::create_dir_all(&parent)?;
    let dir = tempfile::tempdir_in(parent)?;
    let mut config = EmbeddedConfig::default();
    config.broker.store.flush_mode = flush;
    let broker = embedded::start(dir.path(), config).await?;
    Ok((broker, dir))
}

/// The outbox envelope as a broker-lite message.
pub(crate) fn to_broker(message: Message) -> protocol::Message {
    let mut out = protocol::Message::new(message.topic, message.payload);
    out.message_id = Some(message.id);
    out.key = message.key;
    out.tag = message.tag;
    out.properties = message.headers;
    out
}

/// A relay publisher: `Producer::send`, `SendOk` required, counting what was stored.
pub(crate) fn broker_publisher(producer: Producer, stored: Arc<AtomicUsize>) -> impl Publisher {
    service_fn(move |message: Message| {
        let producer = producer.clone();
        let stored = stored.clone();
        async move {
            send_ok(&producer, message).await?;
            stored.fetch_add(1, Ordering::Relaxed);
            mark_published();
            Ok::<(), BoxError>(())
        }
    })
}

/// Sends one message; anything but `SendOk` is an error.
pub(crate) async fn send_ok(producer: &Producer, message: Message) -> Result<(), BoxError> {
    let result = producer
        .send(to_broker(message))
        .await
        .map_err(|e| e.error)?;
    if result.status != SendStatus::SendOk {
        return Err(format!("broker answered {:?}", result.status).into());
    }
    Ok(())
}

/// A batch publisher that counts the messages its inner publisher stored.
#[derive(Clone)]
pub(crate) struct Counted<P> {
    pub(crate) inner: P,
    pub(crate) stored: Arc<AtomicUsize>,
}

impl<P: PublishBatch> PublishBatch for Counted<P> {
    type Response = ();

    fn publish_batch(&mut self, messages: Vec<Message>) -> BatchFuture<()> {
        let call = self.inner.publish_batch(messages);
        let stored = self.stored.clone();
        Box::pin(async move {
            let outcomes: Vec<Result<(), BoxError>> =
                call.await.into_iter().map(|o| o.map(drop)).collect();
            stored.fetch_add(
                outcomes.iter().filter(|o| o.is_ok()).count(),
                Ordering::Relaxed,
            );
            mark_published();
            outcomes
        })
    }
}

/// The base of [`LAST_PUBLISHED`].
static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
/// When the last publish returned, in ns since [`EPOCH`]: the end of a batch's publishing.
static LAST_PUBLISHED: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// Records that a publish returned (called by the benchmark's publishers).
pub(crate) fn mark_published() {
    let ns = epoch().elapsed().as_nanos() as u64;
    LAST_PUBLISHED.fetch_max(ns, Ordering::Relaxed);
}

/// Nanoseconds since [`EPOCH`]: the time base the latency breakdown shares with the relay's spans.
pub(crate) fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// The last finished `outbox.claim` span, (start, end) in ns since [`EPOCH`].
static LAST_CLAIM: Mutex<(u64, u64)> = Mutex::new((0, 0));
/// The claim of the batch being published: [`LAST_CLAIM`] when its `outbox.batch` span began.
static BATCH_CLAIM: Mutex<(u64, u64)> = Mutex::new((0, 0));

/// When the claim of the batch now being published began and returned, in ns since [`EPOCH`]
/// (read by the latency scenario's publisher). A batch claimed ahead was the last claim to end
/// before its turn came, so "the last claim" is its own either way.
pub(crate) fn batch_claim() -> (u64, u64) {
    *BATCH_CLAIM.lock().unwrap()
}

fn last_published() -> Instant {
    epoch() + Duration::from_nanos(LAST_PUBLISHED.load(Ordering::Relaxed))
}

/// Runs the relay drains of one repeat.
pub(crate) async fn run(
    pool: &PgPool,
    params: &Params,
    backlog: usize,
    big: bool,
    report: &mut Report,
) -> anyhow::Result<()> {
    let size = size_label(backlog);
    fill_backlog(pool, backlog).await?;
    let (raw, raw_batch_us) = raw_drain(pool, BATCH).await?;
    report.add(
        SCENARIO,
        &format!("raw DELETE…RETURNING loop, {size} backlog"),
        "msg/s",
        raw,
    );
    report.add(
        SCENARIO,
        &format!("raw DELETE…RETURNING, time per batch of {BATCH}, {size} backlog"),
        "µs",
        raw_batch_us,
    );
    // (sink, relays, max_in_flight); 64 is the relay's default.
    let variants: &[(Sink, usize, usize)] = if big {
        &[
            (Sink::Broker(FlushMode::Sync), 1, 64),
            (Sink::BrokerBatch(FlushMode::Sync), 1, 64),
        ]
    } else {
        &[
            (Sink::Memory, 1, 64),
            (Sink::Broker(FlushMode::Sync), 1, 64),
            (Sink::BrokerBatch(FlushMode::Sync), 1, 64),
            (Sink::BrokerBatch(FlushMode::ASYNC_DEFAULT), 1, 64),
            (Sink::Broker(FlushMode::ASYNC_DEFAULT), 1, 64),
            (Sink::Broker(FlushMode::Sync), 2, 64),
            (Sink::Broker(FlushMode::ASYNC_DEFAULT), 2, 64),
            // Not a default: shows how much of a SYNC_FLUSH batch is waiting for fsyncs in waves.
            (Sink::Broker(FlushMode::Sync), 1, BATCH),
        ]
    };
    for &(sink, relays, in_flight) in variants {
        let phases_before = phases();
        let rate = relay_drain(pool, sink, relays, in_flight, backlog, params).await?;
        let extra = if in_flight == 64 {
            String::new()
        } else {
            format!(", max_in_flight {in_flight}")
        };
        let label = format!(
            "relay → {}, {relays} relay{}{extra}, {size} backlog",
            sink.label(),
            if relays > 1 { "s" } else { "" },
        );
        report.add(SCENARIO, &label, "msg/s", rate);
        report.add(SCENARIO, &format!("{label} / raw"), "x", rate / raw);
        if relays == 1 {
            let p = phases().since(&phases_before);
            if p.batches > 0 {
                let n = p.batches as f64;
                let prefix = format!("batch phases, {}{extra}, {size}", sink.label());
                report.add(
                    SCENARIO,
                    &format!("{prefix}: begin+claim"),
                    "µs/batch",
                    p.claim.as_secs_f64() * 1e6 / n.max(1.0),
                );
                report.add(
                    SCENARIO,
                    &format!("{prefix}: publish"),
                    "µs/batch",
                    p.publish.as_secs_f64() * 1e6 / n,
                );
                report.add(
                    SCENARIO,
                    &format!("{prefix}: record+commit"),
                    "µs/batch",
                    p.finish.as_secs_f64() * 1e6 / n,
                );
            }
            // The claim itself (BEGIN and the claim statement, the relay's `outbox.claim` span),
            // whether it ran between batches or ahead while one was published: over the whole
            // run (with the idle relay's polls while the backlog was being inserted, each of
            // which walks the rows of that open transaction), and from the insert's commit on.
            let drained = phases().since(&DRAIN_START.lock().unwrap().take().unwrap_or_default());
            for (what, p) in [("claim per batch", &p), ("claim while draining", &drained)] {
                if p.claims == 0 {
                    continue;
                }
                let claim_us = p.claim_query.as_secs_f64() * 1e6 / p.claims as f64;
                let metric = |size: &str| format!("{what}, {}{extra}, {size}", sink.label());
                report.add(SCENARIO, &metric(&size), "µs/claim", claim_us);
                // Against the 10k backlog of the same repeat, which ran just before (issue 15:
                // within 1.2x).
                if big
                    && let Some(small) = report
                        .row(&metric(&size_label(params.backlog)))
                        .and_then(|row| row.values.last().copied())
                {
                    report.add(
                        SCENARIO,
                        &format!("{} / {}", metric(&size), size_label(params.backlog)),
                        "x",
                        claim_us / small,
                    );
                }
            }
            report.add(
                SCENARIO,
                &format!("claims per batch, {}{extra}, {size}", sink.label()),
                "claims",
                p.claims as f64 / p.batches.max(1) as f64,
            );
        }
    }
    Ok(())
}

/// Starts `relays` relays on an empty outbox, lets them settle (partitions shared, all idle),
/// writes the backlog in one transaction (the insert trigger's NOTIFY wakes them) and times them
/// until every message is published and every relay is idle again.
async fn relay_drain(
    pool: &PgPool,
    sink: Sink,
    relays: usize,
    in_flight: usize,
    backlog: usize,
    params: &Params,
) -> anyhow::Result<f64> {
    sqlx::query("TRUNCATE outbox.messages")
        .execute(pool)
        .await?;
    let stored = Arc::new(AtomicUsize::new(0));
    let broker = match sink {
        Sink::Memory => None,
        Sink::Broker(flush) | Sink::BrokerBatch(flush) => Some(start_broker(flush).await?),
    };
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    let mut states = Vec::new();
    for n in 0..relays {
        let name = format!("bench-relay-{n}");
        let (task, state) = match &broker {
            None => {
                let counter = stored.clone();
                let publisher = service_fn(move |_message: Message| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    mark_published();
                    async { Ok::<_, BoxError>(()) }
                });
                spawn_relay(pool, publisher, &name, in_flight, &shutdown)?
            }
            Some((broker, _)) if matches!(sink, Sink::BrokerBatch(_)) => {
                let publisher =
                    BrokerLitePublisher::connect(broker.addr(), ProducerConfig::default()).await?;
                let publisher = Counted {
                    inner: publisher,
                    stored: stored.clone(),
                };
                spawn_batch_relay(pool, publisher, &name, in_flight, &shutdown)?
            }
            Some((broker, _)) => {
                let producer = Producer::connect(broker.addr(), ProducerConfig::default()).await?;
                spawn_relay(
                    pool,
                    broker_publisher(producer, stored.clone()),
                    &name,
                    in_flight,
                    &shutdown,
                )?
            }
        };
        tasks.push(task);
        states.push(state);
    }
    // Two rebalance rounds so that two relays split the 64 key partitions before the backlog lands.
    tokio::time::sleep(Duration::from_millis(if relays > 1 { 700 } else { 100 })).await;
    for state in &mut states {
        state.wait_for(|s| *s == RelayState::Idle).await?;
    }
    sqlx::query(
        "INSERT INTO outbox.messages (id, topic, key, headers, payload)
         SELECT gen_random_uuid(), 'bench', 'key-' || (g % 1024), '{}', convert_to(repeat('x', $2), 'UTF8')
         FROM generate_series(1, $1) AS g",
    )
    .bind(backlog as i64)
    .bind(crate::enqueue::PAYLOAD as i32)
    .execute(pool)
    .await?;
    *DRAIN_START.lock().unwrap() = Some(phases());
    let started = Instant::now();
    let deadline = started + params.drain_timeout;
    while stored.load(Ordering::Relaxed) < backlog {
        anyhow::ensure!(
            Instant::now() < deadline,
            "relay drain to {} stopped at {} of {backlog} after {:?}",
            sink.label(),
            stored.load(Ordering::Relaxed),
            params.drain_timeout
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for state in &mut states {
        tokio::time::timeout(
            Duration::from_secs(10),
            state.wait_for(|s| *s == RelayState::Idle),
        )
        .await
        .context("relay did not go idle")??;
    }
    let took = started.elapsed();
    shutdown.cancel();
    for task in tasks {
        task.await??;
    }
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.messages")
        .fetch_one(pool)
        .await?;
    anyhow::ensure!(left == 0, "{left} messages left in the outbox");
    if let Some((broker, _dir)) = broker {
        broker.shutdown().await?;
    }
    Ok(backlog as f64 / took.as_secs_f64())
}

pub(crate) type RelayTask = tokio::task::JoinHandle<courier::outbox::Result<()>>;

pub(crate) fn spawn_relay<P: Publisher + Sync>(
    pool: &PgPool,
    publisher: P,
    name: &str,
    in_flight: usize,
    shutdown: &CancellationToken,
) -> anyhow::Result<(RelayTask, tokio::sync::watch::Receiver<RelayState>)>
where
    P::Future: Send,
{
    let relay = Relay::builder(pool.clone(), publisher)
        .name(name)
        .batch_size(BATCH)
        .max_in_flight(in_flight)
        .rebalance_interval(Duration::from_millis(200))
        .build()?;
    let state = relay.state();
    Ok((tokio::spawn(relay.run(shutdown.clone())), state))
}

/// As [`spawn_relay`], through `Relay::batch_builder`: one publisher call per claimed batch.
pub(crate) fn spawn_batch_relay<P: PublishBatch + Clone + Send + Sync + 'static>(
    pool: &PgPool,
    publisher: P,
    name: &str,
    in_flight: usize,
    shutdown: &CancellationToken,
) -> anyhow::Result<(RelayTask, tokio::sync::watch::Receiver<RelayState>)> {
    let relay = Relay::batch_builder(pool.clone(), publisher)
        .name(name)
        .batch_size(BATCH)
        .max_in_flight(in_flight)
        .rebalance_interval(Duration::from_millis(200))
        .build()?;
    let state = relay.state();
    Ok((tokio::spawn(relay.run(shutdown.clone())), state))
}

/// Time a relay spent per phase of its batches, summed.
#[derive(Debug, Default, Clone)]
pub(crate) struct Phases {
    pub(crate) batches: u64,
    /// From the end of one batch to the start of the next one's publishing (begin, claim).
    pub(crate) claim: Duration,
    /// Publishing the batch.
    pub(crate) publish: Duration,
    /// From the last publish to the end of the batch (record outcomes; the commit too, except on
    /// Postgres for a batch published whole, which commits behind the next publish).
    pub(crate) finish: Duration,
    /// Claims (`outbox.claim` spans: BEGIN and the claim statement), and their time summed.
    pub(crate) claims: u64,
    pub(crate) claim_query: Duration,
    last_close: Option<Instant>,
}

impl Phases {
    fn since(&self, before: &Phases) -> Phases {
        Phases {
            batches: self.batches - before.batches,
            claim: self.claim - before.claim,
            publish: self.publish - before.publish,
            finish: self.finish - before.finish,
            claims: self.claims - before.claims,
            claim_query: self.claim_query - before.claim_query,
            last_close: None,
        }
    }
}

static PHASES: Mutex<Phases> = Mutex::new(Phases {
    batches: 0,
    claim: Duration::ZERO,
    publish: Duration::ZERO,
    finish: Duration::ZERO,
    claims: 0,
    claim_query: Duration::ZERO,
    last_close: None,
});

/// [`phases`] when the last drain's backlog insert had committed.
static DRAIN_START: Mutex<Option<Phases>> = Mutex::new(None);

fn phases() -> Phases {
    let mut p = PHASES.lock().unwrap();
    // A gap across scenarios is not a claim.
    p.last_close = None;
    p.clone()
}

/// Times the relay's `outbox.batch` span: it is created once the claim returned, first entered
/// when publishing starts, and closed when the batch function returns (on Postgres a batch
/// published whole may still be committing then, behind the next publish). Also
/// notes when each `outbox.claim` span (the claim's BEGIN and query) began and ended.
pub(crate) struct BatchTimer;

struct Times {
    first_enter: Option<Instant>,
}

/// When an `outbox.claim` span began, in ns since [`EPOCH`].
struct ClaimStart(u64);

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for BatchTimer {
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() == "outbox.claim" {
            if let Some(span) = ctx.span(id) {
                span.extensions_mut().insert(ClaimStart(now_ns()));
            }
            return;
        }
        if attrs.metadata().name() != "outbox.batch" {
            return;
        }
        *BATCH_CLAIM.lock().unwrap() = *LAST_CLAIM.lock().unwrap();
        let now = Instant::now();
        {
            let mut p = PHASES.lock().unwrap();
            if let Some(last) = p.last_close {
                p.claim += now.saturating_duration_since(last);
            }
        }
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Times { first_enter: None });
        }
    }

    fn on_enter(&self, id: &span::Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(times) = span.extensions_mut().get_mut::<Times>()
        {
            times.first_enter.get_or_insert_with(Instant::now);
        }
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        let now = Instant::now();
        let Some(span) = ctx.span(&id) else { return };
        let extensions = span.extensions();
        if let Some(ClaimStart(start)) = extensions.get::<ClaimStart>() {
            let end = now_ns();
            *LAST_CLAIM.lock().unwrap() = (*start, end);
            let mut p = PHASES.lock().unwrap();
            p.claims += 1;
            p.claim_query += Duration::from_nanos(end.saturating_sub(*start));
            return;
        }
        let Some(Times {
            first_enter: Some(first),
        }) = extensions.get::<Times>()
        else {
            return;
        };
        // The instrumented future is dropped (and the span closed) when the batch function
        // returns (after the commit, or once it was handed to a background task on Postgres); the
        // last publish to return marks the end of publishing.
        let published = last_published().clamp(*first, now);
        let mut p = PHASES.lock().unwrap();
        p.batches += 1;
        p.publish += published.saturating_duration_since(*first);
        p.finish += now.saturating_duration_since(published);
        p.last_close = Some(now);
    }
}
