//! Crash repair of the index files: whatever happened to them (index writes lost in a crash while
//! the log was fsynced, a truncated file, a garbage tail, removed files), the next open rebuilds
//! them from the log, and every acknowledged record is readable by queue offset, by id and by key,
//! exactly once, with offsets continuing where they were.

use std::path::Path;
use std::time::SystemTime;

use broker_lite::storage::backend::FaultyBackend;
use broker_lite::storage::{NewRecord, QueueBounds, Store, StoreConfig};
use uuid::Uuid;

mod storage_common;

use storage_common::open;

const QUEUES: u32 = 3;

/// Small segments and index files of 32 entries, so that every queue has several.
fn config() -> StoreConfig {
    let mut c = storage_common::config();
    c.index_file_entries = 32;
    c.index_cache_entries = 4;
    c
}

fn rec(i: u64) -> NewRecord {
    NewRecord::new(
        "t",
        (i % u64::from(QUEUES)) as u32,
        format!("m{i} {}", "y".repeat(300)),
    )
    .with_key(format!("key-{}", i % 7))
}

/// (queue, queue offset, id) of every acknowledged record.
type Acked = Vec<(u32, u64, Uuid)>;

async fn append(store: &Store, from: u64, to: u64, acked: &mut Acked) -> anyhow::Result<()> {
    for i in from..to {
        let r = rec(i);
        let (q, id) = (r.queue_id, r.message_id);
        let a = store.append(r).await?;
        acked.push((q, a.queue_offset, id));
    }
    Ok(())
}

/// Every acknowledged record once at its offset, found by id and by key; nothing else in the
/// queues; and the next append continues the offsets.
async fn check(store: &Store, acked: &Acked, what: &str) -> anyhow::Result<()> {
    for q in 0..QUEUES {
        let mine: Vec<&(u32, u64, Uuid)> = acked.iter().filter(|a| a.0 == q).collect();
        assert_eq!(
            store.queue_bounds("t", q),
            Some(QueueBounds {
                min: 0,
                max: mine.len() as u64
            }),
            "{what}: queue {q}"
        );
        let all = store.read_queue("t", q, 0, usize::MAX, usize::MAX).await?;
        let ids: Vec<Uuid> = all.iter().map(|r| r.message_id).collect();
        let want: Vec<Uuid> = mine.iter().map(|a| a.2).collect();
        assert_eq!(ids, want, "{what}: queue {q} by offset");
    }
    for (q, offset, id) in acked {
        let r = store.find_by_id(*id).await?;
        assert_eq!(
            r.map(|r| (r.queue_id, r.queue_offset)),
            Some((*q, *offset)),
            "{what}: id {id}"
        );
    }
    let by_key = store.find_by_key("t", "key-3", usize::MAX).await?;
    assert_eq!(
        by_key.len(),
        acked.len() / 7 + usize::from(acked.len() % 7 > 3),
        "{what}: by key"
    );
    let mut seen: Vec<Uuid> = by_key.iter().map(|r| r.message_id).collect();
    seen.dedup();
    assert_eq!(
        seen.len(),
        by_key.len(),
        "{what}: a key lists a record twice"
    );
    Ok(())
}

fn files(dir: &Path, prefix: &str) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut out: Vec<_> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    out.retain(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(prefix))
    });
    out.sort();
    Ok(out)
}

fn garbage_tail(path: &Path, bytes: usize) -> anyhow::Result<()> {
    let mut data = std::fs::read(path)?;
    let n = data.len();
    for (k, b) in data[n.saturating_sub(bytes)..].iter_mut().enumerate() {
        *b = (k as u8).wrapping_mul(37).wrapping_add(11);
    }
    std::fs::write(path, data)?;
    Ok(())
}

fn remove_all(dir: &Path, prefix: &str) -> anyhow::Result<()> {
    for p in files(dir, prefix)? {
        std::fs::remove_file(p)?;
    }
    Ok(())
}

