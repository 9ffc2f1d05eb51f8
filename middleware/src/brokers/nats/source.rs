//! The NATS JetStream delivery source: a durable pull consumer the runtime pulls from.

use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use tokio_util::sync::{CancellationToken, DropGuard};
use tower::BoxError;
use uuid::Uuid;

use super::envelope::{self, NATS_MSG_ID_HEADER};
use super::topology::{ConsumerSpec, StreamSpec};
use crate::{ConsumeModel, Delivery, DeliverySource, NackOutcome, Pulled};

/// The header of a dead letter naming the consumer group that gave up on it.
pub const NATS_DEAD_LETTER_GROUP_HEADER: &str = "Courier-Dead-Letter-Group";
/// The header of a dead letter saying why (the handler's error, or the delivery limit).
pub const NATS_DEAD_LETTER_REASON_HEADER: &str = "Courier-Dead-Letter-Reason";
/// The header of a dead letter with the subject it was consumed from.
pub const NATS_DEAD_LETTER_SUBJECT_HEADER: &str = "Courier-Dead-Letter-Subject";
/// The header of a dead letter with its sequence in the source stream.
pub const NATS_DEAD_LETTER_SEQUENCE_HEADER: &str = "Courier-Dead-Letter-Sequence";
/// The header of a dead letter with the number of deliveries it had.
pub const NATS_DEAD_LETTER_DELIVERIES_HEADER: &str = "Courier-Deliveries";
/// The header of a dead letter with the envelope's message id (its `Nats-Msg-Id` is
/// `<group>/<id>`, so that two groups dead-lettering one message keep a copy each).
pub const NATS_MESSAGE_ID_HEADER: &str = "Courier-Message-Id";

/// The redelivery delays of a [`NatsSource`] unless configured, by delivery: RocketMQ's levels from
/// 1 s (1 s, 5 s, 10 s, 30 s, 1 min, 2 min … 10 min, 20 min, 30 min, 1 h, 2 h).
pub const DEFAULT_NATS_DELAYS: [Duration; 18] = {
    const fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }
    [
        s(1),
        s(5),
        s(10),
        s(30),
        s(60),
        s(120),
        s(180),
        s(240),
        s(300),
        s(360),
        s(420),
        s(480),
        s(540),
        s(600),
        s(1200),
        s(1800),
        s(3600),
        s(7200),
    ]
};

/// What a [`NatsSource`] consumes and how it settles; every setting but the stream and group has a
/// default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSourceConfig {
    stream: String,
    group: String,
    filter_subject: String,
    ack_wait: Duration,
    max_deliveries: u32,
    delays: Vec<Duration>,
    max_ack_pending: i64,
    dead_letters: DeadLetters,
}

/// Where a [`NatsSource`] republishes the messages it gives up on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DeadLetters {
    subject: String,
    /// The stream to provision for them; `None` when the application provides it.
    stream: Option<StreamSpec>,
}

impl NatsSourceConfig {
    /// Consumes stream `stream` as durable consumer `group` (one durable per group: its members
    /// share the messages).
    ///
    /// Defaults: the whole stream; `ack_wait` 30 s (kept alive by progress acks while a handler
    /// runs); 16 deliveries; [`DEFAULT_NATS_DELAYS`]; at most 1000 unacknowledged messages; dead
    /// letters to `courier.dead-letter.<stream>.<group>` in the stream `<stream>_DEAD_LETTERS`
    /// (created if missing).
    pub fn new(stream: impl Into<String>, group: impl Into<String>) -> Self {
        let (stream, group) = (stream.into(), group.into());
        let dead_letter_stream = StreamSpec::new(
            format!("{stream}_DEAD_LETTERS"),
            [format!("courier.dead-letter.{stream}.>")],
        );
        Self {
            dead_letters: DeadLetters {
                subject: format!("courier.dead-letter.{stream}.{group}"),
                stream: Some(dead_letter_stream),
            },
            stream,
            group,
            filter_subject: String::new(),
            ack_wait: Duration::from_secs(30),
            max_deliveries: crate::DEFAULT_MAX_DELIVERIES,
            delays: DEFAULT_NATS_DELAYS.to_vec(),
            max_ack_pending: 1000,
        }
    }

