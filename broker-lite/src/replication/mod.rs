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
//!   stores it under `SYNC_FLUSH`, copies the state checkpoints, and answers only `ping` and
//!   `describe`. What is carried how is in the `follower` module source.
//!
//! # Acknowledgements
//!
//! Under `SYNC_MASTER` a send is written and fsynced locally, then waits until the commit
//! position (see [`Leader`]) passes it: `SEND_OK`; after `slave_timeout` (default 3 s)
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
//! superseded): the leader sends it no records, and the follower cuts its log at the end of the
//! last common epoch ([`truncate_log`](crate::storage::truncate_log)) and follows.
//!
//! # Failover
//!
//! Manual, by design ready for a controller: stop the in-sync follower and start its data
//! directory with `--role leader`; the new leadership gets the next epoch. Point the other
//! nodes at it as followers. A controller would do the same steps: pick an in-sync follower
//! (`describe` lists the in-sync set), fence the old leader by starting the new epoch, and
//! restart the rest as followers.
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
//! An online promote command, automatic failover, re-seeding a follower that fell behind the
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
