//! The checks of the `record` fuzz target (issue 16), shared with the corpus test
//! (`broker-lite/tests/fuzz_record_corpus.rs`) so that both run the same code: the storage
//! record decoder never panics, a frame it accepts encodes back to a frame that decodes to the
//! same record, and any input whose length and checksum are made valid reaches the field
//! parsing (random bytes would almost never get past the CRC).

use broker_lite::storage::fuzzing::{decode_record, encode_record};
use broker_lite::storage::{NewRecord, StoredRecord};
use bytes::Bytes;

/// Length (4 bytes) and CRC32C (4 bytes) lead every frame.
const SEALED: usize = 8;

/// Runs every check on `input`; panics when one fails.
pub(crate) fn check(input: &[u8]) {
    let _ = decode_record(Bytes::copy_from_slice(input));
    if input.len() < SEALED || input.len() > u32::MAX as usize {
        return;
    }
    let mut frame = input.to_vec();
    let len = frame.len() as u32;
    frame[..4].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c(&frame[SEALED..]);
    frame[4..SEALED].copy_from_slice(&crc.to_le_bytes());
    if let Ok(record) = decode_record(Bytes::from(frame)) {
        round_trip(&record);
    }
}

fn round_trip(record: &StoredRecord) {
    let mut new = NewRecord::new(record.topic.clone(), record.queue_id, record.body.clone());
    new.message_id = record.message_id;
    new.key = record.key.clone();
    new.tag = record.tag.clone();
    new.properties = record.properties.clone();
    new.born_timestamp_ms = record.born_timestamp_ms;
    new.flags = record.flags;
    let again = decode_record(encode_record(
        &new,
        record.queue_offset,
        record.stored_timestamp_ms,
    ))
    .expect("a decoded record encodes to a frame that decodes");
    assert_eq!(&again, record, "a decoded record survives encoding");
}