    /// Consumes only the subjects matching `filter` (`orders.created`, `orders.*.eu`).
    #[must_use]
    pub fn filter_subject(mut self, filter: impl Into<String>) -> Self {
        self.filter_subject = filter.into();
        self
    }

    /// A delivery neither acked nor nacked within `ack_wait` comes again. While the runtime
    /// holds a delivery the source sends a progress ack every `ack_wait / 2`, so a long handler
    /// keeps its delivery (the runtime's consume timeout bounds it); a consumer that died leaves
    /// its deliveries to others after `ack_wait`. Default 30 s.
    #[must_use]
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait.max(Duration::from_millis(100));
        self
    }

    /// A nack of delivery number `n` dead-letters the message instead. Default
    /// [`DEFAULT_MAX_DELIVERIES`](crate::DEFAULT_MAX_DELIVERIES), as the runtime's; keep them
    /// equal.
    #[must_use]
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.max_deliveries = n.max(1);
        self
    }

    /// The delay before redelivery number `n` of a nack without a delay of its own is
    /// `delays[n - 1]` (the last for later ones). Default [`DEFAULT_NATS_DELAYS`].
    #[must_use]
    pub fn delays(mut self, delays: impl IntoIterator<Item = Duration>) -> Self {
        let delays: Vec<Duration> = delays.into_iter().collect();
        if !delays.is_empty() {
            self.delays = delays;
        }
        self
    }

    /// At most `n` messages delivered and not yet acknowledged, across the group. Default 1000.
    /// `1` gives strict stream order across every member of the group (see the
    /// [module documentation](crate::nats#ordering)).
    #[must_use]
    pub fn max_ack_pending(mut self, n: i64) -> Self {
        self.max_ack_pending = n.max(1);
        self
    }

    /// Republishes dead letters to `subject`, which a stream the application provisions must
    /// capture (a publish nobody stores fails, and the message is then redelivered, not lost).
    #[must_use]
    pub fn dead_letter_subject(mut self, subject: impl Into<String>) -> Self {
        self.dead_letters = DeadLetters {
            subject: subject.into(),
            stream: None,
        };
        self
    }

    /// The stream consumed.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The consumer group (the durable consumer's name).
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The subject dead letters are republished to.
    pub fn dead_letter_subject_name(&self) -> &str {
        &self.dead_letters.subject
    }

    /// The name of the dead-letter stream the source provisions, unless the application
    /// provides its own ([`dead_letter_subject`](Self::dead_letter_subject)).
    pub fn dead_letter_stream(&self) -> Option<&str> {
        self.dead_letters.stream.as_ref().map(StreamSpec::name)
    }

    fn consumer_spec(&self) -> ConsumerSpec {
        ConsumerSpec {
            stream: self.stream.clone(),
            durable: self.group.clone(),
            filter_subject: self.filter_subject.clone(),
            ack_wait: self.ack_wait,
            max_ack_pending: self.max_ack_pending,
        }
    }

    /// The delay before the redelivery following delivery number `delivered`.
    fn delay_after(&self, delivered: u32) -> Duration {
        let index = (delivered.max(1) as usize - 1).min(self.delays.len() - 1);
        self.delays[index]
    }
}

