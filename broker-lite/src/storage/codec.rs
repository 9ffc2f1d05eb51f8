//! The on-disk frame of a record.
//!
//! Every record is one frame, all integers little-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | frame length, this field included |
//! | 4 | 4 | CRC32C of bytes `8..length` |
//! | 8 | 2 | format version (1) |
//! | 10 | 2 | flags |
//! | 12 | 4 | queue id |
//! | 16 | 8 | queue offset |
//! | 24 | 8 | born timestamp, ms since the Unix epoch |
//! | 32 | 8 | stored timestamp, ms since the Unix epoch |
//! | 40 | 16 | message id (UUID) |
//! | 56 | 2 + n | topic |
//! | | 2 + n | key, length `0xFFFF` when absent |
//! | | 2 + n | tag, length `0xFFFF` when absent |
//! | | 2 + … | property count, then per property: key (2 + n), value (4 + n) |
//! | | 4 + n | body |
//!
//! A length of zero means "no record here" (preallocated space); the 8-byte end-of-segment marker
//! (`0xFFFF_FFFF`, [`END_MAGIC`]) says the rest of a segment is unused because the next record did not fit.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use uuid::Uuid;

use super::record::{NewRecord, StoredRecord};

/// Size of the fixed part of a frame.
pub(crate) const HEADER_SIZE: usize = 56;
/// The smallest possible frame: header, a one-byte topic, absent key and tag, no properties, empty body.
pub(crate) const MIN_FRAME_SIZE: usize = HEADER_SIZE + 3 + 2 + 2 + 2 + 4;
/// The current frame format version.
pub(crate) const VERSION: u16 = 1;
/// Length value of the end-of-segment marker.
pub(crate) const END_LEN: u32 = u32::MAX;
/// Second word of the end-of-segment marker.
pub(crate) const END_MAGIC: u32 = 0xB10C_E0F5;
/// Size of the end-of-segment marker.
pub(crate) const END_MARKER_SIZE: usize = 8;
pub(crate) const ABSENT: u16 = u16::MAX;

