//! The envelope as a NATS message and back: subject, headers, payload.
//!
//! | envelope | NATS |
//! |---|---|
//! | `id` | `Nats-Msg-Id` (the stream's deduplication id) |
//! | `topic` | the subject (see [`SubjectMapping`]) and `Courier-Topic` |
//! | `key` | `Courier-Key` (and the last subject token with [`SubjectMapping::TopicAndKey`]) |
//! | `tag` | `Courier-Tag` |
//! | `created_at` | `Courier-Created-At` (RFC 3339) |
//! | `headers` | headers of the same names (`traceparent` included) |
//! | `payload` | the payload |

use std::collections::BTreeMap;

use async_nats::HeaderMap;
use chrono::{DateTime, Utc};
use courier_core::Message;
use uuid::Uuid;

/// The header carrying `Message::topic` (the subject may add the key).
pub const NATS_TOPIC_HEADER: &str = "Courier-Topic";
/// The header carrying `Message::key`.
pub const NATS_KEY_HEADER: &str = "Courier-Key";
/// The header carrying `Message::tag`.
pub const NATS_TAG_HEADER: &str = "Courier-Tag";
/// The header carrying `Message::created_at` (RFC 3339).
pub const NATS_CREATED_AT_HEADER: &str = "Courier-Created-At";
/// JetStream's deduplication header: the outbox message id.
pub const NATS_MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// Where a message is published: the subject of each envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SubjectMapping {
    /// The subject is the topic (`orders.created`). The default.
    #[default]
    Topic,
    /// The subject is the topic followed by the key as its last token (`orders.created.order-7`),
    /// so that a consumer can filter on a key, or a stream limit messages per key. A message
    /// without a key goes to the topic itself. A key that is not a valid subject token (empty, or
    /// with `.`, `*`, `>` or whitespace) fails the publish for good.
    TopicAndKey,
}

/// Why an envelope cannot become a NATS message; sending it again can never succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The topic (or key) does not make a valid subject to publish to.
    #[error(
        "{what} {value:?} is not valid in a NATS subject (no whitespace, no wildcards `*` `>`, no empty tokens; a key may not contain `.`)"
    )]
    InvalidSubject {
        /// `"topic"` or `"key"`.
        what: &'static str,
        /// The offending value.
        value: String,
    },
    /// A header uses a name reserved for NATS (`Nats-…`) or courier (`Courier-…`), or has a name
    /// or value NATS headers cannot carry.
    #[error(
        "header {name:?} cannot be sent over NATS: names starting with `Nats-` or `Courier-` are reserved, and names and values may not contain line breaks (names not `:` or whitespace either)"
    )]
    InvalidHeader {
        /// The header's name.
        name: String,
    },
}

/// The subject `message` is published to.
pub(crate) fn subject(message: &Message, mapping: SubjectMapping) -> Result<String, EnvelopeError> {
    let topic = &message.topic;
    let valid_token =
        |t: &str| !t.is_empty() && !t.chars().any(|c| c.is_whitespace() || c == '*' || c == '>');
    if !topic.split('.').all(valid_token) {
        return Err(EnvelopeError::InvalidSubject {
            what: "topic",
            value: topic.clone(),
        });
    }
    match (mapping, &message.key) {
        (SubjectMapping::TopicAndKey, Some(key)) => {
            if !valid_token(key) || key.contains('.') {
                return Err(EnvelopeError::InvalidSubject {
                    what: "key",
                    value: key.clone(),
                });
            }
            Ok(format!("{topic}.{key}"))
        }
        _ => Ok(topic.clone()),
    }
}