/// A [`DeliverySource`] over a durable JetStream pull consumer: one member of a consumer group.
///
/// | source | JetStream |
/// |---|---|
/// | `pull(max, wait)` | a no-wait fetch of `max`; if empty, a pull of one waiting `wait`, then a no-wait fetch of the rest |
/// | `ack` | `+ACK` |
/// | `nack(Some(delay))` | `-NAK` with `delay` |
/// | `nack(None)` | `-NAK` with the delay for this delivery ([`NatsSourceConfig::delays`]) |
/// | `nack` of the last delivery ([`NatsSourceConfig::max_deliveries`]) | as `dead_letter` |
/// | `dead_letter(reason)` | republish to the dead-letter subject, wait for its PubAck, then `+TERM` |
/// | while held | `+WPI` (progress) every `ack_wait / 2` |
///
/// JetStream has no dead-letter queue of its own (after `max_deliver` it only stops delivering and
/// emits an advisory): the source republishes the message with its headers plus
/// [`NATS_DEAD_LETTER_REASON_HEADER`], [`NATS_DEAD_LETTER_GROUP_HEADER`],
/// [`NATS_DEAD_LETTER_SUBJECT_HEADER`], [`NATS_DEAD_LETTER_SEQUENCE_HEADER`],
/// [`NATS_DEAD_LETTER_DELIVERIES_HEADER`] and [`NATS_MESSAGE_ID_HEADER`], and terminates the
/// original only once the dead-letter stream acknowledged the copy. If that fails, the message is
/// redelivered and dead-lettered again: a dead letter may be stored twice, never lost (its
/// `Nats-Msg-Id` deduplicates repeats within the dead-letter stream's window). The consumer is
/// created with unlimited `max_deliver` for that reason.
///
/// Each [`Delivery`] carries the envelope (see the [envelope table](crate::nats#the-envelope)), the
/// attempt (JetStream's delivery count), the group and the subject as its queue (the ordering key
/// of unkeyed messages).
///
/// `pull` is cancel safe in the runtime's sense: a pull dropped while it waits may leave one
/// message delivered to nobody, which JetStream redelivers after `ack_wait`.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> Result<(), tower::BoxError> {
/// use courier_middleware::nats::{NatsSource, NatsSourceConfig};
/// use courier_middleware::{Consumer, Delivery};
/// use tokio_util::sync::CancellationToken;
///
/// let config = NatsSourceConfig::new("ORDERS", "billing").filter_subject("orders.created");
/// let source = NatsSource::connect("nats://127.0.0.1:4222", config).await?;
/// let handler = tower::service_fn(|delivery: Delivery| async move {
///     println!("{} (attempt {})", delivery.message.id, delivery.attempt);
///     Ok::<_, tower::BoxError>(())
/// });
/// Consumer::builder(source, handler).build().run(CancellationToken::new()).await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct NatsSource {
    jetstream: jetstream::Context,
    consumer: PullConsumer,
    config: NatsSourceConfig,
}

/// The receipt of a [`NatsSource`] delivery: the JetStream message (its reply subject is the ack
/// handle). Dropping it stops its progress acks, so JetStream redelivers it after `ack_wait`.
#[derive(Debug)]
pub struct NatsReceipt {
    message: jetstream::Message,
    delivered: u32,
    stream_sequence: u64,
    _progress: DropGuard,
}

impl NatsReceipt {
    /// The message's sequence in the stream.
    pub fn stream_sequence(&self) -> u64 {
        self.stream_sequence
    }

    /// How many times JetStream delivered the message, this delivery included.
    pub fn delivered(&self) -> u32 {
        self.delivered
    }
}

impl NatsSource {
    /// Connects to `url` and provisions the consumer (and the dead-letter stream) as
    /// [`new`](Self::new) does.
    ///
    /// # Errors
    ///
    /// A connection error, or one of [`new`](Self::new)'s.
    pub async fn connect(url: &str, config: NatsSourceConfig) -> Result<Self, BoxError> {
        let client = async_nats::connect(url).await?;
        Ok(Self::new(jetstream::new(client), config).await?)
    }

