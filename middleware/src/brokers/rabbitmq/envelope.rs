//! The envelope as an AMQP message and back: properties for what AMQP has a field for, headers
//! for the rest.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use courier_core::Message;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use uuid::Uuid;

/// Header carrying `Message::key` (AMQP has no ordering key).
pub const RABBITMQ_KEY_HEADER: &str = "courier-key";
/// Header carrying `Message::tag`; the routing key carries it as well.
pub const RABBITMQ_TAG_HEADER: &str = "courier-tag";
/// Header carrying `Message::topic` (the exchange is the topic, but a delay or dead-letter copy
/// travels through the default exchange).
pub const RABBITMQ_TOPIC_HEADER: &str = "courier-topic";
/// Header carrying `Message::created_at` in RFC 3339 (the AMQP timestamp has whole seconds only).
pub const RABBITMQ_CREATED_AT_HEADER: &str = "courier-created-at";
/// Header the source sets on a redelivered copy: how many deliveries failed before it.
pub const RABBITMQ_REDELIVERIES_HEADER: &str = "courier-redeliveries";
/// Header the source sets on a dead-lettered copy: why the handler gave up.
pub const RABBITMQ_DEAD_LETTER_REASON_HEADER: &str = "courier-dead-letter-reason";
/// Header the source sets on a dead-lettered copy: the queue it was consumed from.
pub const RABBITMQ_ORIGINAL_QUEUE_HEADER: &str = "courier-original-queue";

/// The headers the mapping owns; they never show up in `Message::headers`.
const RESERVED: [&str; 7] = [
    RABBITMQ_KEY_HEADER,
    RABBITMQ_TAG_HEADER,
    RABBITMQ_TOPIC_HEADER,
    RABBITMQ_CREATED_AT_HEADER,
    RABBITMQ_REDELIVERIES_HEADER,
    RABBITMQ_DEAD_LETTER_REASON_HEADER,
    RABBITMQ_ORIGINAL_QUEUE_HEADER,
];

/// Persistent delivery mode: the broker writes the message to disk before confirming it.
pub(crate) const PERSISTENT: u8 = 2;

/// The routing key of `message`: its tag (so bindings can filter on it), else its topic.
pub(crate) fn routing_key(message: &Message) -> &str {
    message.tag.as_deref().unwrap_or(&message.topic)
}

/// The AMQP properties of `message`: persistent, `message_id` = the envelope id, headers,
/// key, tag, topic and creation time as headers, the creation time also as the AMQP timestamp.
pub(crate) fn properties(message: &Message) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (name, value) in &message.headers {
        headers.insert(name.as_str().into(), long_string(value));
    }
    if let Some(key) = &message.key {
        headers.insert(RABBITMQ_KEY_HEADER.into(), long_string(key));
    }
    if let Some(tag) = &message.tag {
        headers.insert(RABBITMQ_TAG_HEADER.into(), long_string(tag));
    }
    headers.insert(RABBITMQ_TOPIC_HEADER.into(), long_string(&message.topic));
    headers.insert(
        RABBITMQ_CREATED_AT_HEADER.into(),
        long_string(&message.created_at.to_rfc3339()),
    );
    BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_message_id(ShortString::from(message.id.to_string()))
        .with_timestamp(u64::try_from(message.created_at.timestamp()).unwrap_or_default())
        .with_headers(headers)
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

/// A header as text, for the value types a producer may have used.
pub(crate) fn header_text(headers: &FieldTable, name: &str) -> Option<String> {
    headers.inner().get(name).and_then(value_text)
}

fn value_text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        _ => return None,
    })
}

/// A header as a count (RabbitMQ's `x-delivery-count` is a long long int).
pub(crate) fn header_count(headers: &FieldTable, name: &str) -> u32 {
    let count = match headers.inner().get(name) {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortUInt(n)) => i64::from(*n),
        Some(value) => value_text(value)
            .and_then(|text| text.parse().ok())
            .unwrap_or(0),
        None => 0,
    };
    u32::try_from(count.max(0)).unwrap_or(u32::MAX)
}

/// A delivered AMQP message as the envelope. `queue` names the topic when the producer did not
/// (a message published by something other than courier).
pub(crate) fn message(properties: &BasicProperties, payload: bytes::Bytes, queue: &str) -> Message {
    let empty = FieldTable::default();
    let table = properties.headers().as_ref().unwrap_or(&empty);
    let mut headers = BTreeMap::new();
    for (name, value) in table.inner() {
        let name = name.as_str();
        if RESERVED.contains(&name) || name.starts_with("x-") {
            continue;
        }
        if let Some(text) = value_text(value) {
            headers.insert(name.to_owned(), text);
        }
    }
    let created_at = header_text(table, RABBITMQ_CREATED_AT_HEADER)
        .and_then(|at| DateTime::parse_from_rfc3339(&at).ok())
        .map(|at| at.with_timezone(&Utc))
        .or_else(|| {
            properties
                .timestamp()
                .and_then(|s| DateTime::from_timestamp(i64::try_from(s).ok()?, 0))
        })
        .unwrap_or_else(Utc::now);
    let id = properties
        .message_id()
        .as_ref()
        .and_then(|id| Uuid::parse_str(id.as_str()).ok())
        .unwrap_or_else(|| {
            tracing::warn!(
                queue,
                "a RabbitMQ message without a UUID message_id; deduplication cannot recognise its redeliveries"
            );
            Uuid::now_v7()
        });
    let mut message = Message::new(
        header_text(table, RABBITMQ_TOPIC_HEADER).unwrap_or_else(|| queue.to_owned()),
        payload,
    );
    message.id = id;
    message.key = header_text(table, RABBITMQ_KEY_HEADER);
    message.tag = header_text(table, RABBITMQ_TAG_HEADER);
    message.headers = headers;
    message.created_at = created_at;
    message
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
        let props = properties(&message);
        assert_eq!(props.delivery_mode(), &Some(PERSISTENT));
        assert_eq!(
            props.message_id().as_ref().map(|id| id.as_str().to_owned()),
            Some(message.id.to_string())
        );
        assert_eq!(routing_key(&message), "created");
        let back = super::message(&props, message.payload.clone(), "billing");
        assert_eq!(back.headers, message.headers, "mapping headers stay hidden");
        assert_eq!(back.created_at, message.created_at);
        assert_eq!(
            (back.id, back.topic.as_str(), back.key, back.tag),
            (message.id, "orders", message.key, message.tag)
        );
    }

    #[test]
    fn a_foreign_message_gets_the_queue_as_topic_and_its_timestamp() {
        let props = BasicProperties::default().with_timestamp(1_700_000_000);
        let back = message(&props, "x".into(), "billing");
        assert_eq!(back.topic, "billing");
        assert_eq!(back.created_at.timestamp(), 1_700_000_000);
    }

    #[test]
    fn counts_read_any_integer_type() {
        let mut table = FieldTable::default();
        table.insert("x-delivery-count".into(), AMQPValue::LongLongInt(3));
        table.insert(RABBITMQ_REDELIVERIES_HEADER.into(), long_string("2"));
        assert_eq!(header_count(&table, "x-delivery-count"), 3);
        assert_eq!(header_count(&table, RABBITMQ_REDELIVERIES_HEADER), 2);
        assert_eq!(header_count(&table, "absent"), 0);
    }
}
