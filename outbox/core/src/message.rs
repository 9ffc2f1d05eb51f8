//! The message envelope: what an application enqueues and what a publisher receives.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

/// One message on its way from an application transaction to a broker.
///
/// Build it with [`Message::new`] or [`Message::json`], then add a key (ordering), a tag (broker-side
/// filtering), headers and a delivery delay. The relay hands the same envelope to the publisher, with
/// [`attempts`](Message::attempts) counting earlier publish attempts.
///
/// # Examples
///
/// ```
/// use courier_core::Message;
/// use std::time::Duration;
///
/// #[derive(serde::Serialize)]
/// struct OrderCreated { order_id: u64 }
///
/// let message = Message::json("orders.created", &OrderCreated { order_id: 42 })?
///     .with_key("order-42")
///     .with_tag("created")
///     .with_header("tenant", "acme")
///     .with_delay(Duration::from_secs(5));
/// assert_eq!(message.key.as_deref(), Some("order-42"));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Unique id, a UUIDv7 (time-ordered) unless you set your own. Consumers deduplicate on it.
    pub id: Uuid,
    /// Destination topic.
    pub topic: String,
    /// Ordering key: messages sharing a key are published in enqueue order.
    pub key: Option<String>,
    /// Tag for broker-side filtering.
    pub tag: Option<String>,
    /// String headers, for example a W3C `traceparent`.
    pub headers: BTreeMap<String, String>,
    /// The body, opaque to the framework.
    pub payload: Bytes,
    /// When the message was created.
    pub created_at: DateTime<Utc>,
    /// Earliest publish time. `None` when enqueued means "now, by the database clock"; messages the
    /// relay hands to a publisher always carry the time they became due.
    pub available_at: Option<DateTime<Utc>>,
    /// Delay relative to the database clock at enqueue time; used when `available_at` is `None`.
    pub delay: Option<Duration>,
    /// Publish attempts made before this one (0 on the first).
    pub attempts: u32,
}

impl Message {
    /// A message with a fresh UUIDv7 id and a raw payload.
    ///
    /// ```
    /// let message = courier_core::Message::new("audit", &b"raw bytes"[..]);
    /// assert_eq!(message.payload.as_ref(), b"raw bytes");
    /// ```
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            id: Uuid::now_v7(),
            topic: topic.into(),
            key: None,
            tag: None,
            headers: BTreeMap::new(),
            payload: payload.into(),
            created_at: Utc::now(),
            available_at: None,
            delay: None,
            attempts: 0,
        }
    }

    /// A message whose payload is `value` serialised as JSON, with a `content-type` header.
    ///
    /// # Errors
    ///
    /// Returns the serialisation error if `value` cannot be written as JSON.
    ///
    /// ```
    /// let message = courier_core::Message::json("orders", &serde_json::json!({"id": 1}))?;
    /// assert_eq!(message.headers["content-type"], "application/json");
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn json<T: Serialize + ?Sized>(
        topic: impl Into<String>,
        value: &T,
    ) -> Result<Self, serde_json::Error> {
        let payload = serde_json::to_vec(value)?;
        Ok(Self::new(topic, payload).with_header("content-type", "application/json"))
    }

    /// Decodes the JSON payload.
    ///
    /// # Errors
    ///
    /// Returns the deserialisation error if the payload is not valid JSON for `T`.
    ///
    /// ```
    /// let message = courier_core::Message::json("numbers", &[1, 2, 3])?;
    /// let numbers: Vec<u8> = message.payload_json()?;
    /// assert_eq!(numbers, [1, 2, 3]);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn payload_json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.payload)
    }

    /// Sets the ordering key.
    #[must_use]
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the tag.
    #[must_use]
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// Adds or replaces a header.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Sets the message id, for example to derive it from a business identifier.
    #[must_use]
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }

    /// Publishes no earlier than `at`.
    #[must_use]
    pub fn deliver_at(mut self, at: DateTime<Utc>) -> Self {
        self.available_at = Some(at);
        self
    }

    /// Publishes no earlier than `delay` after the enqueueing statement runs (database clock).
    #[must_use]
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
}