    /// A source over `jetstream`: creates the durable consumer when missing (checks it when
    /// present) and the default dead-letter stream.
    ///
    /// # Errors
    ///
    /// [`TopologyError`](super::TopologyError): the stream does not exist, an existing consumer
    /// or dead-letter stream contradicts the configuration, or the server could not be asked.
    pub async fn new(
        jetstream: jetstream::Context,
        config: NatsSourceConfig,
    ) -> Result<Self, super::TopologyError> {
        if let Some(stream) = &config.dead_letters.stream {
            stream.ensure(&jetstream).await?;
        }
        let consumer = config.consumer_spec().ensure(&jetstream).await?;
        Ok(Self {
            jetstream,
            consumer,
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &NatsSourceConfig {
        &self.config
    }

    /// The pull consumer.
    pub fn get_ref(&self) -> &PullConsumer {
        &self.consumer
    }

    /// Whatever is available now, up to `max`, without waiting.
    async fn fetch_now(&self, max: usize) -> Result<Vec<jetstream::Message>, BoxError> {
        let batch = self.consumer.fetch().max_messages(max).messages().await?;
        collect(batch).await
    }

    /// Up to one message, waiting up to `wait` for it.
    async fn wait_for_one(&self, wait: Duration) -> Result<Vec<jetstream::Message>, BoxError> {
        let wait = wait.max(Duration::from_millis(10));
        let batch = self
            .consumer
            .batch()
            .max_messages(1)
            .expires(wait)
            .messages()
            .await?;
        // The server ends the request at `wait`; the margin covers a connection that dropped.
        tokio::time::timeout(wait + Duration::from_secs(5), collect(batch))
            .await
            .unwrap_or_else(|_| Ok(Vec::new()))
    }

    fn pulled(&self, message: jetstream::Message) -> Result<Pulled<NatsReceipt>, BoxError> {
        let info = message.info()?;
        let delivered = u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX);
        let stream_sequence = info.stream_sequence;
        let fallback_id = Uuid::from_u64_pair(fnv1a(info.stream.as_bytes()), stream_sequence);
        let envelope = envelope::from_nats(&message.message, fallback_id);
        let delivery = Delivery::new(envelope, self.config.group.clone())
            .with_attempt(delivered)
            .with_queue(message.message.subject.to_string());
        let progress = CancellationToken::new();
        spawn_progress(message.clone(), self.config.ack_wait / 2, progress.clone());
        Ok(Pulled::new(
            delivery,
            NatsReceipt {
                message,
                delivered,
                stream_sequence,
                _progress: progress.drop_guard(),
            },
        ))
    }

    /// The dead-letter copy of `receipt`'s message, with why and from where.
    fn dead_letter_copy(&self, receipt: &NatsReceipt, reason: &str) -> PublishMessage {
        let original = &receipt.message.message;
        let mut headers = original.headers.clone().unwrap_or_default();
        let id = headers
            .get(NATS_MSG_ID_HEADER)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_else(|| receipt.stream_sequence.to_string());
        let one_line: String = reason
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        headers.insert(
            NATS_MSG_ID_HEADER,
            format!("{}/{id}", self.config.group).as_str(),
        );
        headers.insert(NATS_MESSAGE_ID_HEADER, id.as_str());
        headers.insert(NATS_DEAD_LETTER_GROUP_HEADER, self.config.group.as_str());
        headers.insert(NATS_DEAD_LETTER_REASON_HEADER, one_line.as_str());
        headers.insert(NATS_DEAD_LETTER_SUBJECT_HEADER, original.subject.as_str());
        headers.insert(
            NATS_DEAD_LETTER_SEQUENCE_HEADER,
            receipt.stream_sequence.to_string().as_str(),
        );
        headers.insert(
            NATS_DEAD_LETTER_DELIVERIES_HEADER,
            receipt.delivered.to_string().as_str(),
        );
        PublishMessage::build()
            .payload(original.payload.clone())
            .headers(headers)
    }
}

async fn collect(
    mut batch: jetstream::consumer::pull::Batch,
) -> Result<Vec<jetstream::Message>, BoxError> {
    let mut out = Vec::new();
    while let Some(message) = batch.next().await {
        out.push(message?);
    }
    Ok(out)
}

/// Sends a progress ack for `message` every `every` until `stop` is cancelled (the receipt settled
/// or dropped).
fn spawn_progress(message: jetstream::Message, every: Duration, stop: CancellationToken) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {
                    if let Err(error) = message.ack_with(AckKind::Progress).await {
                        tracing::debug!(%error, "a NATS progress ack failed; JetStream may redeliver after ack_wait");
                    }
                }
            }
        }
    });
}

