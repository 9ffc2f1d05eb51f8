//! A process-wide metrics recorder that counts: every counter by name and labels, so that a test
//! can ask how many requests of a kind the embedded broker served. Gauges and histograms are
//! dropped. A test binary that uses it installs no other recorder (there is one per process);
//! tests that count in parallel see each other's counts, so such a binary holds one of them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use metrics::{
    Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};

/// Counters by name and labels, `name{label=value,...}`.
///
/// ```
/// let counters = courier_test_support::counters();
/// metrics::counter!("broker_lite_server_requests_total", "command" => "send").increment(2);
/// assert_eq!(counters.broker_requests("send"), 2);
/// assert_eq!(counters.get("broker_lite_server_requests_total{command=send}"), 2);
/// ```
#[derive(Default, Clone)]
pub struct Counters(Arc<Mutex<BTreeMap<String, Arc<AtomicU64>>>>);

struct Cell(Arc<AtomicU64>);

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
    }

    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::SeqCst);
    }
}

impl Counters {
    /// The counter `name{labels}` (0 if never incremented).
    pub fn get(&self, name: &str) -> u64 {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map_or(0, |c| c.load(Ordering::SeqCst))
    }

    /// Requests of `command` (`send`, `send_batch`, ...) broker-lite's server has answered:
    /// `broker_lite_server_requests_total{command=<command>}`.
    pub fn broker_requests(&self, command: &str) -> u64 {
        self.get(&format!(
            "broker_lite_server_requests_total{{command={command}}}"
        ))
    }
}

/// Every counter and its value, one a line, for an assertion's message.
impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (name, value) in self.0.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            writeln!(f, "{name} {}", value.load(Ordering::SeqCst))?;
        }
        Ok(())
    }
}

impl Recorder for Counters {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        let cell = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name)
            .or_default()
            .clone();
        Counter::from_arc(Arc::new(Cell(cell)))
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// The process-wide counting recorder, installed on first use (the broker's server tasks
/// record from any thread).
///
/// # Panics
///
/// When another recorder is installed in this process already.
pub fn counters() -> &'static Counters {
    static COUNTERS: OnceLock<Counters> = OnceLock::new();
    COUNTERS.get_or_init(|| {
        let counters = Counters::default();
        metrics::set_global_recorder(counters.clone())
            .expect("the counting recorder is the only recorder of this test binary");
        counters
    })
}
