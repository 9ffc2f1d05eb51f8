//! Where the log ends on open: telling a torn tail from damage inside the log, and not trusting
//! what follows a failed fsync.
//!
//! # Torn tail or damage
//!
//! The durable position in the store checkpoint lags behind the fsyncs (it is checkpointed every
//! `checkpoint_interval`, not after every fsync), so records above it may well have been
//! acknowledged as durable. A scan that stops above it is therefore only cut when the stop is a
//! *true torn tail*: the partly written end of the last writes, after which nothing holds a
//! record. [`check_torn_tail`] asks two things:
//! - every later segment file is unwritten (its first chunk is zeros): the writer fills segments in
//!   order and, under sync flush, fsyncs the end of a segment before it writes into the next one,
//!   so data in a later segment means the stop is in durable data, not at the end of the log;
//! - no valid record (length, version, checksum) starts anywhere after the stop in its segment.
//!   A flipped bit in the middle of the log leaves the next record intact, and this finds it.
//!
//! Anything else is refused with [`StorageError::Corrupt`] naming the segment file and the offset,
//! and saying how to drop the log from there by hand if the operator decides to. For a stop at
//! zeros (the normal end of the log), only the rest of the first chunk is checked, so an ordinary
//! open does not read a whole preallocated segment.
//!
//! These checks apply under [`FlushMode::Sync`]: the writer fsyncs each batch before it writes the
//! next, so a power cut can only tear the last write, and valid records after a bad one prove
//! damage. Under [`FlushMode::Async`] many writes are unsynced at once and the disk may persist a
//! later one without an earlier one; records after a hole are then the normal result of a power
//! cut, inside the documented loss window, and the tail is cut as before (with a warning). The
//! checks follow the flush mode of the open, not of the run that wrote the log.
//!
//! # After a failed fsync ("fsyncgate")
//!
//! When an fsync fails the kernel may have dropped the dirty pages or marked them clean: the page
//! cache can show records the disk never got, and a later fsync can report success. A restart of
//! the broker alone would read those records back, find them valid and serve them as durable. So
//! the failing store writes its checkpoint with a *fence* (at once, and again with every later
//! command, on close and on drop, until the disk takes it): the durable position is exactly the
//! last successful fsync, and the next open cuts the log there without looking at what follows.
//! Cutting truncates the files, which also drops their stale cached pages. Nothing acknowledged
//! `Flushed` is lost (it is all below the fence); records answered `InMemory` after the last
//! fsync are, as with a power cut. If the disk never takes the fence, the operator restarting the
//! broker is told by the store's failure error to inspect the disk first.

use super::codec::{self, Header, MIN_FRAME_SIZE, VERSION};
use super::config::{FlushMode, StoreConfig};
use super::error::{Result, StorageError};
use super::recovery::{SCAN_CHUNK, Scanner};
use super::segment::Segment;

/// `Ok` when the scan stop at log position `pos` of `segments[i]` is a true torn tail (see the
/// module docs); `reason` says why the scan stopped.
pub(super) fn check_torn_tail(
    segments: &[Segment],
    i: usize,
    pos: u64,
    reason: &str,
    config: &StoreConfig,
) -> Result<()> {
    if config.flush_mode != FlushMode::Sync {
        return Ok(());
    }
    let segment = &segments[i];
    let offset = pos - segment.base;
    let refuse = |why: String| StorageError::Corrupt {
        segment: segment.name.clone(),
        offset,
        position: pos,
        reason: format!(
            "{reason}, {why}, so this is damage inside the log, not a torn tail; to drop the log \
             from here (losing every record after it), truncate segment file {} to {offset} bytes \
             and remove the segment files after it",
            segment.name
        ),
    };
    for later in &segments[i + 1..] {
        if !zero_chunk(later, 0)? {
            return Err(refuse(format!(
                "but the later segment file {} holds data",
                later.name
            )));
        }
    }
    if zero_chunk(segment, offset)? {
        return Ok(());
    }
    match find_record(segment, pos + 1, config.max_record_size as usize)? {
        Some(at) => Err(refuse(format!(
            "but a valid record follows at offset {}",
            at - segment.base
        ))),
        None => Ok(()),
    }
}

/// Whether the chunk of `segment` from `offset` on holds only zeros.
fn zero_chunk(segment: &Segment, offset: u64) -> Result<bool> {
    let len = (segment.size - offset).min(SCAN_CHUNK) as usize;
    if len == 0 {
        return Ok(true);
    }
    let bytes = segment.read(segment.base + offset, len)?;
    Ok(bytes.iter().all(|b| *b == 0))
}

/// The log position of the first valid record of at most `max_len` bytes that starts at or after
/// `from` in `segment`.
fn find_record(segment: &Segment, from: u64, max_len: usize) -> Result<Option<u64>> {
    let end = segment.end();
    let mut scanner = Scanner::new(segment);
    let mut q = from;
    while q < end && end - q >= MIN_FRAME_SIZE as u64 {
        // Skip zeros fast: a frame's non-zero length has a non-zero byte among its first four.
        let rest = scanner.rest(q)?;
        match rest.iter().position(|b| *b != 0) {
            None => {
                q += rest.len() as u64;
                continue;
            }
            Some(k) if k > 3 => {
                q += (k - 3) as u64;
                continue;
            }
            Some(_) => {}
        }
        let head = scanner.get(q, 8)?;
        if let Header::Frame(len) = codec::peek_header(&head, end - q) {
            // Cheap checks first; the checksum decides.
            if len <= max_len && scanner.get(q + 8, 2)?[..] == VERSION.to_le_bytes() {
                let frame = scanner.get(q, len)?;
                if codec::decode(frame, q).is_ok() {
                    return Ok(Some(q));
                }
            }
        }
        q += 1;
    }
    Ok(None)
}
