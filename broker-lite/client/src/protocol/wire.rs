//! Primitive encoders and checked decoders for command bodies.
//!
//! Every read checks the remaining length first, so truncated or garbage input
//! yields a [`DecodeError`] instead of a panic. Counts are never trusted for
//! preallocation beyond what the remaining bytes could hold.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use uuid::Uuid;

use super::error::DecodeError;

/// Appends a length-prefixed (u32) UTF-8 string.
pub(crate) fn put_str(buf: &mut BytesMut, s: &str) {
    put_bytes(buf, s.as_bytes());
}

/// Appends length-prefixed (u32) bytes.
pub(crate) fn put_bytes(buf: &mut BytesMut, b: &[u8]) {
    buf.put_u32(b.len() as u32);
    buf.put_slice(b);
}

/// Appends a presence byte and, when present, the string.
pub(crate) fn put_opt_str(buf: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => {
            buf.put_u8(1);
            put_str(buf, s);
        }
        None => buf.put_u8(0),
    }
}

/// Appends a map as a u32 count and key/value string pairs.
pub(crate) fn put_map(buf: &mut BytesMut, map: &BTreeMap<String, String>) {
    buf.put_u32(map.len() as u32);
    for (k, v) in map {
        put_str(buf, k);
        put_str(buf, v);
    }
}

/// Appends a UUID as 16 bytes.
pub(crate) fn put_uuid(buf: &mut BytesMut, id: &Uuid) {
    buf.put_slice(id.as_bytes());
}

/// Appends a list as a u32 count followed by each item.
pub(crate) fn put_list<T>(buf: &mut BytesMut, items: &[T], mut put: impl FnMut(&mut BytesMut, &T)) {
    buf.put_u32(items.len() as u32);
    for item in items {
        put(buf, item);
    }
}

fn need(buf: &Bytes, n: usize, what: &'static str) -> Result<(), DecodeError> {
    if buf.remaining() < n {
        Err(DecodeError::Truncated(what))
    } else {
        Ok(())
    }
}

/// Reads a u8.
pub(crate) fn get_u8(buf: &mut Bytes, what: &'static str) -> Result<u8, DecodeError> {
    need(buf, 1, what)?;
    Ok(buf.get_u8())
}

/// Reads a big-endian u16.
pub(crate) fn get_u16(buf: &mut Bytes, what: &'static str) -> Result<u16, DecodeError> {
    need(buf, 2, what)?;
    Ok(buf.get_u16())
}

/// Reads a big-endian u32.
pub(crate) fn get_u32(buf: &mut Bytes, what: &'static str) -> Result<u32, DecodeError> {
    need(buf, 4, what)?;
    Ok(buf.get_u32())
}

/// Reads a big-endian u64.
pub(crate) fn get_u64(buf: &mut Bytes, what: &'static str) -> Result<u64, DecodeError> {
    need(buf, 8, what)?;
    Ok(buf.get_u64())
}

/// Reads a boolean byte (0 or 1).
pub(crate) fn get_bool(buf: &mut Bytes, what: &'static str) -> Result<bool, DecodeError> {
    match get_u8(buf, what)? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::Invalid(what)),
    }
}

/// Reads length-prefixed (u32) bytes without copying.
pub(crate) fn get_bytes(buf: &mut Bytes, what: &'static str) -> Result<Bytes, DecodeError> {
    let len = get_u32(buf, what)? as usize;
    need(buf, len, what)?;
    Ok(buf.split_to(len))
}

/// Reads a length-prefixed UTF-8 string.
pub(crate) fn get_str(buf: &mut Bytes, what: &'static str) -> Result<String, DecodeError> {
    let bytes = get_bytes(buf, what)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::Utf8(what))
}

/// Reads a presence byte and, when present, a string.
pub(crate) fn get_opt_str(
    buf: &mut Bytes,
    what: &'static str,
) -> Result<Option<String>, DecodeError> {
    if get_bool(buf, what)? {
        Ok(Some(get_str(buf, what)?))
    } else {
        Ok(None)
    }
}

/// Reads a presence byte and, when present, a u32.
pub(crate) fn get_opt_u32(buf: &mut Bytes, what: &'static str) -> Result<Option<u32>, DecodeError> {
    if get_bool(buf, what)? {
        Ok(Some(get_u32(buf, what)?))
    } else {
        Ok(None)
    }
}

/// Appends a presence byte and, when present, a u32.
pub(crate) fn put_opt_u32(buf: &mut BytesMut, v: Option<u32>) {
    match v {
        Some(v) => {
            buf.put_u8(1);
            buf.put_u32(v);
        }
        None => buf.put_u8(0),
    }
}

/// Reads a presence byte and, when present, a u64.
pub(crate) fn get_opt_u64(buf: &mut Bytes, what: &'static str) -> Result<Option<u64>, DecodeError> {
    if get_bool(buf, what)? {
        Ok(Some(get_u64(buf, what)?))
    } else {
        Ok(None)
    }
}

/// Appends a presence byte and, when present, a u64.
pub(crate) fn put_opt_u64(buf: &mut BytesMut, v: Option<u64>) {
    match v {
        Some(v) => {
            buf.put_u8(1);
            buf.put_u64(v);
        }
        None => buf.put_u8(0),
    }
}

/// Reads a UUID (16 bytes).
pub(crate) fn get_uuid(buf: &mut Bytes, what: &'static str) -> Result<Uuid, DecodeError> {
    need(buf, 16, what)?;
    let mut raw = [0u8; 16];
    buf.copy_to_slice(&mut raw);
    Ok(Uuid::from_bytes(raw))
}

/// Reads a count, checking that `min_item_size` bytes per item could follow.
pub(crate) fn get_count(
    buf: &mut Bytes,
    min_item_size: usize,
    what: &'static str,
) -> Result<usize, DecodeError> {
    let count = get_u32(buf, what)? as usize;
    if count.saturating_mul(min_item_size.max(1)) > buf.remaining() {
        return Err(DecodeError::Truncated(what));
    }
    Ok(count)
}

/// Reads a map of strings.
pub(crate) fn get_map(
    buf: &mut Bytes,
    what: &'static str,
) -> Result<BTreeMap<String, String>, DecodeError> {
    let count = get_count(buf, 8, what)?;
    let mut map = BTreeMap::new();
    for _ in 0..count {
        let k = get_str(buf, what)?;
        let v = get_str(buf, what)?;
        map.insert(k, v);
    }
    Ok(map)
}

/// Reads a list of items with `get`; `min_item_size` bounds the count by the bytes left.
pub(crate) fn get_list<T>(
    buf: &mut Bytes,
    min_item_size: usize,
    what: &'static str,
    mut get: impl FnMut(&mut Bytes) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    let count = get_count(buf, min_item_size, what)?;
    let mut items = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        items.push(get(buf)?);
    }
    Ok(items)
}