/// Appends the frame of `record` to `buf`. The record must have passed [`NewRecord::check`].
pub(crate) fn encode(record: &NewRecord, queue_offset: u64, stored_ms: u64, buf: &mut BytesMut) {
    let start = buf.len();
    let len = record.encoded_len();
    buf.reserve(len);
    buf.put_u32_le(len as u32);
    buf.put_u32_le(0); // CRC, patched below
    buf.put_u16_le(VERSION);
    buf.put_u16_le(record.flags);
    buf.put_u32_le(record.queue_id);
    buf.put_u64_le(queue_offset);
    buf.put_u64_le(record.born_timestamp_ms);
    buf.put_u64_le(stored_ms);
    buf.put_slice(record.message_id.as_bytes());
    put_str16(buf, Some(&record.topic));
    put_str16(buf, record.key.as_deref());
    put_str16(buf, record.tag.as_deref());
    buf.put_u16_le(record.properties.len() as u16);
    for (k, v) in &record.properties {
        put_str16(buf, Some(k));
        buf.put_u32_le(v.len() as u32);
        buf.put_slice(v.as_bytes());
    }
    buf.put_u32_le(record.body.len() as u32);
    buf.put_slice(&record.body);
    debug_assert_eq!(buf.len() - start, len);
    let crc = crc32c::crc32c(&buf[start + 8..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn put_str16(buf: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => {
            buf.put_u16_le(s.len() as u16);
            buf.put_slice(s.as_bytes());
        }
        None => buf.put_u16_le(ABSENT),
    }
}

/// What the first bytes at a position say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Header {
    /// Zeros: nothing was written here.
    Empty,
    /// The end-of-segment marker.
    EndOfSegment,
    /// A frame of this many bytes, not yet checked.
    Frame(usize),
    /// Not a valid frame start.
    Invalid(&'static str),
}

/// Interprets the first 8 bytes at a position; `room` is how many bytes remain in the segment.
pub(crate) fn peek_header(first8: &[u8], room: u64) -> Header {
    let len = u32::from_le_bytes(first8[0..4].try_into().unwrap());
    let second = u32::from_le_bytes(first8[4..8].try_into().unwrap());
    match len {
        0 if second == 0 => Header::Empty,
        0 => Header::Invalid("zero length with a non-zero checksum"),
        END_LEN if second == END_MAGIC => Header::EndOfSegment,
        l if (l as usize) < MIN_FRAME_SIZE => {
            Header::Invalid("length smaller than a record header")
        }
        l if u64::from(l) > room => Header::Invalid("length runs past the end of the segment"),
        l => Header::Frame(l as usize),
    }
}

/// Decodes one complete frame, checking its CRC and every length.
pub(crate) fn decode(
    frame: Bytes,
    log_position: u64,
) -> std::result::Result<StoredRecord, &'static str> {
    if frame.len() < MIN_FRAME_SIZE {
        return Err("frame shorter than a record header");
    }
    let mut b = frame.clone();
    let len = b.get_u32_le() as usize;
    if len != frame.len() {
        return Err("frame length does not match");
    }
    let crc = b.get_u32_le();
    if crc32c::crc32c(&frame[8..]) != crc {
        return Err("checksum mismatch");
    }
    if b.get_u16_le() != VERSION {
        return Err("unknown record format version");
    }
    let flags = b.get_u16_le();
    let queue_id = b.get_u32_le();
    let queue_offset = b.get_u64_le();
    let born_timestamp_ms = b.get_u64_le();
    let stored_timestamp_ms = b.get_u64_le();
    let mut id = [0u8; 16];
    b.copy_to_slice(&mut id);
    let topic = get_str16(&mut b)?.ok_or("missing topic")?;
    let key = get_str16(&mut b)?;
    let tag = get_str16(&mut b)?;
    let count = get_u16(&mut b)?;
    let mut properties = BTreeMap::new();
    for _ in 0..count {
        let k = get_str16(&mut b)?.ok_or("missing property name")?;
        let vlen = get_u32(&mut b)? as usize;
        let v = get_string(&mut b, vlen)?;
        properties.insert(k, v);
    }
    let body_len = get_u32(&mut b)? as usize;
    if b.remaining() != body_len {
        return Err("body length does not match the frame length");
    }
    Ok(StoredRecord {
        topic,
        queue_id,
        queue_offset,
        log_position,
        message_id: Uuid::from_bytes(id),
        key,
        tag,
        properties,
        body: b,
        born_timestamp_ms,
        stored_timestamp_ms,
        flags,
    })
}

fn get_u16(b: &mut Bytes) -> std::result::Result<u16, &'static str> {
    if b.remaining() < 2 {
        return Err("truncated record");
    }
    Ok(b.get_u16_le())
}

fn get_u32(b: &mut Bytes) -> std::result::Result<u32, &'static str> {
    if b.remaining() < 4 {
        return Err("truncated record");
    }
    Ok(b.get_u32_le())
}

fn get_str16(b: &mut Bytes) -> std::result::Result<Option<String>, &'static str> {
    let len = get_u16(b)?;
    if len == ABSENT {
        return Ok(None);
    }
    get_string(b, len as usize).map(Some)
}

