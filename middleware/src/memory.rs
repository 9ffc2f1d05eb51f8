//! An in-process delivery source, for tests and examples.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use courier_core::Message;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::{ConsumeModel, Delivery, DeliverySource, NackOutcome, Pulled, SendStatus};

/// A [`DeliverySource`] in memory, with a broker's consumer-side behaviour: deliveries in push
/// order, receipts, nack with a delay (default 1 s), a maximum number of deliveries after which a
/// nack dead-letters (default 16), and a dead-letter list. Time is tokio time, so tests can pause
/// it.
///
/// It is also a publisher (`tower::Service<Message>` answering [`SendStatus::SendOk`]), so a
/// relay or a [`Producer`](crate::Producer) can feed it in tests.
///
/// Cloning gives another handle on the same queue.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// use courier_middleware::{DeliverySource, MemorySource};
/// use courier_core::Message;
/// use std::time::Duration;
///
/// let source = MemorySource::new("billing");
/// source.push(Message::new("orders", "{}"));
/// let mut pulled = source.pull(10, Duration::from_secs(1)).await.unwrap();
/// assert_eq!(pulled[0].delivery.attempt, 1);
/// source.ack(pulled.remove(0).receipt).await.unwrap();
/// assert_eq!(source.acked().len(), 1);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct MemorySource {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    group: String,
    model: ConsumeModel,
    redelivery_delay: Duration,
    max_deliveries: u32,
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct State {
    waiting: VecDeque<Entry>,
    in_flight: HashMap<u64, Entry>,
    next_receipt: u64,
    acked: Vec<Message>,
    dead_letters: Vec<(Message, String)>,
    pulls: u64,
    largest_pull: usize,
}

#[derive(Debug, Clone)]
struct Entry {
    message: Message,
    deliveries: u32,
    first_delivered_at: Option<DateTime<Utc>>,
    due: Instant,
}

/// A receipt of a [`MemorySource`] delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemoryReceipt(u64);

impl MemorySource {
    /// An empty source for consumer group `group`, in clustering mode.
    pub fn new(group: impl Into<String>) -> Self {
        Self::build(
            group.into(),
            ConsumeModel::Clustering,
            Duration::from_secs(1),
            16,
        )
    }

    fn build(group: String, model: ConsumeModel, delay: Duration, max: u32) -> Self {
        Self {
            shared: Arc::new(Shared {
                group,
                model,
                redelivery_delay: delay,
                max_deliveries: max,
                state: Mutex::default(),
                changed: Notify::new(),
            }),
        }
    }

    fn reconfigure(self, f: impl FnOnce(&mut (String, ConsumeModel, Duration, u32))) -> Self {
        let mut settings = (
            self.shared.group.clone(),
            self.shared.model,
            self.shared.redelivery_delay,
            self.shared.max_deliveries,
        );
        f(&mut settings);
        let (group, model, delay, max) = settings;
        let fresh = Self::build(group, model, delay, max);
        *fresh.state() = std::mem::take(&mut *self.state());
        fresh
    }

    /// Sets the consume model.
    #[must_use]
    pub fn with_model(self, model: ConsumeModel) -> Self {
        self.reconfigure(|s| s.1 = model)
    }

    /// Sets the delay of a nack that gives none.
    #[must_use]
    pub fn with_redelivery_delay(self, delay: Duration) -> Self {
        self.reconfigure(|s| s.2 = delay)
    }

    /// Sets how many deliveries a message gets before a nack dead-letters it.
    #[must_use]
    pub fn with_max_deliveries(self, max: u32) -> Self {
        self.reconfigure(|s| s.3 = max.max(1))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .expect("memory source lock poisoned")
    }

    fn touch(&self) {
        self.shared.changed.notify_waiters();
    }

    /// Queues a message for delivery.
    pub fn push(&self, message: Message) {
        self.state().waiting.push_back(Entry {
            message,
            deliveries: 0,
            first_delivered_at: None,
            due: Instant::now(),
        });
        self.touch();
    }

    /// Messages acknowledged so far, in ack order.
    pub fn acked(&self) -> Vec<Message> {
        self.state().acked.clone()
    }

    /// Dead-lettered messages with their reasons.
    pub fn dead_letters(&self) -> Vec<(Message, String)> {
        self.state().dead_letters.clone()
    }

    /// Messages waiting for (re)delivery.
    pub fn waiting(&self) -> usize {
        self.state().waiting.len()
    }

