//! Looking records up by message id and by (topic, key), through the on-disk id index (see the
//! `id_index` module): memory holds no per-message map, whatever the retention.

use uuid::Uuid;

use super::error::{Result, StorageError};
use super::reads::read_record_at;
use super::record::StoredRecord;
use super::shared::Shared;
use super::store::{Store, blocking};

/// A readable record at `position`, `None` when it is gone (retention) or not readable yet.
fn readable(shared: &Shared, position: u64) -> Result<Option<StoredRecord>> {
    match read_record_at(shared, position) {
        Ok(r) => Ok(Some(r)),
        Err(StorageError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

impl Store {
    /// The oldest readable record with message id `id` (a dead-lettered or re-driven copy keeps
    /// the id of its original, which comes first); `None` when there is none.
    ///
    /// ```
    /// # use broker_lite::storage::{NewRecord, Store, StoreConfig};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let mut config = StoreConfig::default();
    /// # config.segment_size = 64 * 1024;
    /// # config.max_record_size = 16 * 1024;
    /// let store = Store::open(dir.path(), config).await?;
    /// let record = NewRecord::new("orders", 0, "a").with_key("order-7");
    /// let id = record.message_id;
    /// store.append(record).await?;
    /// assert_eq!(store.find_by_id(id).await?.unwrap().message_id, id);
    /// assert_eq!(store.find_by_key("orders", "order-7", 10).await?.len(), 1);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`StorageError::Corrupt`] when a candidate record is damaged; I/O errors.
    pub async fn find_by_id(&self, id: Uuid) -> Result<Option<StoredRecord>> {
        let shared = self.inner.shared.clone();
        blocking(move || {
            let candidates = shared.index.read().unwrap().ids.by_id(&id)?;
            for position in candidates {
                if let Some(r) = readable(&shared, position)?
                    && r.message_id == id
                {
                    return Ok(Some(r));
                }
            }
            Ok(None)
        })
        .await
    }

    /// The newest readable records of `topic` with `key`, newest first, at most `limit`.
    ///
    /// # Errors
    /// As [`find_by_id`](Self::find_by_id).
    pub async fn find_by_key(
        &self,
        topic: &str,
        key: &str,
        limit: usize,
    ) -> Result<Vec<StoredRecord>> {
        self.find_by_key_before(topic, key, limit, None).await
    }

    /// As [`find_by_key`](Self::find_by_key), only records placed before log position `before`
    /// (all when `None`): a page after the one whose oldest record was at `before`.
    ///
    /// ```
    /// # use broker_lite::storage::{NewRecord, Store, StoreConfig};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), StoreConfig::default()).await?;
    /// for body in ["a", "b", "c"] {
    ///     store.append(NewRecord::new("orders", 0, body).with_key("order-7")).await?;
    /// }
    /// let first = store.find_by_key_before("orders", "order-7", 2, None).await?;
    /// let oldest_seen = first.last().unwrap().log_position;
    /// let rest = store.find_by_key_before("orders", "order-7", 2, Some(oldest_seen)).await?;
    /// assert_eq!(rest.len(), 1);
    /// assert_eq!(rest[0].body.as_ref(), b"a");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`find_by_id`](Self::find_by_id).
    pub async fn find_by_key_before(
        &self,
        topic: &str,
        key: &str,
        limit: usize,
        before: Option<u64>,
    ) -> Result<Vec<StoredRecord>> {
        let shared = self.inner.shared.clone();
        let (topic, key) = (topic.to_string(), key.to_string());
        blocking(move || {
            let mut out = Vec::new();
            let mut want = limit;
            // Candidates come newest first and include hash collisions: ask for more until
            // enough match or none remain, reading only the candidates older than those read.
            let mut below = before;
            loop {
                let candidates = shared
                    .index
                    .read()
                    .unwrap()
                    .ids
                    .by_key(&topic, &key, want)?;
                let unread: Vec<u64> = candidates
                    .iter()
                    .copied()
                    .filter(|&p| below.is_none_or(|b| p < b))
                    .collect();
                for &position in &unread {
                    if let Some(r) = readable(&shared, position)?
                        && r.topic == topic
                        && r.key.as_deref() == Some(key.as_str())
                    {
                        out.push(r);
                        if out.len() == limit {
                            return Ok(out);
                        }
                    }
                }
                if candidates.len() < want {
                    return Ok(out);
                }
                below = unread.iter().copied().min().or(below);
                want = want.saturating_mul(2);
            }
        })
        .await
    }

    /// The log position of the `records`-th newest record (the oldest record when there are
    /// fewer): where to read the log from to see the newest `records` records. The broker
    /// rebuilds its deduplication window from there instead of reading the whole log.
    pub fn recent_position(&self, records: usize) -> u64 {
        let shared = &self.inner.shared;
        let index = shared.index.read().unwrap();
        index
            .ids
            .nth_newest(records.max(1))
            .unwrap_or_else(|| shared.segments.read().unwrap()[0].base)
    }
}
