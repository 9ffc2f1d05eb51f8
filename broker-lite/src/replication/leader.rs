//! The leader side: follower sessions, the in-sync set, the commit position, and the wait of a
//! `SYNC_MASTER` send for its replicas.
//!
//! # In sync
//!
//! A follower is *in sync* while it fetched within `slave_timeout` and caught up within
//! `slave_timeout`: its fetch asked from at least the log end the leader had when it answered the
//! follower's previous fetch (Kafka's `replica.lag.time.max.ms` rule). A follower that falls
//! behind leaves the set; one that catches up re-enters it on its own (no permanent
//! `SLAVE_NOT_AVAILABLE`, RocketMQ #5579). A new follower enters only once caught up, so the set
//! never grows with a replica that lacks committed records (RocketMQ #5663).
//!
//! # Shipping and the commit position
//!
//! A fetch is answered from the leader's *written* end ([`Store::read_log`]), as soon as new
//! records are written (the long-poll waits on [`Store::subscribe_written`]), not once they are
//! durable here: the leader's fsync and the follower's run at the same time, instead of one
//! after the other.
//!
//! The commit position is therefore the lower of two positions:
//! - the *replicated* position: the `min_sync_replicas`-th highest durable position among the
//!   in-sync followers (a follower reports it with each fetch and, after each of its fsyncs, with
//!   a [`ReplicaAck`](crate::protocol::ReplicaAck), so that it fetches the next records while
//!   the previous ones are being fsynced); it only grows;
//! - the leader's own [`durable_position`](Store::durable_position).
//!
//! A `SYNC_MASTER` send is `SEND_OK` only once the commit position passes it: on the leader's
//! disk *and* on `min_sync_replicas` followers' disks. Consumers see nothing at or past it (the
//! store's visible limit caps the replicated position, and readers never see past the durable
//! end), so a failover to an in-sync follower never takes back a delivered message, and a leader
//! restart never takes back a record a follower reported (see the `replication` module for the
//! records a follower holds past the leader's durable end).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::epochs;
use crate::broker::{BrokerError, STATE_CHECKPOINTS, SendStatus};
use crate::protocol::{EpochStart, ReplicaBatch, ReplicaFetch, ReplicaRecord, Replication};
use crate::storage::Store;

/// How a leader answers producers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Sync { min_sync_replicas: usize },
    Async,
}

/// A follower as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FollowerStatus {
    /// The follower's name.
    pub name: String,
    /// It holds every record below this log position durably.
    pub acked_position: u64,
    /// The leader's written log end less `acked_position`, in bytes.
    pub lag_bytes: u64,
    /// Whether it is in the in-sync set.
    pub in_sync: bool,
    /// Time since its last fetch.
    pub since_fetch: Duration,
}

#[derive(Debug)]
struct Session {
    acked: u64,
    last_fetch: Instant,
    caught_up_at: Option<Instant>,
    /// The log end the leader had when it last answered this follower.
    last_sent_end: u64,
}

/// The replication state of a leader.
#[derive(Debug)]
pub struct Leader {
    store: Store,
    mode: Mode,
    slave_timeout: Duration,
    epochs: Vec<EpochStart>,
    sessions: Mutex<BTreeMap<String, Session>>,
    /// The replicated position (see the module docs); the commit position is the lower of it and
    /// the leader's durable end.
    replicated: watch::Sender<u64>,
    fenced: AtomicBool,
}

impl Leader {
    /// Starts a leadership over `store` under `replication` (`SyncMaster` or `AsyncMaster`): a
    /// new epoch starting at the log end, saved before any send is taken. `None` for other
    /// replication settings.
    ///
    /// # Errors
    /// Storage errors while saving the epoch history.
    pub async fn start(
        store: &Store,
        replication: Replication,
    ) -> Result<Option<Leader>, BrokerError> {
        let (mode, slave_timeout) = match replication {
            Replication::SyncMaster {
                min_sync_replicas,
                slave_timeout,
            } => (
                Mode::Sync {
                    min_sync_replicas: min_sync_replicas.max(1) as usize,
                },
                slave_timeout,
            ),
            Replication::AsyncMaster => (Mode::Async, Duration::from_secs(3)),
            _ => return Ok(None),
        };
        let mut history = epochs::load(store).await?;
        // The log end as recovered (written and durable are the same right after an open). A
        // new epoch on every start, also a restart of the same leader, is what lets a follower
        // find out that it holds records past what this log kept (see the module docs).
        let start = store.durable_position();
        let epoch = epochs::current(&history) + 1;
        history.push(EpochStart {
            epoch,
            start_position: start,
        });
        epochs::save(store, &history).await?;
        if mode != Mode::Async {
            store.set_visible_limit(start);
        }
        tracing::info!(epoch, start, ?mode, "leadership started");
        metrics::gauge!("broker_lite_replication_epoch").set(epoch as f64);
        Ok(Some(Leader {
            store: store.clone(),
            mode,
            slave_timeout,
            epochs: history,
            sessions: Mutex::new(BTreeMap::new()),
            replicated: watch::channel(start).0,
            fenced: AtomicBool::new(false),
        }))
    }

