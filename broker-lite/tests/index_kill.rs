//! A real `kill -9` of a process appending keyed records under sync flush, with index checkpoints
//! every few milliseconds: after the restart every acknowledged record is readable at its queue
//! offset, by id and by key, and no queue holds a record twice.
//!
//! The test runs its own binary again as the child (selected by an environment variable).

use std::collections::HashSet;
use std::time::Duration;

use broker_lite::storage::{FlushOutcome, NewRecord, Store, StoreConfig};

mod storage_common;

const CHILD_DIR: &str = "BROKER_LITE_INDEX_KILL_DIR";
const TEST_NAME: &str = "kill_9_mid_write_keeps_every_index_entry";

fn config() -> StoreConfig {
    let mut c = StoreConfig::default();
    c.segment_size = 256 * 1024;
    c.max_record_size = 16 * 1024;
    c.checkpoint_interval = Duration::from_millis(5);
    c.index_file_entries = 64;
    c.index_cache_entries = 8;
    c
}

/// The child: four producers append until killed (or 20 000 records, as a safety bound).
fn child(dir: &str) {
    storage_common::append_until_killed(dir, config(), |q, i| {
        let body = format!("q{q} i{i} {}", "x".repeat((i % 1500) as usize));
        NewRecord::new("kill", q, body).with_key(format!("k{}", i % 5))
    });
}

#[test]
fn kill_9_mid_write_keeps_every_index_entry() -> anyhow::Result<()> {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        child(&dir);
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let mut acked = Vec::new();
    for f in storage_common::acks_before_kill(TEST_NAME, CHILD_DIR, dir.path(), 1200)? {
        let (q, offset) = (f[0].parse::<u32>()?, f[1].parse::<u64>()?);
        acked.push((q, offset, f[2].clone(), f[3].clone()));
    }

    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let store = Store::open(dir.path(), config()).await?;
        for (q, offset, id, _) in &acked {
            let got = store.read_queue("kill", *q, *offset, 1, usize::MAX).await?;
            assert_eq!(got[0].queue_offset, *offset);
            assert_eq!(got[0].message_id.to_string(), *id);
            let found = store.find_by_id(got[0].message_id).await?.expect("by id");
            assert_eq!((found.queue_id, found.queue_offset), (*q, *offset));
        }
        for q in 0..4 {
            let all = store
                .read_queue("kill", q, 0, usize::MAX, usize::MAX)
                .await?;
            let ids: HashSet<_> = all.iter().map(|r| r.message_id).collect();
            assert_eq!(ids.len(), all.len(), "queue {q} holds a record twice");
            let bounds = store.queue_bounds("kill", q).unwrap();
            assert_eq!(bounds.max, all.len() as u64);
        }
        let keyed = store.find_by_key("kill", "k2", usize::MAX).await?;
        let keyed: HashSet<String> = keyed.iter().map(|r| r.message_id.to_string()).collect();
        for (_, _, id, key) in &acked {
            if key == "k2" {
                assert!(keyed.contains(id), "{id} not found by its key");
            }
        }
        let a = store.append(NewRecord::new("kill", 0, "after")).await?;
        assert_eq!(a.outcome, FlushOutcome::Flushed);
        anyhow::Ok(())
    })
}