/// The headers of `message`, with the envelope's fields and the deduplication id.
pub(crate) fn headers(message: &Message) -> Result<HeaderMap, EnvelopeError> {
    let mut out = HeaderMap::new();
    for (name, value) in &message.headers {
        let reserved = |prefix: &str| {
            name.get(..prefix.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
        };
        let bad_name = name.is_empty()
            || name
                .chars()
                .any(|c| c.is_whitespace() || c == ':' || c.is_control());
        if reserved("Nats-") || reserved("Courier-") || bad_name || value.contains(['\r', '\n']) {
            return Err(EnvelopeError::InvalidHeader { name: name.clone() });
        }
        out.insert(name.as_str(), value.as_str());
    }
    out.insert(NATS_MSG_ID_HEADER, message.id.to_string().as_str());
    out.insert(NATS_TOPIC_HEADER, message.topic.as_str());
    if let Some(key) = &message.key {
        out.insert(NATS_KEY_HEADER, key.as_str());
    }
    if let Some(tag) = &message.tag {
        out.insert(NATS_TAG_HEADER, tag.as_str());
    }
    out.insert(
        NATS_CREATED_AT_HEADER,
        message.created_at.to_rfc3339().as_str(),
    );
    Ok(out)
}

/// A delivered NATS message as the envelope. `fallback_id` names a message that carries no
/// (valid) `Nats-Msg-Id` (one not published by courier): stable across its redeliveries.
pub(crate) fn from_nats(message: &async_nats::Message, fallback_id: Uuid) -> Message {
    let mut headers = BTreeMap::new();
    let (mut id, mut courier_id) = (None, None);
    let (mut topic, mut key, mut tag, mut created_at) = (None, None, None, None);
    if let Some(map) = &message.headers {
        for (name, values) in map.iter() {
            let Some(value) = values.last().map(|v| v.as_str().to_owned()) else {
                continue;
            };
            match name.as_ref() {
                NATS_MSG_ID_HEADER => id = value.parse::<Uuid>().ok(),
                // A dead letter's `Nats-Msg-Id` is `<group>/<id>`; the id travels here.
                super::source::NATS_MESSAGE_ID_HEADER => courier_id = value.parse::<Uuid>().ok(),
                NATS_TOPIC_HEADER => topic = Some(value),
                NATS_KEY_HEADER => key = Some(value),
                NATS_TAG_HEADER => tag = Some(value),
                NATS_CREATED_AT_HEADER => {
                    created_at = DateTime::parse_from_rfc3339(&value)
                        .ok()
                        .map(|at| at.with_timezone(&Utc));
                }
                other if other.starts_with("Nats-") || other.starts_with("Courier-") => {}
                other => {
                    headers.insert(other.to_owned(), value);
                }
            }
        }
    }
    Message {
        id: id.or(courier_id).unwrap_or(fallback_id),
        topic: topic.unwrap_or_else(|| message.subject.to_string()),
        key,
        tag,
        headers,
        payload: message.payload.clone(),
        created_at: created_at.unwrap_or_else(Utc::now),
        available_at: None,
        delay: None,
        attempts: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_survives_the_round_trip() {
        let message = Message::new("orders.created", "{}")
            .with_key("order-7")
            .with_tag("created")
            .with_header("traceparent", "00-abc-def-01");
        let headers = headers(&message).unwrap();
        assert_eq!(
            headers.get(NATS_MSG_ID_HEADER).unwrap().as_str(),
            message.id.to_string()
        );
        let nats = async_nats::Message {
            subject: subject(&message, SubjectMapping::TopicAndKey)
                .unwrap()
                .into(),
            reply: None,
            payload: message.payload.clone(),
            headers: Some(headers),
            status: None,
            description: None,
            length: 0,
        };
        assert_eq!(nats.subject.as_str(), "orders.created.order-7");
        let back = from_nats(&nats, Uuid::nil());
        assert_eq!(back.headers, message.headers);
        assert_eq!(
            (back.id, back.topic.as_str(), &back.key, &back.tag),
            (message.id, "orders.created", &message.key, &message.tag)
        );
        assert_eq!(back.created_at, message.created_at);
        assert_eq!(back.payload, message.payload);
    }

    #[test]
    fn subjects_and_headers_nats_cannot_carry_are_refused() {
        let bad_topic = Message::new("orders created", "x");
        assert!(subject(&bad_topic, SubjectMapping::Topic).is_err());
        assert!(subject(&Message::new("orders.>", "x"), SubjectMapping::Topic).is_err());
        assert!(subject(&Message::new("orders..x", "x"), SubjectMapping::Topic).is_err());
        let dotted_key = Message::new("orders", "x").with_key("a.b");
        assert!(subject(&dotted_key, SubjectMapping::TopicAndKey).is_err());
        assert_eq!(
            subject(&dotted_key, SubjectMapping::Topic).unwrap(),
            "orders"
        );
        for name in ["Nats-Expected-Stream", "courier-topic", "a b", ""] {
            let message = Message::new("orders", "x").with_header(name, "v");
            assert!(headers(&message).is_err(), "{name:?}");
        }
        let message = Message::new("orders", "x").with_header("note", "two\r\nlines");
        assert!(headers(&message).is_err());
    }

    #[test]
    fn a_foreign_message_gets_the_fallback_id_and_its_subject_as_topic() {
        let nats = async_nats::Message {
            subject: "legacy.orders".into(),
            reply: None,
            payload: "x".into(),
            headers: None,
            status: None,
            description: None,
            length: 0,
        };
        let fallback = Uuid::from_u64_pair(1, 2);
        let back = from_nats(&nats, fallback);
        assert_eq!((back.id, back.topic.as_str()), (fallback, "legacy.orders"));
    }
}