fn cut(path: &Path, keep: u64) -> anyhow::Result<()> {
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.set_len(keep)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_that_loses_the_index_writes_loses_no_record() -> anyhow::Result<()> {
    let backend = FaultyBackend::new();
    let store = open(&backend, config()).await?;
    let mut acked = Vec::new();
    append(&store, 0, 150, &mut acked).await?;
    store.close().await?;
    // Past the checkpoint of the close: the log is fsynced with every append, the index files
    // are not (the hourly checkpoint never comes), and the crash loses their writes.
    let store = open(&backend, config()).await?;
    append(&store, 150, 320, &mut acked).await?;
    let after = backend.crash();
    drop(store);
    let store = open(&after, config()).await?;
    check(&store, &acked, "after the crash").await?;
    let a = store.append(rec(320)).await?;
    assert_eq!(
        a.queue_offset,
        acked.iter().filter(|x| x.0 == 2).count() as u64
    );
    Ok(())
}

#[tokio::test]
async fn damaged_or_removed_index_files_are_rebuilt_from_the_log() -> anyhow::Result<()> {
    type Damage = fn(&Path) -> anyhow::Result<()>;
    let damages: [(&str, Damage); 6] = [
        ("a queue index file cut mid-entry", |d| {
            cut(&files(d, "cq")?[0], 5 * 16 + 7)
        }),
        ("the last queue index file with a garbage tail", |d| {
            garbage_tail(files(d, "cq")?.last().unwrap(), 40)
        }),
        ("every queue index file removed", |d| remove_all(d, "cq")),
        ("the first id index file cut", |d| {
            let f = &files(d, "ix")?[0];
            cut(f, std::fs::metadata(f)?.len() / 2)
        }),
        ("the last id index file with a garbage tail", |d| {
            garbage_tail(files(d, "ix")?.last().unwrap(), 50)
        }),
        ("every id index file removed", |d| remove_all(d, "ix")),
    ];
    for (what, damage) in damages {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path(), config()).await?;
        let mut acked = Vec::new();
        append(&store, 0, 400, &mut acked).await?;
        store.close().await?;
        assert!(files(dir.path(), "cq")?.len() > QUEUES as usize, "{what}");
        assert!(files(dir.path(), "ix")?.len() > 2, "{what}");
        damage(dir.path())?;

        let store = Store::open(dir.path(), config()).await?;
        check(&store, &acked, what).await?;
        append(&store, 400, 450, &mut acked).await?;
        store.close().await?;
        let store = Store::open(dir.path(), config()).await?;
        check(&store, &acked, &format!("{what}, reopened")).await?;
        store.close().await?;
    }
    Ok(())
}

#[tokio::test]
async fn retention_removes_the_index_files_of_removed_records() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut c = config();
    c.max_disk_usage = Some(3 * c.segment_size);
    let store = Store::open(dir.path(), c.clone()).await?;
    let mut acked = Vec::new();
    append(&store, 0, 600, &mut acked).await?;
    let before = files(dir.path(), "cq")?.len();
    let report = store.enforce_retention(SystemTime::now()).await?;
    assert!(!report.advanced.is_empty());
    assert!(files(dir.path(), "cq")?.len() < before);
    for a in &report.advanced {
        let got = store.read_queue("t", a.queue_id, 0, 1, usize::MAX).await?;
        assert_eq!(got[0].queue_offset, a.new_min);
    }
    store.close().await?;
    // Reopened, the queues start where retention left them.
    let store = Store::open(dir.path(), c).await?;
    for a in &report.advanced {
        assert_eq!(store.queue_bounds("t", a.queue_id).unwrap().min, a.new_min);
    }
    Ok(())
}

#[tokio::test]
async fn a_failed_index_fsync_still_lets_the_checkpoint_through() -> anyhow::Result<()> {
    let backend = FaultyBackend::new();
    let store = open(&backend, config()).await?;
    let mut acked = Vec::new();
    append(&store, 0, 120, &mut acked).await?;
    // The index files are derived data: a disk that refuses their fsync must not keep the log's
    // checkpoint (nor, after a failure, its fence) from being written.
    backend.fail_sync_of(Some("ix00000000000000000000"));
    store.close().await?;
    backend.fail_sync_of(None);
    let after = backend.crash();
    let store = open(&after, config()).await?;
    check(&store, &acked, "after a failed index fsync and a crash").await?;
    Ok(())
}
