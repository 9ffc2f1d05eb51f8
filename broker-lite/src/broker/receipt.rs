//! Receipts: opaque handles that settle one delivery.

use super::error::{BrokerError, Result};

const VERSION: u8 = 1;

/// The handle of one delivery: group, topic, queue, offset, delivery attempt and member.
///
/// It is opaque to consumers; the network layer carries it as bytes with
/// [`to_bytes`](Receipt::to_bytes) / [`from_bytes`](Receipt::from_bytes).
///
/// ```
/// # use broker_lite::broker::Receipt;
/// # fn f(receipt: Receipt) -> Result<(), broker_lite::broker::BrokerError> {
/// let wire = receipt.to_bytes();
/// assert_eq!(Receipt::from_bytes(&wire)?, receipt);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Receipt {
    pub(crate) group: String,
    pub(crate) client_id: String,
    pub(crate) topic: String,
    pub(crate) queue_id: u32,
    pub(crate) queue_offset: u64,
    pub(crate) attempt: u32,
}

impl Receipt {
    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The member it was delivered to.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The queue.
    pub fn queue_id(&self) -> u32 {
        self.queue_id
    }

    /// The offset within the queue.
    pub fn queue_offset(&self) -> u64 {
        self.queue_offset
    }

    /// The delivery attempt, 1 for the first delivery.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Encodes the receipt for the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b =
            Vec::with_capacity(32 + self.group.len() + self.client_id.len() + self.topic.len());
        b.push(VERSION);
        for s in [&self.group, &self.client_id, &self.topic] {
            b.extend_from_slice(&(s.len() as u16).to_le_bytes());
            b.extend_from_slice(s.as_bytes());
        }
        b.extend_from_slice(&self.queue_id.to_le_bytes());
        b.extend_from_slice(&self.queue_offset.to_le_bytes());
        b.extend_from_slice(&self.attempt.to_le_bytes());
        b
    }

    /// Decodes a receipt made by [`to_bytes`](Self::to_bytes).
    ///
    /// # Errors
    /// [`BrokerError::MalformedReceipt`].
    pub fn from_bytes(mut b: &[u8]) -> Result<Receipt> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
            if b.len() < n {
                return Err(BrokerError::MalformedReceipt);
            }
            let (head, tail) = b.split_at(n);
            *b = tail;
            Ok(head)
        }
        fn string(b: &mut &[u8]) -> Result<String> {
            let len = u16::from_le_bytes(take(b, 2)?.try_into().unwrap()) as usize;
            String::from_utf8(take(b, len)?.to_vec()).map_err(|_| BrokerError::MalformedReceipt)
        }
        if take(&mut b, 1)? != [VERSION] {
            return Err(BrokerError::MalformedReceipt);
        }
        let group = string(&mut b)?;
        let client_id = string(&mut b)?;
        let topic = string(&mut b)?;
        let queue_id = u32::from_le_bytes(take(&mut b, 4)?.try_into().unwrap());
        let queue_offset = u64::from_le_bytes(take(&mut b, 8)?.try_into().unwrap());
        let attempt = u32::from_le_bytes(take(&mut b, 4)?.try_into().unwrap());
        if !b.is_empty() {
            return Err(BrokerError::MalformedReceipt);
        }
        Ok(Receipt {
            group,
            client_id,
            topic,
            queue_id,
            queue_offset,
            attempt,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let r = Receipt {
            group: "g".into(),
            client_id: "c-1".into(),
            topic: "orders".into(),
            queue_id: 3,
            queue_offset: 99,
            attempt: 2,
        };
        let b = r.to_bytes();
        assert_eq!(Receipt::from_bytes(&b).unwrap(), r);
        assert!(Receipt::from_bytes(&b[..b.len() - 1]).is_err());
        assert!(Receipt::from_bytes(&[]).is_err());
        let mut extra = b.clone();
        extra.push(0);
        assert!(Receipt::from_bytes(&extra).is_err());
    }
}