    /// Deliveries handed out and not settled.
    pub fn in_flight(&self) -> usize {
        self.state().in_flight.len()
    }

    /// Pull calls answered so far.
    pub fn pulls(&self) -> u64 {
        self.state().pulls
    }

    /// The most deliveries a single pull returned.
    pub fn largest_pull(&self) -> usize {
        self.state().largest_pull
    }

    /// Waits until `condition` holds, re-checking after every change. Panics after an hour of (tokio)
    /// time, so a test that waits for something that never happens fails instead of hanging.
    pub async fn wait_until(&self, condition: impl Fn(&Self) -> bool) {
        let wait = async {
            loop {
                let changed = self.shared.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if condition(self) {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(3600), wait)
            .await
            .expect("memory source: the awaited condition never held");
    }

    fn settle(&self, receipt: MemoryReceipt) -> Option<Entry> {
        self.state().in_flight.remove(&receipt.0)
    }
}

impl DeliverySource for MemorySource {
    type Receipt = MemoryReceipt;
    type Error = Infallible;

    fn group(&self) -> Option<&str> {
        Some(&self.shared.group)
    }

    async fn pull(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Pulled<MemoryReceipt>>, Infallible> {
        let deadline = Instant::now() + wait;
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let next_due = {
                let mut state = self.state();
                let now = Instant::now();
                let mut pulled = Vec::new();
                let mut index = 0;
                while index < state.waiting.len() && pulled.len() < max {
                    if state.waiting[index].due > now {
                        index += 1;
                        continue;
                    }
                    let mut entry = state.waiting.remove(index).expect("index is in range");
                    entry.deliveries += 1;
                    let first = *entry.first_delivered_at.get_or_insert_with(Utc::now);
                    let receipt = state.next_receipt;
                    state.next_receipt += 1;
                    let delivery = Delivery::new(entry.message.clone(), self.shared.group.clone())
                        .with_attempt(entry.deliveries)
                        .with_first_delivered_at(first);
                    state.in_flight.insert(receipt, entry);
                    pulled.push(Pulled::new(delivery, MemoryReceipt(receipt)));
                }
                if !pulled.is_empty() || now >= deadline {
                    state.pulls += 1;
                    state.largest_pull = state.largest_pull.max(pulled.len());
                    drop(state);
                    self.touch();
                    return Ok(pulled);
                }
                state.waiting.iter().map(|e| e.due).min()
            };
            let until = next_due.map_or(deadline, |due| due.min(deadline));
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }

    async fn ack(&self, receipt: MemoryReceipt) -> Result<(), Infallible> {
        if let Some(entry) = self.settle(receipt) {
            self.state().acked.push(entry.message);
        }
        self.touch();
        Ok(())
    }

    async fn nack(
        &self,
        receipt: MemoryReceipt,
        delay: Option<Duration>,
    ) -> Result<NackOutcome, Infallible> {
        let Some(mut entry) = self.settle(receipt) else {
            return Ok(NackOutcome::Redelivered);
        };
        let outcome = if entry.deliveries >= self.shared.max_deliveries {
            self.state()
                .dead_letters
                .push((entry.message, "maximum deliveries reached".to_owned()));
            NackOutcome::DeadLettered
        } else {
            entry.due = Instant::now() + delay.unwrap_or(self.shared.redelivery_delay);
            self.state().waiting.push_back(entry);
            NackOutcome::Redelivered
        };
        self.touch();
        Ok(outcome)
    }

    async fn dead_letter(&self, receipt: MemoryReceipt, reason: String) -> Result<(), Infallible> {
        if let Some(entry) = self.settle(receipt) {
            self.state().dead_letters.push((entry.message, reason));
        }
        self.touch();
        Ok(())
    }

    fn model(&self) -> ConsumeModel {
        self.shared.model
    }

    /// The redelivery delay times the redeliveries allowed (nacks without a delay of their own).
    fn redelivery_horizon(&self) -> Option<Duration> {
        Some(self.shared.redelivery_delay * self.shared.max_deliveries.saturating_sub(1))
    }
}

impl tower::Service<Message> for MemorySource {
    type Response = SendStatus;
    type Error = Infallible;
    type Future = std::future::Ready<Result<SendStatus, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, message: Message) -> Self::Future {
        self.push(message);
        std::future::ready(Ok(SendStatus::SendOk))
    }
}
