//! Opening the index files: what to trust, what to rebuild from the log.
//!
//! The store checkpoint records how far the index files were written and fsynced (a log position
//! `P`, each queue's entry count, each id index file's entry count, each segment's newest stored
//! timestamp). An open trusts the files below `min(P, durable)` and rebuilds the rest from the log
//! tail: the recovery scan starts there instead of at the first segment. Damage lowers that start:
//! a queue whose files hold fewer valid entries than the checkpoint says (a truncated file, a torn
//! or garbage entry, a removed file) is rebuilt from just past its last valid entry, or from the
//! first segment when nothing of it is left; a missing or damaged id index file from its last valid
//! entry or its segment's start; a segment the checkpoint does not know from its start. A
//! checkpoint written before the index files existed rebuilds them from the whole log.
//!
//! Everything at or past the start is cut from the files before the scan writes it again, so an
//! entry from the files and one from the scan never overlap and nothing is indexed twice.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::backend::StorageBackend;
use super::checkpoint::StoreCheckpoint;
use super::config::StoreConfig;
use super::error::{Result, StorageError};
use super::id_index::{self, IdFile, IdIndex};
use super::index::{Index, QueueIndex, QueueState};
use super::queue_files::{self, QueueFiles};
use super::segment::Segment;

/// The index as far as it is trusted, and the log position from which the scan rebuilds it.
pub(crate) struct Opened {
    pub(crate) index: Index,
    pub(crate) start: u64,
}

struct Candidate<'a> {
    state: &'a QueueState,
    files: QueueFiles,
    floor: u64,
    /// Entries `floor..valid` are present and the last of them is valid.
    valid: u64,
}

pub(crate) fn open(
    backend: &Arc<dyn StorageBackend>,
    config: &StoreConfig,
    checkpoint: &StoreCheckpoint,
    segments: &[Segment],
    names: &[String],
) -> Result<Opened> {
    let first_base = segments[0].base;
    let ckpt = checkpoint.index.clone().unwrap_or_default();
    let mut start = match &checkpoint.index {
        Some(ix) => ix.position.min(checkpoint.durable),
        None => first_base,
    }
    .max(first_base);
    let known: HashMap<u64, (u64, u32)> = ckpt
        .segments
        .iter()
        .map(|(b, n, c)| (*b, (*n, *c)))
        .collect();
    for s in segments {
        if s.base >= start {
            break;
        }
        match known.get(&s.base) {
            Some((newest, _)) => s.note_stored(*newest),
            None => start = start.min(s.base),
        }
    }

    // Queue files: drop those of queues the checkpoint does not know (created after it).
    let registry: HashSet<u64> = ckpt.queues.iter().map(|q| q.number).collect();
    let mut by_number: HashMap<u64, Vec<u64>> = HashMap::new();
    for name in names {
        if let Some((number, first)) = queue_files::parse_file_name(name) {
            if registry.contains(&number) {
                by_number.entry(number).or_default().push(first);
            } else {
                remove(backend, name);
            }
        }
    }
    let floors: HashMap<(&str, u32), u64> = checkpoint
        .floors
        .iter()
        .map(|(t, q, m)| ((t.as_str(), *q), *m))
        .collect();
    let mut queues = Vec::with_capacity(ckpt.queues.len());
    for state in &ckpt.queues {
        let floor = floors
            .get(&(state.topic.as_str(), state.queue_id))
            .copied()
            .unwrap_or(0);
        let mut files = QueueFiles::new(state.number, config.index_file_entries);
        for first in by_number.remove(&state.number).unwrap_or_default() {
            files.attach(&**backend, first)?;
        }
        let expected = state.next.max(floor);
        let mut valid = floor + files.present(floor).min(expected - floor);
        while valid > floor && files.try_read(valid - 1).is_none() {
            valid -= 1;
        }
        if valid < expected {
            let from = match valid > floor {
                true => files.try_read(valid - 1).map_or(first_base, |e| e.end()),
                false => first_base,
            };
            tracing::warn!(topic = %state.topic, queue_id = state.queue_id, valid, expected,
                from, "queue index files are short or damaged; rebuilding them from the log");
            start = start.min(from);
        }
        queues.push(Candidate {
            state,
            files,
            floor,
            valid,
        });
    }

    // Id index files: lower the start until every file below it is there and whole.
    let live: HashSet<u64> = segments.iter().map(|s| s.base).collect();
    for name in names {
        if id_index::parse_file_name(name).is_some_and(|b| !live.contains(&b)) {
            remove(backend, name);
        }
    }
    loop {
        let before = start;
        for s in segments {
            if s.base >= start {
                break;
            }
            let expected = known.get(&s.base).map_or(0, |k| k.1);
            let Some((file, _)) = IdFile::open(&**backend, s.base) else {
                tracing::warn!(segment = %s.name, "id index file missing or damaged; rebuilding it");
                start = start.min(s.base);
                break;
            };
            let mut valid = file.count.min(expected);
            while valid > 0 && file.entry(valid - 1).is_none() {
                valid -= 1;
            }
            if valid < expected {
                let from = match valid {
                    0 => s.base,
                    n => file.entry(n - 1).map_or(s.base, |e| e.position),
                };
                tracing::warn!(segment = %s.name, valid, expected, from,
                    "id index file is short or damaged; rebuilding it from the log");
                start = start.min(from);
            }
        }
        if start == before {
            break;
        }
    }
    let mut id_files = Vec::new();
    let mut dirty = Vec::new();
    for s in segments {
        if s.base >= start {
            remove(backend, &id_index::file_name(s.base));
            continue;
        }
        let (mut file, sealed) = IdFile::open(&**backend, s.base).ok_or_else(|| {
            StorageError::Inconsistent(format!(
                "the id index file of segment {} cannot be opened again",
                s.name
            ))
        })?;
        if sealed && s.end() < start {
            id_files.push(file);
            continue;
        }
        let (mut lo, mut hi) = (0u32, file.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match file.entry(mid) {
                Some(e) if e.position < start => lo = mid + 1,
                _ => hi = mid,
            }
        }
        file.reopen_active(lo)?;
        if s.end() < start {
            file.seal(&mut dirty)?;
        }
        id_files.push(file);
    }

    let slots = id_index::slots_for(config.segment_size);
    let ids = IdIndex::new(backend.clone(), slots, id_files);
    let mut index = Index::new(
        backend.clone(),
        config.index_file_entries,
        config.index_cache_entries,
        ids,
    );
    for c in queues {
        let mut files = c.files;
        let trusted = files.partition(c.floor, c.valid, start)?;
        files.truncate(&**backend, trusted)?;
        let from = trusted
            .saturating_sub(config.index_cache_entries as u64)
            .max(c.floor);
        let tail = files.read(from, (trusted - from) as usize)?;
        let mut q = QueueIndex::new(files, c.floor);
        q.next = trusted;
        q.written = trusted;
        q.tail = tail.into();
        index.insert(&c.state.topic, c.state.queue_id, q);
    }
    index.written_through = start;
    index.ids.dirty = dirty;
    Ok(Opened { index, start })
}

fn remove(backend: &Arc<dyn StorageBackend>, name: &str) {
    if let Err(e) = backend.remove(name) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(file = name, error = %e, "could not remove a stale index file");
        }
    }
}
