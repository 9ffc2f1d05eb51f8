//! Replication between broker-lite nodes (issue 13): a leader and followers that copy its commit
//! log and state, `SYNC_MASTER` / `ASYNC_MASTER` acknowledgements, epochs and fencing.
//!
//! # Roles
//!
//! - **Leader** ([`Leader`], inside a [`Broker`](crate::Broker) whose
//!   [`BrokerConfig::replication`](crate::BrokerConfig::replication) is `SyncMaster` or
//!   `AsyncMaster`): takes sends and consumers as a single node does, and answers followers'
//!   [`ReplicaFetch`](crate::protocol::ReplicaFetch)es (admin permission required: a stranger
//!   cannot read the log or report offsets, RocketMQ #3015).
//! - **Follower** ([`start_follower`]): pulls the log from its own log end (RocketMQ HA style),
//!   stores it under `SYNC_FLUSH`, copies the state checkpoints, and answers only `ping`,
//!   `describe` and `promote` until promoted. What is carried how is in the `follower` module
//!   source.
//!
//! # Acknowledgements
//!
//! A leader ships records as soon as they are written, before its own fsync completes, so that
//! its fsync and the follower's overlap (as Kafka and RocketMQ HA do). The commit position is
//! the lower of the leader's durable end and the `min_sync_replicas`-th highest durable position
//! among the in-sync followers (see [`Leader`]). Under `SYNC_MASTER` a send is written and
//! fsynced locally, then waits until the commit position passes it: `SEND_OK`; after
//! `slave_timeout` (default 3 s)
//! `FLUSH_SLAVE_TIMEOUT`; at once `SLAVE_NOT_AVAILABLE` when fewer than `min_sync_replicas`
//! followers are in sync. The two failure statuses mean "written on the leader, not known
//! replicated": the producer retries with the same message id. Consumers see only records below
//! the commit position. Under `ASYNC_MASTER` a send is answered after the local write, and a
//! failover loses what the followers had not fetched (their lag, reported by `describe`).
//!
//! # Epochs and fencing
//!
//! Each leadership appends `(epoch, start position)` to the epoch history (the store checkpoint
//! `replication-epochs`) before taking sends; followers copy the history and send their epoch
//! with every fetch. A leader that hears of a newer epoch is fenced: it refuses every later send.
//! A follower whose history is not a prefix of the leader's, or whose log runs past the end of its
//! last epoch in the leader's history, has diverged (it wrote as a leader after being
//! superseded, or holds records its leader lost, below): the leader sends it no records, and the
//! follower cuts its log at the end of the last common epoch
//! ([`truncate_log`](crate::storage::truncate_log)) and follows.
//!
//! # Records a follower holds that its leader lost
//!
//! Shipping from the written end means a follower may hold records its leader never made
//! durable; a leader that crashes loses them (a power cut before its fsync, a failed fsync that
//! makes the next open cut the log at the last fsynced position), and a promoted follower may
//! hold records the old leader lost. The rule that keeps every node from serving or acknowledging
//! a record that can be taken back, and from losing an acknowledged one (Kafka's high watermark
//! with leader epochs):
//!
//! 1. *Nothing is acknowledged or shown on a follower's copy alone.* `SEND_OK` and every
//!    delivery lie below the commit position, which is at most the leader's durable end.
//! 2. *Every leader start begins a new epoch*, a restart of the same node as much as a
//!    promotion, at the log end it recovered, saved before the first send. A restarted leader
//!    keeps everything it had made durable, so its new epoch starts at or past its old durable
//!    end, and past every record it acknowledged or showed.
//! 3. *A follower of an older epoch keeps only what that epoch holds in the leader's log*: if
//!    its log runs past the start of the leader's next epoch, it cuts it there. What is cut was
//!    never durable on the old leader (rule 2) or is missing on an in-sync promoted follower, so
//!    it was never acknowledged nor shown (rule 1). A follower of the leader's own epoch that
//!    holds more than the leader's log cuts to the leader's log end; rule 2 rules that case out,
//!    the check guards a controller that would reuse an epoch.
//! 4. *A promoted follower keeps what it holds*, also records its old leader never made
//!    durable: they become part of the new epoch's log (an unacknowledged send may survive a
//!    failover; the producer's retry with the same message id finds it stored). The old leader,
//!    returning as a follower, cuts what it holds past the new epoch's start (rule 3).
//!
//! A node never serves a record of its log before it is its leader's: a follower answers no
//! consumer until promoted, and then its whole log is the new epoch's.
//!
//! # Failover
//!
//! Manual, by design ready for a controller: the admin call
//! [`Promote`](crate::protocol::PromoteRequest) (`broker-lite --addr <follower> promote`) on a
//! running follower, admin permission required ([`FollowerNode::promote`] in process). The
//! follower judges from its leader's last fetch answer, which carries the leader's log end and
//! how far it had acknowledged sends (commit position under `SYNC_MASTER`, log end under
//! `ASYNC_MASTER`): it is in sync when it holds all of that. Not in sync, it refuses and says by
//! how many bytes and since when; `force` promotes anyway and the answer spells out the log
//! positions that may be lost; `dry_run` only reports. Promotion stops the fetch loop, opens the
//! store as a [`Broker`](crate::Broker) under [`FollowerConfig::lead_with`] (which starts and
//! saves the next epoch at the log end) and serves every connection from it, on the same
//! address. The other nodes then follow it (a returning old leader truncates, see above).
//!
//! A controller would: ask every follower with `dry_run`, promote the in-sync one holding the
//! most (the highest `position`), and point the rest at it. What a follower cannot see is a
//! leader that went on acknowledging with *another* follower after this one lost contact: the
//! answer carries the time since the last contact for that reason.
//!
//! # Metrics
//!
//! `broker_lite_replication_epoch`, `broker_lite_replication_commit_position`,
//! `broker_lite_replication_in_sync_followers`,
//! `broker_lite_replication_follower_lag_bytes{follower}` on a leader;
//! `broker_lite_replication_truncated_bytes_total` on a node that cut a diverged suffix.
//!
//! # Not yet
//!
//! Automatic failover, re-seeding a follower that fell behind the
//! leader's retention (its fetch fails until it is started empty), and copying the leader's stored
//! timestamps (a follower stamps its copy itself).

mod epochs;
mod follower;
mod leader;
mod node;
mod promote;

pub use follower::FollowerConfig;
pub use leader::{FollowerStatus, Leader};
pub use node::{FollowerNode, start_follower};
