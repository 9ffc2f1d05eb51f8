//! Records as the store's callers see them. Their on-disk frame is in `codec`.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use uuid::Uuid;

use super::codec::{ABSENT, HEADER_SIZE};
use super::error::{Result, StorageError};

/// A record to append.
///
/// ```
/// use broker_lite::storage::NewRecord;
///
/// let record = NewRecord::new("orders", 3, "hello")
///     .with_key("order-42")
///     .with_tag("created")
///     .with_property("trace-id", "abc");
/// assert_eq!(record.queue_id, 3);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    /// Topic name, 1 to 65534 bytes.
    pub topic: String,
    /// Queue within the topic.
    pub queue_id: u32,
    /// Message id, a UUID (v7 by default).
    pub message_id: Uuid,
    /// Optional message key (ordering and lookup).
    pub key: Option<String>,
    /// Optional tag (server-side filtering).
    pub tag: Option<String>,
    /// String properties (headers).
    pub properties: BTreeMap<String, String>,
    /// Payload.
    pub body: Bytes,
    /// When the producer created the message, ms since the Unix epoch.
    pub born_timestamp_ms: u64,
    /// Flags for upper layers; stored as is.
    pub flags: u16,
}

impl NewRecord {
    /// A record with a fresh UUIDv7 id, born now, without key, tag, properties or flags.
    pub fn new(topic: impl Into<String>, queue_id: u32, body: impl Into<Bytes>) -> Self {
        NewRecord {
            topic: topic.into(),
            queue_id,
            message_id: Uuid::now_v7(),
            key: None,
            tag: None,
            properties: BTreeMap::new(),
            body: body.into(),
            born_timestamp_ms: now_ms(),
            flags: 0,
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the tag.
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// Adds a property.
    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// The size of this record's frame in the log.
    pub fn encoded_len(&self) -> usize {
        HEADER_SIZE
            + 2
            + self.topic.len()
            + 2
            + self.key.as_ref().map_or(0, String::len)
            + 2
            + self.tag.as_ref().map_or(0, String::len)
            + 2
            + self
                .properties
                .iter()
                .map(|(k, v)| 6 + k.len() + v.len())
                .sum::<usize>()
            + 4
            + self.body.len()
    }

    /// Checks field limits and returns the encoded length.
    pub(crate) fn check(&self, max_record_size: u32) -> Result<usize> {
        let invalid = |m: &str| Err(StorageError::InvalidRecord(m.to_string()));
        if self.topic.is_empty() || self.topic.len() >= ABSENT as usize {
            return invalid("the topic must be 1 to 65534 bytes long");
        }
        if self
            .key
            .as_ref()
            .is_some_and(|k| k.len() >= ABSENT as usize)
        {
            return invalid("the key must be shorter than 65535 bytes");
        }
        if self
            .tag
            .as_ref()
            .is_some_and(|t| t.len() >= ABSENT as usize)
        {
            return invalid("the tag must be shorter than 65535 bytes");
        }
        if self.properties.len() >= ABSENT as usize
            || self.properties.keys().any(|k| k.len() >= ABSENT as usize)
        {
            return invalid("too many properties or a property name of 65535 bytes or more");
        }
        let size = self.encoded_len();
        if size > max_record_size as usize {
            return Err(StorageError::RecordTooLarge {
                size,
                limit: max_record_size,
            });
        }
        Ok(size)
    }
}

/// A record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredRecord {
    /// Topic name.
    pub topic: String,
    /// Queue within the topic.
    pub queue_id: u32,
    /// Position of the record within its queue.
    pub queue_offset: u64,
    /// Global byte position of the record's frame in the commit log.
    pub log_position: u64,
    /// Message id.
    pub message_id: Uuid,
    /// Optional key.
    pub key: Option<String>,
    /// Optional tag.
    pub tag: Option<String>,
    /// String properties.
    pub properties: BTreeMap<String, String>,
    /// Payload.
    pub body: Bytes,
    /// When the producer created the message, ms since the Unix epoch.
    pub born_timestamp_ms: u64,
    /// When the store appended it, ms since the Unix epoch.
    pub stored_timestamp_ms: u64,
    /// Flags as given by the producer.
    pub flags: u16,
}

impl StoredRecord {
    /// The size of this record's frame in the log.
    pub fn encoded_len(&self) -> usize {
        HEADER_SIZE
            + 2
            + self.topic.len()
            + 2
            + self.key.as_ref().map_or(0, String::len)
            + 2
            + self.tag.as_ref().map_or(0, String::len)
            + 2
            + self
                .properties
                .iter()
                .map(|(k, v)| 6 + k.len() + v.len())
                .sum::<usize>()
            + 4
            + self.body.len()
    }
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
