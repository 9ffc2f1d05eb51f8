//! `serve --role`: which replication role the node runs (issue 13), from the settings.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use broker_lite::client::{ClientTls, Credentials, Security};
use broker_lite::protocol::Replication;
use broker_lite::replication::FollowerConfig;
use clap::ValueEnum;
use serde::Deserialize;

use crate::settings::Settings;

/// `--role`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RoleName {
    /// A single node (no replication: its disk is a single point of failure).
    Standalone,
    /// Takes sends and serves followers.
    Leader,
    /// Copies a leader; takes no sends until promoted (`broker-lite promote`).
    Follower,
}

/// `--replication`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ReplicationName {
    /// SYNC_MASTER: SEND_OK once min_sync_replicas followers hold the message durably.
    Sync,
    /// ASYNC_MASTER: SEND_OK after the local write; a failover loses the followers' lag.
    Async,
}

/// What `serve` runs.
#[derive(Debug)]
pub(crate) enum Role {
    /// A leader or a single node, with this replication setting.
    Broker(Replication),
    /// A follower.
    Follower(Box<FollowerConfig>),
}

impl Settings {
    /// The role, checked: follower settings only on a follower and so on.
    pub(crate) fn role(&self) -> Result<Role> {
        let role = self.role.unwrap_or(RoleName::Standalone);
        let follower_only = self.leader_address.is_some()
            || self.follower_name.is_some()
            || self.replication_user.is_some()
            || self.replication_ca.is_some()
            || self.replica_fetch_bytes.is_some();
        let leader_only = self.replication.is_some()
            || self.min_sync_replicas.is_some()
            || self.slave_timeout_ms.is_some();
        match role {
            RoleName::Standalone => {
                if follower_only || leader_only {
                    bail!("replication settings need --role leader or --role follower");
                }
                Ok(Role::Broker(Replication::None))
            }
            RoleName::Leader => {
                if follower_only {
                    bail!("--leader-address and the other follower settings need --role follower");
                }
                Ok(Role::Broker(self.leader_replication()?))
            }
            RoleName::Follower => {
                let Some(leader) = self.leader_address.clone() else {
                    bail!("--role follower needs --leader-address host:port");
                };
                let name = self.follower_name.clone().unwrap_or_else(|| {
                    self.listen
                        .clone()
                        .unwrap_or_else(|| "127.0.0.1:9876".into())
                });
                let mut follower = FollowerConfig::new(leader, name);
                let mut security = Security::default();
                match (&self.replication_user, &self.replication_password_env) {
                    (Some(user), Some(var)) => {
                        let password = std::env::var(var).with_context(|| {
                            format!("--replication-password-env: {var} is unset")
                        })?;
                        security = security.with_credentials(Credentials::new(user, password));
                    }
                    (None, None) => {}
                    _ => bail!("--replication-user and --replication-password-env go together"),
                }
                if let Some(ca) = &self.replication_ca {
                    security = security.with_tls(ClientTls::from_ca_file(ca)?);
                }
                follower.security = security;
                if let Some(bytes) = self.replica_fetch_bytes {
                    if bytes == 0 {
                        bail!("--replica-fetch-bytes must be at least 1");
                    }
                    follower.max_fetch_bytes = bytes;
                }
                // On a follower the leader settings say how it leads once promoted.
                follower.lead_with = self.leader_replication()?;
                Ok(Role::Follower(Box::new(follower)))
            }
        }
    }

    /// `--replication`, `--min-sync-replicas`, `--slave-timeout-ms`, checked: how a leader
    /// answers producers (default SYNC_MASTER, one in-sync replica, 3 s).
    fn leader_replication(&self) -> Result<Replication> {
        Ok(match self.replication.unwrap_or(ReplicationName::Sync) {
            ReplicationName::Async => {
                if self.min_sync_replicas.is_some() {
                    bail!("--min-sync-replicas applies to --replication sync only");
                }
                Replication::AsyncMaster
            }
            ReplicationName::Sync => {
                let min_sync_replicas = self.min_sync_replicas.unwrap_or(1);
                if min_sync_replicas == 0 {
                    bail!(
                        "--min-sync-replicas must be at least 1 (with no follower use --role \
                         standalone)"
                    );
                }
                let ms = self.slave_timeout_ms.unwrap_or(3000);
                if ms == 0 {
                    bail!("--slave-timeout-ms must be greater than zero");
                }
                Replication::SyncMaster {
                    min_sync_replicas,
                    slave_timeout: Duration::from_millis(ms),
                }
            }
        })
    }
}