/// FNV-1a: a hash of the stream name that is the same in every process and version.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl DeliverySource for NatsSource {
    type Receipt = NatsReceipt;
    type Error = BoxError;

    fn group(&self) -> Option<&str> {
        Some(&self.config.group)
    }

    async fn pull(&self, max: usize, wait: Duration) -> Result<Vec<Pulled<NatsReceipt>>, BoxError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut messages = self.fetch_now(max).await?;
        if messages.is_empty() {
            messages = self.wait_for_one(wait).await?;
            if !messages.is_empty() && max > 1 {
                messages.extend(self.fetch_now(max - 1).await?);
            }
        }
        messages.into_iter().map(|m| self.pulled(m)).collect()
    }

    async fn ack(&self, receipt: NatsReceipt) -> Result<(), BoxError> {
        receipt.message.ack().await
    }

    async fn nack(
        &self,
        receipt: NatsReceipt,
        delay: Option<Duration>,
    ) -> Result<NackOutcome, BoxError> {
        if receipt.delivered >= self.config.max_deliveries {
            let reason = format!(
                "nacked on delivery {} of at most {}",
                receipt.delivered, self.config.max_deliveries
            );
            self.dead_letter(receipt, reason).await?;
            return Ok(NackOutcome::DeadLettered);
        }
        let delay = delay.unwrap_or_else(|| self.config.delay_after(receipt.delivered));
        receipt.message.ack_with(AckKind::Nak(Some(delay))).await?;
        Ok(NackOutcome::Redelivered)
    }

    async fn dead_letter(&self, receipt: NatsReceipt, reason: String) -> Result<(), BoxError> {
        let copy = self.dead_letter_copy(&receipt, &reason);
        let subject = self.config.dead_letters.subject.clone();
        let ack = self
            .jetstream
            .send_publish(subject.clone(), copy)
            .await
            .map_err(|e| {
                format!(
                    "dead-lettering to {subject:?} failed (the message will be redelivered): {e}"
                )
            })?
            .await
            .map_err(|e| {
                format!(
                    "dead-lettering to {subject:?} failed (the message will be redelivered): {e}"
                )
            })?;
        tracing::warn!(group = %self.config.group, stream_sequence = receipt.stream_sequence,
            dead_letter_stream = %ack.stream, %reason, "NATS message dead-lettered");
        receipt.message.ack_with(AckKind::Term).await
    }

    fn model(&self) -> ConsumeModel {
        ConsumeModel::Clustering
    }

    fn redelivery_horizon(&self) -> Option<Duration> {
        let redeliveries = self.config.max_deliveries.saturating_sub(1);
        // Each redelivery waits its delay, and at worst a lost settlement's ack_wait.
        Some(
            (1..=redeliveries)
                .map(|n| self.config.delay_after(n) + self.config.ack_wait)
                .sum(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_follow_the_delivery_count_and_stay_at_the_last() {
        let config = NatsSourceConfig::new("ORDERS", "billing")
            .delays([Duration::from_secs(1), Duration::from_secs(5)]);
        assert_eq!(config.delay_after(1), Duration::from_secs(1));
        assert_eq!(config.delay_after(2), Duration::from_secs(5));
        assert_eq!(config.delay_after(9), Duration::from_secs(5));
        assert_eq!(
            config.dead_letter_subject_name(),
            "courier.dead-letter.ORDERS.billing"
        );
        assert_eq!(config.dead_letter_stream(), Some("ORDERS_DEAD_LETTERS"));
    }

    #[test]
    fn the_fallback_id_hash_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
