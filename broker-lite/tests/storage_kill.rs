//! A real `kill -9` of a process appending under sync flush: every append that was acknowledged
//! `Flushed` before the kill is in the log afterwards, intact, at its queue offset.
//!
//! The test runs its own binary again as the child (selected by an environment variable).

use std::time::Duration;

use broker_lite::storage::{FlushOutcome, NewRecord, Store, StoreConfig};

mod storage_common;

const CHILD_DIR: &str = "BROKER_LITE_KILL_TEST_DIR";
const TEST_NAME: &str = "kill_9_loses_no_acknowledged_record";

fn config() -> StoreConfig {
    let mut c = StoreConfig::default();
    c.segment_size = 256 * 1024;
    c.max_record_size = 16 * 1024;
    c.checkpoint_interval = Duration::from_millis(5);
    c
}

/// The child: four producers append until killed (or 20 000 records, as a safety bound).
fn child(dir: &str) {
    storage_common::append_until_killed(dir, config(), |q, i| {
        let body = format!("q{q} i{i} {}", "x".repeat((i % 2000) as usize));
        NewRecord::new("kill", q, body)
    });
}

#[test]
fn kill_9_loses_no_acknowledged_record() -> anyhow::Result<()> {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        child(&dir);
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let mut acked = Vec::new();
    for f in storage_common::acks_before_kill(TEST_NAME, CHILD_DIR, dir.path(), 400)? {
        acked.push((f[0].parse::<u32>()?, f[1].parse::<u64>()?, f[2].clone()));
    }

    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let store = Store::open(dir.path(), config()).await?;
        for (q, offset, id) in &acked {
            let got = store.read_queue("kill", *q, *offset, 1, usize::MAX).await?;
            assert_eq!(got[0].queue_offset, *offset);
            assert_eq!(got[0].message_id.to_string(), *id);
        }
        // And the log keeps going.
        let a = store.append(NewRecord::new("kill", 0, "after")).await?;
        assert_eq!(a.outcome, FlushOutcome::Flushed);
        anyhow::Ok(())
    })
}
