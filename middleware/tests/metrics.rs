//! Consumer metrics (safeguard L3): acks, redeliveries, dead letters and handler duration per group.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use courier_middleware::{ConsumeMetricsLayer, Consumer, Delivery, MemorySource, Reject};
use courier_outbox::Message;
use metrics::{
    Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use tokio_util::sync::CancellationToken;
use tower::{BoxError, ServiceBuilder};

/// Counts per metric name and labels; histograms count their samples.
#[derive(Default, Clone)]
struct Captured(Arc<Mutex<BTreeMap<String, Arc<AtomicU64>>>>);

struct Cell(Arc<AtomicU64>);

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
    }

    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::SeqCst);
    }
}

impl HistogramFn for Cell {
    fn record(&self, _: f64) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Captured {
    fn cell(&self, key: &Key) -> Arc<AtomicU64> {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        self.0.lock().unwrap().entry(name).or_default().clone()
    }

    fn get(&self, name: &str) -> u64 {
        self.0
            .lock()
            .unwrap()
            .get(name)
            .map_or(0, |c| c.load(Ordering::SeqCst))
    }
}

impl Recorder for Captured {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(Arc::new(Cell(self.cell(key))))
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(Arc::new(Cell(self.cell(key))))
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn acks_redeliveries_dead_letters_and_durations_are_counted_per_group() {
    let captured = Captured::default();
    let _recorder = metrics::set_default_local_recorder(&captured);

    let source = MemorySource::new("billing");
    source.push(Message::new("orders", "ok"));
    source.push(Message::new("orders", "flaky"));
    source.push(Message::new("orders", "bad"));
    let handler = ServiceBuilder::new()
        .layer(ConsumeMetricsLayer::new())
        .service_fn(|delivery: Delivery| async move {
            match (delivery.message.payload.as_ref(), delivery.attempt) {
                (b"flaky", 1) => Err::<(), BoxError>("glitch".into()),
                (b"bad", _) => Err(Reject::new("malformed").into()),
                _ => Ok(()),
            }
        });
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(
        Consumer::builder(source.clone(), handler)
            .group("billing")
            .build()
            .run(shutdown.clone()),
    );
    source
        .wait_until(|s| s.acked().len() == 2 && s.dead_letters().len() == 1)
        .await;
    shutdown.cancel();
    running.await.unwrap();

    assert_eq!(
        captured.get("courier_consumer_acks_total{group=billing}"),
        2
    );
    assert_eq!(
        captured.get("courier_consumer_redeliveries_total{group=billing}"),
        1
    );
    assert_eq!(
        captured.get("courier_consumer_dead_letters_total{group=billing}"),
        1
    );
    assert_eq!(
        captured.get("courier_consume_total{group=billing,outcome=ack}"),
        2
    );
    assert_eq!(
        captured.get("courier_consume_total{group=billing,outcome=redeliver}"),
        1
    );
    assert_eq!(
        captured.get("courier_consume_total{group=billing,outcome=dead_letter}"),
        1
    );
    assert_eq!(
        captured.get("courier_consume_duration_seconds{group=billing}"),
        4
    );
}
