//! The store set-up the storage crash and tail tests share: small segments, a fault-injecting
//! backend, and a checkpoint that stays where the open put it (so every record written by a test is
//! above the durable position).

#![allow(dead_code, unreachable_pub)] // each test binary uses a part of it

use std::sync::Arc;
use std::time::Duration;

use broker_lite::storage::backend::FaultyBackend;
use broker_lite::storage::{FlushMode, StorageError, Store, StoreConfig};

/// The name of the log's first segment file.
pub const FIRST_SEGMENT: &str = "00000000000000000000";

/// SYNC_FLUSH, 64 KiB segments, records up to 16 KiB, an hourly checkpoint.
pub fn config() -> StoreConfig {
    let mut c = StoreConfig::default();
    c.segment_size = 64 * 1024;
    c.max_record_size = 16 * 1024;
    c.checkpoint_interval = Duration::from_secs(3600);
    c
}

/// [`config`] under ASYNC_FLUSH with an hourly flush: nothing is flushed unless a test asks.
pub fn async_config() -> StoreConfig {
    let mut c = config();
    c.flush_mode = FlushMode::Async {
        interval: Duration::from_secs(3600),
    };
    c
}

/// [`config`] with every record checked on open (`verify_log_on_open`): damage anywhere in the
/// log refuses the open, not only damage in the tail past the index checkpoint.
pub fn verifying() -> StoreConfig {
    let mut c = config();
    c.verify_log_on_open = true;
    c
}

/// Opens a store on `backend`.
pub async fn open(backend: &FaultyBackend, c: StoreConfig) -> Result<Store, StorageError> {
    Store::open_with_backend(Arc::new(backend.clone()), c).await
}

/// Runs test `test` of this test binary again as a child process, with environment variable
/// `env` set to `dir` (the child's cue to append), reads the `ACK ...` lines it prints until
/// `want` of them, then kills it with SIGKILL. Returns the space-separated fields after `ACK`.
///
/// # Panics
/// When the child acknowledges fewer than `want` records before it exits.
pub fn acks_before_kill(
    test: &str,
    env: &str,
    dir: &std::path::Path,
    want: usize,
) -> anyhow::Result<Vec<Vec<String>>> {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut proc = Command::new(std::env::current_exe()?)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(env, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut acked = Vec::new();
    for line in BufReader::new(proc.stdout.take().unwrap()).lines() {
        let line = line?;
        if let Some(rest) = line.strip_prefix("ACK ") {
            acked.push(rest.split(' ').map(str::to_string).collect());
            if acked.len() == want {
                break;
            }
        }
    }
    proc.kill()?; // SIGKILL
    proc.wait()?;
    assert_eq!(
        acked.len(),
        want,
        "the child acknowledged too little before exiting"
    );
    Ok(acked)
}

/// The child of a kill test: four producers (one per queue of topic `kill`) append `make(queue,
/// i)` for `i` up to 5 000 (a safety bound; the parent kills it long before) and print
/// `ACK <queue> <offset> <id>` for every record acknowledged `Flushed`, followed by the record's
/// key when it has one.
pub fn append_until_killed(
    dir: &str,
    config: StoreConfig,
    make: fn(u32, u32) -> broker_lite::storage::NewRecord,
) {
    use broker_lite::storage::FlushOutcome;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Store::open(dir, config).await.unwrap();
        let tasks: Vec<_> = (0..4u32)
            .map(|q| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0..5_000u32 {
                        let r = make(q, i);
                        let (id, key) = (r.message_id, r.key.clone().unwrap_or_default());
                        let a = store.append(r).await.unwrap();
                        if a.outcome == FlushOutcome::Flushed {
                            println!("ACK {q} {} {id} {key}", a.queue_offset);
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
}