    /// This leadership's epoch.
    pub fn epoch(&self) -> u64 {
        epochs::current(&self.epochs)
    }

    /// The commit position (see the module docs): replicated as `SYNC_MASTER` requires and
    /// durable on this leader.
    pub fn commit_position(&self) -> u64 {
        (*self.replicated.borrow()).min(self.store.durable_position())
    }

    /// Refuses sends once a newer leader was heard of.
    pub(crate) fn check_writable(&self) -> Result<(), BrokerError> {
        if self.fenced.load(Ordering::Acquire) {
            return Err(fenced_error(self.epoch()));
        }
        Ok(())
    }

    /// The status of records appended up to (and including the record at) `last_position`:
    /// waits for the replicas under `SYNC_MASTER`.
    pub(crate) async fn replicated(&self, last_position: u64) -> SendStatus {
        let Mode::Sync { min_sync_replicas } = self.mode else {
            return SendStatus::SendOk;
        };
        if self.commit_position() > last_position {
            return SendStatus::SendOk;
        }
        if self.in_sync_count(Instant::now()) < min_sync_replicas {
            return SendStatus::SlaveNotAvailable;
        }
        // Subscribed before the check, so that no move between the two is missed.
        let mut replicated = self.replicated.subscribe();
        let mut durable = self.store.subscribe();
        let committed = async {
            loop {
                if self.commit_position() > last_position {
                    return true;
                }
                let moved = tokio::select! {
                    r = replicated.changed() => r.is_ok(),
                    r = durable.changed() => r.is_ok(),
                };
                if !moved {
                    return false;
                }
            }
        };
        match tokio::time::timeout(self.slave_timeout, committed).await {
            Ok(true) => SendStatus::SendOk,
            _ => SendStatus::FlushSlaveTimeout,
        }
    }

    fn in_sync_count(&self, now: Instant) -> usize {
        let sessions = self.sessions.lock().unwrap();
        sessions
            .values()
            .filter(|s| self.is_in_sync(s, now))
            .count()
    }

