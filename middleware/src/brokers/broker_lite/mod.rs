//! broker-lite, the bundled broker (feature `broker-lite`): [`BrokerLitePublisher`] on the
//! producer side, [`BrokerLiteSource`] on the consumer side.
//!
//! The envelope maps one to one onto a broker-lite message: the message id (so a consumer
//! deduplicates a re-published message), topic, key (the broker keeps one key in one queue, in
//! order), tag (broker-side filtering), headers as properties and the payload as the body. The
//! creation time travels in the property [`BROKER_LITE_CREATED_AT`], which the source turns back into
//! `Message::created_at` and removes from the headers.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tower::BoxError> {
//! use courier_middleware::{BrokerLitePublisher, BrokerLiteSource, Consumer, Delivery};
//! use broker_lite_client::{ConsumerConfig, ProducerConfig};
//!
//! // Producer side: what the outbox relay publishes through. Anything but SEND_OK is an error.
//! let publisher = BrokerLitePublisher::connect("127.0.0.1:9876", ProducerConfig::default()).await?;
//!
//! // Consumer side: a handler stack driven from a consumer group.
//! let source = BrokerLiteSource::connect("127.0.0.1:9876", ConsumerConfig::new("billing", "orders")).await?;
//! let handler = tower::service_fn(|delivery: Delivery| async move {
//!     println!("{} (attempt {})", delivery.message.id, delivery.attempt);
//!     Ok::<_, tower::BoxError>(())
//! });
//! let consumer = Consumer::builder(source, handler).group("billing").build();
//! # let _ = (publisher, consumer);
//! # Ok(()) }
//! ```

mod publisher;
mod source;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use courier_core::Message;

pub use publisher::BrokerLitePublisher;
pub use source::{BrokerLiteReceipt, BrokerLiteSource};

/// The broker-lite property that carries `Message::created_at` (RFC 3339), removed from the
/// headers again on the consumer side.
pub const BROKER_LITE_CREATED_AT: &str = "courier-created-at";

/// The envelope as a broker-lite message.
fn to_broker(message: Message) -> broker_lite_client::protocol::Message {
    let Message {
        id,
        topic,
        key,
        tag,
        mut headers,
        payload,
        created_at,
        ..
    } = message;
    headers.insert(BROKER_LITE_CREATED_AT.to_owned(), created_at.to_rfc3339());
    let mut out = broker_lite_client::protocol::Message::new(topic, payload).with_message_id(id);
    out.key = key;
    out.tag = tag;
    out.properties = headers;
    out
}

/// A delivered broker-lite message as the envelope.
fn from_broker(view: broker_lite_client::protocol::MessageView) -> Message {
    let mut headers: BTreeMap<String, String> = view.properties;
    let created_at = headers
        .remove(BROKER_LITE_CREATED_AT)
        .and_then(|at| DateTime::parse_from_rfc3339(&at).ok())
        .map(|at| at.with_timezone(&Utc))
        .or_else(|| from_ms(view.born_timestamp_ms))
        .unwrap_or_else(Utc::now);
    Message {
        id: view.message_id,
        topic: view.topic,
        key: view.key,
        tag: view.tag,
        headers,
        payload: view.body,
        created_at,
        available_at: None,
        delay: None,
        attempts: 0,
    }
}

/// Milliseconds since the Unix epoch as a time; `None` for 0 (unknown).
fn from_ms(ms: u64) -> Option<DateTime<Utc>> {
    if ms == 0 {
        return None;
    }
    DateTime::from_timestamp_millis(i64::try_from(ms).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_survives_the_round_trip() {
        let message = Message::new("orders", "{}")
            .with_key("order-7")
            .with_tag("created")
            .with_header("traceparent", "00-abc-def-01");
        let sent = to_broker(message.clone());
        assert_eq!(sent.message_id, Some(message.id));
        assert_eq!(sent.properties["traceparent"], "00-abc-def-01");
        assert!(sent.properties.contains_key(BROKER_LITE_CREATED_AT));

        let mut view =
            broker_lite_client::protocol::MessageView::new(sent.topic, 2, 9, message.id, sent.body);
        view.key = sent.key;
        view.tag = sent.tag;
        view.properties = sent.properties;
        let back = from_broker(view);
        assert_eq!(
            back.headers, message.headers,
            "the creation time is not a header"
        );
        assert_eq!(back.created_at, message.created_at);
        assert_eq!(
            (
                back.id,
                back.topic.as_str(),
                back.key,
                back.tag,
                back.payload
            ),
            (
                message.id,
                "orders",
                message.key,
                message.tag,
                message.payload
            )
        );
    }

    #[test]
    fn without_the_property_the_broker_time_is_used() {
        let mut view = broker_lite_client::protocol::MessageView::new(
            "orders",
            0,
            0,
            uuid::Uuid::now_v7(),
            "x".into(),
        );
        view.born_timestamp_ms = 1_700_000_000_000;
        assert_eq!(
            from_broker(view).created_at.timestamp_millis(),
            1_700_000_000_000
        );
    }
}
