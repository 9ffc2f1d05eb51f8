//! Receipts: opaque handles that settle one delivery.

use std::fmt;

use ring::hmac;

use super::error::{BrokerError, Result};

const VERSION: u8 = 1;

/// Length of a sealed receipt's signature.
const TAG_LEN: usize = 32;

/// The key a server signs the receipts it hands out with (HMAC-SHA256), so that a receipt
/// assembled from admin output, altered, or issued to another principal cannot settle a
/// delivery (issue 16). New for each server: receipts from before a restart are refused, and
/// their messages are redelivered after the consume timeout.
///
/// ```
/// use broker_lite::broker::ReceiptKey;
/// let key = ReceiptKey::generate();
/// assert_eq!(format!("{key:?}"), "ReceiptKey(..)");
/// ```
pub struct ReceiptKey(hmac::Key);

impl fmt::Debug for ReceiptKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReceiptKey(..)")
    }
}

impl ReceiptKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        ReceiptKey(hmac::Key::new(
            hmac::HMAC_SHA256,
            &crate::protocol::scram::nonce(),
        ))
    }
}

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

    /// The receipt as handed to `principal` over the wire: its bytes, the principal's name, and
    /// a signature over both.
    ///
    /// ```
    /// # use broker_lite::broker::{Receipt, ReceiptKey};
    /// # fn f(receipt: Receipt) -> Result<(), broker_lite::broker::BrokerError> {
    /// let key = ReceiptKey::generate();
    /// let sealed = receipt.seal(&key, "orders");
    /// assert_eq!(Receipt::open(&sealed, &key, "orders", receipt.group())?, receipt);
    /// assert!(Receipt::open(&sealed, &key, "mallory", receipt.group()).is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn seal(&self, key: &ReceiptKey, principal: &str) -> Vec<u8> {
        let mut b = Vec::with_capacity(2 + principal.len() + 64 + TAG_LEN);
        b.extend_from_slice(&(principal.len() as u16).to_le_bytes());
        b.extend_from_slice(principal.as_bytes());
        b.extend_from_slice(&self.to_bytes());
        let tag = hmac::sign(&key.0, &b);
        b.extend_from_slice(tag.as_ref());
        b
    }

    /// Checks a receipt made by [`seal`](Self::seal): signed with `key`, issued to
    /// `principal`, for `group`.
    ///
    /// # Errors
    /// [`BrokerError::ForeignReceipt`] for a forged or altered receipt, or one issued to another
    /// principal or group; [`BrokerError::MalformedReceipt`] when too short to be one.
    pub fn open(sealed: &[u8], key: &ReceiptKey, principal: &str, group: &str) -> Result<Receipt> {
        if sealed.len() < 2 + TAG_LEN {
            return Err(BrokerError::MalformedReceipt);
        }
        let (signed, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        if hmac::verify(&key.0, signed, tag).is_err() {
            return Err(BrokerError::ForeignReceipt(
                "it was not issued by this broker (forged, altered, or from before a restart)"
                    .into(),
            ));
        }
        let len = u16::from_le_bytes([signed[0], signed[1]]) as usize;
        let Some(owner) = signed.get(2..2 + len) else {
            return Err(BrokerError::MalformedReceipt);
        };
        if owner != principal.as_bytes() {
            return Err(BrokerError::ForeignReceipt(format!(
                "it was issued to principal {:?}, not {principal:?}",
                String::from_utf8_lossy(owner)
            )));
        }
        let receipt = Receipt::from_bytes(&signed[2 + len..])?;
        if receipt.group != group {
            return Err(BrokerError::ForeignReceipt(format!(
                "it belongs to group {:?}, not {group:?}",
                receipt.group
            )));
        }
        Ok(receipt)
    }

    /// Reads the receipt inside a sealed one **without checking it**: for logs, tools and tests
    /// that want its attempt or position. Settling always goes through [`open`](Self::open).
    ///
    /// # Errors
    /// [`BrokerError::MalformedReceipt`] when `sealed` is not a sealed receipt.
    ///
    /// ```
    /// # use broker_lite::broker::{Receipt, ReceiptKey};
    /// # fn f(receipt: Receipt) -> Result<(), broker_lite::broker::BrokerError> {
    /// let sealed = receipt.seal(&ReceiptKey::generate(), "orders");
    /// assert_eq!(Receipt::peek(&sealed)?.attempt(), receipt.attempt());
    /// # Ok(())
    /// # }
    /// ```
    pub fn peek(sealed: &[u8]) -> Result<Receipt> {
        let body = sealed
            .len()
            .checked_sub(TAG_LEN)
            .and_then(|end| sealed.get(..end))
            .ok_or(BrokerError::MalformedReceipt)?;
        let len = match body {
            [a, b, ..] => u16::from_le_bytes([*a, *b]) as usize,
            _ => return Err(BrokerError::MalformedReceipt),
        };
        Receipt::from_bytes(body.get(2 + len..).ok_or(BrokerError::MalformedReceipt)?)
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

    #[test]
    fn sealed_receipts_bind_key_principal_and_group() {
        let r = Receipt {
            group: "billing".into(),
            client_id: "c-1".into(),
            topic: "orders".into(),
            queue_id: 3,
            queue_offset: 99,
            attempt: 2,
        };
        let key = ReceiptKey::generate();
        let sealed = r.seal(&key, "alice");
        assert_eq!(Receipt::open(&sealed, &key, "alice", "billing").unwrap(), r);
        let foreign = |e: BrokerError| match e {
            BrokerError::ForeignReceipt(why) => why,
            other => panic!("expected a foreign receipt, got {other:?}"),
        };
        let other_key = ReceiptKey::generate();
        assert!(
            foreign(Receipt::open(&sealed, &other_key, "alice", "billing").unwrap_err())
                .contains("not issued by this broker")
        );
        assert!(
            foreign(Receipt::open(&sealed, &key, "bob", "billing").unwrap_err())
                .contains("issued to principal \"alice\"")
        );
        assert!(
            foreign(Receipt::open(&sealed, &key, "alice", "shipping").unwrap_err())
                .contains("group \"billing\"")
        );
        // A receipt built from admin output, or any flipped bit, fails the signature.
        assert!(Receipt::open(&r.to_bytes(), &key, "alice", "billing").is_err());
        for i in 0..sealed.len() {
            let mut altered = sealed.clone();
            altered[i] ^= 1;
            assert!(
                Receipt::open(&altered, &key, "alice", "billing").is_err(),
                "bit flip at {i}"
            );
        }
    }
}