    fn is_in_sync(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.last_fetch) <= self.slave_timeout
            && s.caught_up_at
                .is_some_and(|t| now.duration_since(t) <= self.slave_timeout)
    }

    /// What `describe` reports: epoch, commit position, (written) log end and the followers.
    pub fn status(&self) -> crate::protocol::ReplicationStatus {
        crate::protocol::ReplicationStatus {
            epoch: self.epoch(),
            commit_position: self.commit_position(),
            log_end: self.store.replicable_position(),
            leader: None,
            followers: self
                .followers()
                .into_iter()
                .map(|f| crate::protocol::FollowerView {
                    name: f.name,
                    acked_position: f.acked_position,
                    lag_bytes: f.lag_bytes,
                    in_sync: f.in_sync,
                    since_fetch_ms: u64::try_from(f.since_fetch.as_millis()).unwrap_or(u64::MAX),
                })
                .collect(),
        }
    }

    /// The followers, by name.
    pub fn followers(&self) -> Vec<FollowerStatus> {
        let now = Instant::now();
        let end = self.store.replicable_position();
        let sessions = self.sessions.lock().unwrap();
        sessions
            .iter()
            .map(|(name, s)| FollowerStatus {
                name: name.clone(),
                acked_position: s.acked,
                lag_bytes: end.saturating_sub(s.acked),
                in_sync: self.is_in_sync(s, now),
                since_fetch: now.duration_since(s.last_fetch),
            })
            .collect()
    }

    /// Answers a follower's fetch: records its durable position, moves the commit position, and
    /// returns the written records from there, as soon as there are any (waiting up to
    /// `max_wait_ms` for them). A follower of an older epoch whose log runs past that epoch's end
    /// here, or one of this epoch asking from past this log's end, gets no records: it must cut
    /// its log first (see the module docs).
    ///
    /// # Errors
    /// [`BrokerError::Replication`] for a follower of a newer epoch (this leader is then fenced:
    /// it refuses every later send).
    pub(crate) async fn fetch(&self, f: ReplicaFetch) -> Result<ReplicaBatch, BrokerError> {
        let epoch = self.epoch();
        if f.epoch > epoch {
            self.fence(f.epoch, &f.follower);
            return Err(fenced_error(epoch));
        }
        if let Some(end) = epochs::end_of(&self.epochs, f.epoch)
            && f.from_position > end
        {
            // The follower wrote past the end of its epoch here (a former leader): its position
            // is no offset of this log. It gets no records, only the history, from which it
            // finds where to cut its log (see the `follower` module).
            tracing::warn!(
                follower = f.follower,
                epoch = f.epoch,
                end,
                from = f.from_position,
                "a follower's log diverged; it must truncate before it can follow"
            );
            return Ok(self.empty_batch(f.from_position, self.store.replicable_position()));
        }
        // Subscribed before reading the end, so that no write between the two is missed.
        let mut written = self.store.subscribe_written();
        let end = self.store.replicable_position();
        if f.epoch == epoch && f.from_position > end {
            // Within one epoch this log only grows and a follower only holds what it fetched:
            // this cannot happen while every leader start begins a new epoch. Should it (a
            // controller reusing an epoch), the follower is told the log end and cuts to it;
            // what it holds past it was never durable here, so never acknowledged.
            tracing::warn!(
                follower = f.follower,
                epoch,
                end,
                from = f.from_position,
                "a follower of this epoch holds more than this log; it must truncate to its end"
            );
            // The end read once: the follower cuts exactly there.
            return Ok(self.empty_batch(f.from_position, end));
        }
        self.note_fetch(&f);
        let deadline = Instant::now() + Duration::from_millis(u64::from(f.max_wait_ms));
        while self.store.replicable_position() <= f.from_position {
            match tokio::time::timeout_at(deadline, written.changed()).await {
                Ok(Ok(())) => {}
                // Out of time, or the store is gone.
                _ => break,
            }
        }
        // The end before the read: a follower that asks from it next time had all of it.
        let end = self.store.replicable_position();
        let chunk = self
            .store
            .read_log(f.from_position, f.max_bytes as usize)
            .await?;
        let mut checkpoints = Vec::new();
        if f.want_checkpoints {
            for name in STATE_CHECKPOINTS {
                if let Some(bytes) = self.store.load_checkpoint(name).await? {
                    checkpoints.push((name.to_string(), bytes));
                }
            }
        }
        if let Some(s) = self.sessions.lock().unwrap().get_mut(&f.follower) {
            s.last_sent_end = end;
        }
        Ok(ReplicaBatch {
            epochs: self.epochs.clone(),
            segment_size: self.store.segment_size(),
            records: chunk
                .records
                .into_iter()
                .map(|r| ReplicaRecord {
                    log_position: r.log_position,
                    topic: r.topic,
                    queue_id: r.queue_id,
                    message_id: r.message_id,
                    key: r.key,
                    tag: r.tag,
                    properties: r.properties,
                    body: r.body,
                    born_timestamp_ms: r.born_timestamp_ms,
                    flags: r.flags,
                })
                .collect(),
            next_position: chunk.next_position,
            commit_position: self.commit_position(),
            checkpoints,
            log_end: end,
            acked_end: self.acked_end(),
        })
    }

    /// Up to where sends were acknowledged to producers: what a follower must hold to be
    /// promoted without losing an acknowledged message. Under `ASYNC_MASTER` that is this
    /// node's durable end (sends are answered once durable here), not its written end.
    fn acked_end(&self) -> u64 {
        match self.mode {
            Mode::Sync { .. } => self.commit_position(),
            Mode::Async => self.store.durable_position(),
        }
    }

    fn empty_batch(&self, position: u64, log_end: u64) -> ReplicaBatch {
        ReplicaBatch {
            epochs: self.epochs.clone(),
            segment_size: self.store.segment_size(),
            records: Vec::new(),
            next_position: position,
            commit_position: self.commit_position(),
            checkpoints: Vec::new(),
            log_end,
            acked_end: self.acked_end(),
        }
    }

    fn note_fetch(&self, f: &ReplicaFetch) {
        let now = Instant::now();
        // Nobody holds durably what they have not written.
        let durable = f.durable_position.min(f.from_position);
        let mut sessions = self.sessions.lock().unwrap();
        let s = sessions.entry(f.follower.clone()).or_insert(Session {
            acked: durable,
            last_fetch: now,
            caught_up_at: None,
            last_sent_end: u64::MAX,
        });
        if f.from_position < s.acked {
            // A follower restarted empty or lost an unsynced tail: it no longer holds what it
            // reported; it re-enters the set once caught up again.
            s.caught_up_at = None;
            s.acked = durable;
        } else {
            // A fetch and a later report may be taken in either order (one task per request):
            // a durable position below the last report is an older one, not a loss.
            s.acked = s.acked.max(durable);
        }
        s.last_fetch = now;
        if f.from_position >= s.last_sent_end {
            s.caught_up_at = Some(now);
        }
        let lag = self.store.replicable_position().saturating_sub(durable);
        metrics::gauge!("broker_lite_replication_follower_lag_bytes", "follower" => f.follower.clone())
            .set(lag as f64);
        self.advance(sessions, now);
    }

    /// Takes a follower's report that it holds everything below `ack.durable_position` durably
    /// (sent after each of its fsyncs, between fetches) and moves the commit position. A report
    /// only moves a follower forward, and only one of this epoch counts: a follower of an older
    /// epoch may hold records this log does not have, and its next fetch tells it where to cut.
    ///
    /// # Errors
    /// [`BrokerError::Replication`] for a follower of a newer epoch (this leader is then fenced).
    pub(crate) fn ack(&self, ack: &crate::protocol::ReplicaAck) -> Result<(), BrokerError> {
        let epoch = self.epoch();
        if ack.epoch > epoch {
            self.fence(ack.epoch, &ack.follower);
            return Err(fenced_error(epoch));
        }
        if ack.epoch < epoch {
            return Ok(());
        }
        let now = Instant::now();
        let mut sessions = self.sessions.lock().unwrap();
        let Some(s) = sessions.get_mut(&ack.follower) else {
            // Reports count only for a follower whose fetches the leader has seen.
            return Ok(());
        };
        s.last_fetch = now;
        // Never past what it was sent: a report is about records of this log.
        let durable = ack.durable_position.min(s.last_sent_end);
        if durable <= s.acked {
            return Ok(());
        }
        s.acked = durable;
        self.advance(sessions, now);
        Ok(())
    }

    /// Publishes the in-sync count and, under `SYNC_MASTER`, moves the replicated position to the
    /// `min_sync_replicas`-th highest durable position of the in-sync followers.
    fn advance(
        &self,
        sessions: std::sync::MutexGuard<'_, BTreeMap<String, Session>>,
        now: Instant,
    ) {
        let in_sync = sessions
            .values()
            .filter(|s| self.is_in_sync(s, now))
            .count();
        metrics::gauge!("broker_lite_replication_in_sync_followers").set(in_sync as f64);
        let Mode::Sync { min_sync_replicas } = self.mode else {
            return;
        };
        let mut acked: Vec<u64> = sessions
            .values()
            .filter(|s| self.is_in_sync(s, now))
            .map(|s| s.acked)
            .collect();
        drop(sessions);
        acked.sort_unstable_by(|a, b| b.cmp(a));
        if let Some(&replicated) = acked.get(min_sync_replicas - 1) {
            let moved = self.replicated.send_if_modified(|c| {
                if replicated > *c {
                    *c = replicated;
                    true
                } else {
                    false
                }
            });
            if moved {
                // Readers never see past the durable end either: the visible part is the
                // commit position.
                self.store.set_visible_limit(replicated);
                metrics::gauge!("broker_lite_replication_commit_position")
                    .set(self.commit_position() as f64);
            }
        }
    }

    fn fence(&self, newer: u64, follower: &str) {
        if !self.fenced.swap(true, Ordering::AcqRel) {
            tracing::error!(
                epoch = self.epoch(),
                follower_epoch = newer,
                follower,
                "a follower knows a newer epoch: this leader is fenced and refuses sends"
            );
        }
    }
}

fn fenced_error(epoch: u64) -> BrokerError {
    BrokerError::Replication(format!(
        "this broker led epoch {epoch}, but a newer leader exists: it takes no more sends; \
         send to the new leader, and restart this node as a follower"
    ))
}