fn get_string(b: &mut Bytes, len: usize) -> std::result::Result<String, &'static str> {
    if b.remaining() < len {
        return Err("truncated record");
    }
    String::from_utf8(b.split_to(len).to_vec()).map_err(|_| "string is not UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::error::StorageError;
    use proptest::prelude::*;

    fn sample() -> NewRecord {
        NewRecord::new("orders", 7, "payload")
            .with_key("k1")
            .with_tag("t")
            .with_property("a", "b")
    }

    fn encoded(record: &NewRecord) -> Bytes {
        let mut buf = BytesMut::new();
        encode(record, 42, 1_000, &mut buf);
        buf.freeze()
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let r = sample();
        let frame = encoded(&r);
        assert_eq!(frame.len(), r.encoded_len());
        let s = decode(frame, 99).unwrap();
        assert_eq!(
            (s.topic.as_str(), s.queue_id, s.queue_offset, s.log_position),
            ("orders", 7, 42, 99)
        );
        assert_eq!((s.key, s.tag), (r.key, r.tag));
        assert_eq!(s.properties, r.properties);
        assert_eq!(s.body, r.body);
        assert_eq!(s.message_id, r.message_id);
        assert_eq!(s.stored_timestamp_ms, 1_000);
        assert_eq!(s.born_timestamp_ms, r.born_timestamp_ms);
    }

    #[test]
    fn every_truncation_is_rejected() {
        let frame = encoded(&sample());
        for cut in 0..frame.len() {
            assert!(decode(frame.slice(..cut), 0).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn every_flipped_bit_is_rejected() {
        let frame = encoded(&sample());
        for bit in 0..frame.len() * 8 {
            let mut bad = frame.to_vec();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(Bytes::from(bad), 0).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn headers_are_classified() {
        assert_eq!(peek_header(&[0; 8], 100), Header::Empty);
        let mut marker = END_LEN.to_le_bytes().to_vec();
        marker.extend_from_slice(&END_MAGIC.to_le_bytes());
        assert_eq!(peek_header(&marker, 100), Header::EndOfSegment);
        assert!(matches!(
            peek_header(&[5, 0, 0, 0, 1, 0, 0, 0], 100),
            Header::Invalid(_)
        ));
        let frame = encoded(&sample());
        assert_eq!(peek_header(&frame[..8], 10_000), Header::Frame(frame.len()));
        assert!(matches!(peek_header(&frame[..8], 10), Header::Invalid(_)));
    }

    #[test]
    fn limits_are_checked() {
        let r = sample();
        assert!(matches!(
            r.check(10),
            Err(StorageError::RecordTooLarge { limit: 10, .. })
        ));
        let empty_topic = NewRecord::new("", 0, "x");
        assert!(matches!(
            empty_topic.check(1 << 20),
            Err(StorageError::InvalidRecord(_))
        ));
    }

    proptest! {
        #[test]
        fn round_trip(
            topic in "[a-z]{1,20}",
            queue_id in any::<u32>(),
            queue_offset in any::<u64>(),
            key in proptest::option::of(".{0,20}"),
            tag in proptest::option::of(".{0,10}"),
            properties in proptest::collection::btree_map(".{0,8}", ".{0,16}", 0..4),
            body in proptest::collection::vec(any::<u8>(), 0..512),
            born in any::<u64>(),
            stored in any::<u64>(),
            flags in any::<u16>(),
            id in any::<u128>(),
        ) {
            let r = NewRecord {
                topic, queue_id, message_id: Uuid::from_u128(id), key, tag, properties,
                body: Bytes::from(body), born_timestamp_ms: born, flags,
            };
            prop_assert!(r.check(u32::MAX).is_ok());
            let mut buf = BytesMut::new();
            encode(&r, queue_offset, stored, &mut buf);
            let s = decode(buf.freeze(), 5).unwrap();
            prop_assert_eq!(s.encoded_len(), r.encoded_len());
            prop_assert_eq!(s.topic, r.topic);
            prop_assert_eq!(s.queue_offset, queue_offset);
            prop_assert_eq!(s.key, r.key);
            prop_assert_eq!(s.tag, r.tag);
            prop_assert_eq!(s.properties, r.properties);
            prop_assert_eq!(s.body, r.body);
            prop_assert_eq!(s.message_id, r.message_id);
            prop_assert_eq!((s.born_timestamp_ms, s.stored_timestamp_ms, s.flags), (born, stored, flags));
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(Bytes::from(data.clone()), 0);
            if data.len() >= 8 {
                let _ = peek_header(&data[..8], 1 << 20);
            }
        }
    }
}
