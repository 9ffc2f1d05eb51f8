//! Validation of messages before they reach the outbox table.

use crate::Message;
use crate::ValidationError;

/// Bounds a message must respect to be enqueued.
///
/// The defaults suit most brokers: topics up to 249 bytes of printable ASCII without spaces, payloads
/// up to 4 MiB, at most 64 headers of at most 4 KiB each (name plus value).
///
/// ```
/// use courier_core::{Limits, Message};
///
/// let limits = Limits { max_payload_bytes: 16, ..Limits::default() };
/// let error = limits.check(&Message::new("t", vec![0u8; 17])).unwrap_err();
/// assert!(error.to_string().contains("payload is 17 bytes"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest topic name, in bytes.
    pub max_topic_bytes: usize,
    /// Longest key or tag, in bytes.
    pub max_key_bytes: usize,
    /// Largest payload, in bytes.
    pub max_payload_bytes: usize,
    /// Most headers on one message.
    pub max_headers: usize,
    /// Largest header, name plus value, in bytes.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_topic_bytes: 249,
            max_key_bytes: 1024,
            max_payload_bytes: 4 * 1024 * 1024,
            max_headers: 64,
            max_header_bytes: 4096,
        }
    }
}

impl Limits {
    /// Checks `message` against these limits.
    ///
    /// # Errors
    ///
    /// Returns the first [`ValidationError`] found.
    pub fn check(&self, message: &Message) -> Result<(), ValidationError> {
        let topic = &message.topic;
        if topic.is_empty() {
            return Err(ValidationError::EmptyTopic);
        }
        if topic.len() > self.max_topic_bytes {
            return Err(ValidationError::TopicTooLong {
                len: topic.len(),
                max: self.max_topic_bytes,
            });
        }
        if let Some(bad) = topic.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(ValidationError::InvalidTopic {
                topic: topic.clone(),
                character: bad,
            });
        }
        for (field, value) in [("key", &message.key), ("tag", &message.tag)] {
            if let Some(value) = value {
                if value.is_empty() || value.len() > self.max_key_bytes {
                    return Err(ValidationError::BadKeyOrTag {
                        field,
                        len: value.len(),
                        max: self.max_key_bytes,
                    });
                }
            }
        }
        if message.payload.len() > self.max_payload_bytes {
            return Err(ValidationError::PayloadTooLarge {
                len: message.payload.len(),
                max: self.max_payload_bytes,
            });
        }
        if message.headers.len() > self.max_headers {
            return Err(ValidationError::TooManyHeaders {
                count: message.headers.len(),
                max: self.max_headers,
            });
        }
        if let Some((name, value)) = message
            .headers
            .iter()
            .find(|(name, value)| name.len() + value.len() > self.max_header_bytes)
        {
            return Err(ValidationError::HeaderTooLarge {
                name: name.clone(),
                len: name.len() + value.len(),
                max: self.max_header_bytes,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(message: Message) -> Result<(), ValidationError> {
        Limits::default().check(&message)
    }

    #[test]
    fn accepts_a_plain_message() {
        check(Message::new("orders.created", "{}").with_key("k")).unwrap();
    }

    #[test]
    fn rejects_empty_long_and_spaced_topics() {
        assert!(matches!(
            check(Message::new("", "")),
            Err(ValidationError::EmptyTopic)
        ));
        assert!(matches!(
            check(Message::new("x".repeat(250), "")),
            Err(ValidationError::TopicTooLong { len: 250, max: 249 })
        ));
        assert!(matches!(
            check(Message::new("a b", "")),
            Err(ValidationError::InvalidTopic { character: ' ', .. })
        ));
    }

    #[test]
    fn rejects_oversized_payload_and_headers() {
        let big = vec![0u8; 4 * 1024 * 1024 + 1];
        assert!(matches!(
            check(Message::new("t", big)),
            Err(ValidationError::PayloadTooLarge { .. })
        ));
        let mut many = Message::new("t", "");
        for i in 0..65 {
            many = many.with_header(format!("h{i}"), "v");
        }
        assert!(matches!(
            check(many),
            Err(ValidationError::TooManyHeaders { count: 65, .. })
        ));
        let large = Message::new("t", "").with_header("h", "v".repeat(5000));
        let error = check(large).unwrap_err();
        assert!(error.to_string().contains("header `h`"), "{error}");
    }

    #[test]
    fn rejects_empty_key() {
        assert!(matches!(
            check(Message::new("t", "").with_key("")),
            Err(ValidationError::BadKeyOrTag { field: "key", .. })
        ));
    }
}
