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
