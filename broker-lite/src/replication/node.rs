//! A follower node: its store, its fetch loop and a server that answers `describe`, `ping` and
//! `promote` and refuses everything else, naming the leader. Once promoted, the same server
//! answers everything through a [`BrokerHandler`] over the node's new leadership.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::follower::{self, FollowerConfig, FollowerProgress};
use super::promote;
use crate::broker::{Broker, BrokerConfig, BrokerError, Replication};
use crate::embedded::{EmbeddedConfig, EmbeddedError};
use crate::protocol::{ErrorCode, ErrorReply, PromoteRequest, Promotion, Request, Response};
use crate::server::{self, BrokerHandler, Handler, Principal};
use crate::storage::{FlushMode, Store};

/// A running follower. Promote it online with [`promote`](Self::promote) (or the admin call
/// `broker-lite promote`): it starts the next epoch at its log end and serves as leader on the
/// same address.
#[derive(Debug)]
pub struct FollowerNode {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

/// The running fetch loop: its stop and its task.
type FetchLoop = (CancellationToken, JoinHandle<Result<(), String>>);

/// What the node's handlers share.
#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    leader: String,
    progress: Arc<FollowerProgress>,
    /// The follower's view of its settings, for `describe`.
    broker: BrokerConfig,
    lead_with: Replication,
    security: server::broker::SecuritySummary,
    max_frame_size: u32,
    /// The fetch loop and its stop, until a promotion (or shutdown) takes them.
    fetch: tokio::sync::Mutex<Option<FetchLoop>>,
    /// Set once: the broker this node leads with, and the handler its connections move to.
    promoted: OnceLock<(Broker, BrokerHandler)>,
}

/// Opens the store in `dir` (with `config.broker.store`, which must be `SYNC_FLUSH`) and follows
/// the leader of `follower`, serving `describe` and `promote` on `config.listen`.
///
/// # Errors
/// [`EmbeddedError::Broker`] for an async flush store, a store that cannot open, or a
/// [`FollowerConfig::lead_with`] that is no leader setting; [`EmbeddedError::Bind`].
pub async fn start_follower(
    dir: impl AsRef<Path>,
    config: EmbeddedConfig,
    follower: FollowerConfig,
) -> Result<FollowerNode, EmbeddedError> {
    if config.broker.store.flush_mode != FlushMode::Sync {
        return Err(BrokerError::InvalidConfig(
            "a follower must run with SYNC_FLUSH (--flush sync): it reports what it holds \
             durably, and the leader's SYNC_MASTER acknowledgements rely on it"
                .into(),
        )
        .into());
    }
    if !matches!(
        follower.lead_with,
        Replication::SyncMaster { .. } | Replication::AsyncMaster
    ) {
        return Err(BrokerError::InvalidConfig(format!(
            "a follower leads with SYNC_MASTER or ASYNC_MASTER once promoted, not {:?}",
            follower.lead_with
        ))
        .into());
    }
    let dir = dir.as_ref().to_owned();
    let store = Store::open(&dir, config.broker.store.clone())
        .await
        .map_err(BrokerError::from)?;
    let listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| EmbeddedError::Bind {
                addr: config.listen,
                source,
            })?;
    let addr = listener
        .local_addr()
        .map_err(|source| EmbeddedError::Bind {
            addr: config.listen,
            source,
        })?;
    // What it holds before its first fetch (a restarted follower reports its log, not zero).
    let progress = Arc::new(FollowerProgress::default());
    progress
        .position
        .store(store.progress().written, Ordering::Release);
    let history = super::epochs::load(&store)
        .await
        .map_err(BrokerError::from)?;
    progress
        .epoch
        .store(super::epochs::current(&history), Ordering::Release);
    let fetch_stop = CancellationToken::new();
    let fetch = tokio::spawn(follower::run(
        store,
        dir.clone(),
        config.broker.store.clone(),
        follower.clone(),
        progress.clone(),
        fetch_stop.clone(),
    ));
    let mut broker = config.broker.clone();
    broker.replication = Replication::Follower;
    let shared = Arc::new(Shared {
        dir,
        leader: follower.leader_address.clone(),
        progress,
        broker,
        lead_with: follower.lead_with,
        security: server::broker::SecuritySummary {
            authentication: config.server.users.is_some(),
            tls: config.server.tls.is_some(),
            listen: addr.to_string(),
        },
        max_frame_size: config.server.limits.max_frame_size,
        fetch: tokio::sync::Mutex::new(Some((fetch_stop, fetch))),
        promoted: OnceLock::new(),
    });
    let handler = NodeHandler {
        shared: shared.clone(),
        principal: Arc::new(Principal::anonymous()),
        connection: Arc::new(OnceLock::new()),
    };
    let stop = CancellationToken::new();
    let shutdown = stop.clone();
    let server = tokio::spawn(server::serve(
        listener,
        handler,
        config.server,
        async move { shutdown.cancelled().await },
    ));
    Ok(FollowerNode {
        addr,
        shared,
        stop,
        server: Some(server),
    })
}

impl FollowerNode {
    /// The address it serves on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The local log end: everything below it is copied and durable.
    pub fn position(&self) -> u64 {
        self.shared.progress.position.load(Ordering::Acquire)
    }

    /// The newest epoch this follower knows.
    pub fn epoch(&self) -> u64 {
        self.shared.progress.epoch.load(Ordering::Acquire)
    }

    /// The broker it leads with, once promoted.
    pub fn broker(&self) -> Option<&Broker> {
        self.shared.promoted.get().map(|(b, _)| b)
    }

    /// Promotes this follower to leader, online, as the admin call `promote` does.
    ///
    /// Refused unless it is in sync (it holds everything its leader had acknowledged, as far as
    /// it knows) or `request.force` is set; with `request.dry_run` it only reports. On success
    /// the fetch loop stops, the store is opened as a [`Broker`] under
    /// [`FollowerConfig::lead_with`], which starts and saves the next epoch at the log end, and
    /// every connection is served by that broker from then on.
    ///
    /// ```no_run
    /// # async fn f(node: broker_lite::replication::FollowerNode) -> Result<(), broker_lite::broker::BrokerError> {
    /// use broker_lite::protocol::PromoteRequest;
    /// let check = node.promote(PromoteRequest { force: false, dry_run: true }).await?;
    /// if check.in_sync {
    ///     let done = node.promote(PromoteRequest::default()).await?;
    ///     println!("leading epoch {} from position {}", done.epoch, done.position);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`BrokerError::InvalidRequest`] when refused (the message says why: bytes lacking,
    /// last contact) or when already promoted; the broker's error when it cannot open.
    pub async fn promote(&self, request: PromoteRequest) -> Result<Promotion, BrokerError> {
        self.shared.promote(request).await
    }

    /// Stops serving; stops fetching (the fetch loop closes the store, flushed and
    /// checkpointed) or, once promoted, closes the broker.
    ///
    /// # Errors
    /// [`EmbeddedError::Server`] when the fetch loop stopped for good earlier (divergence, a
    /// segment size unlike the leader's) or the server failed; the store's or broker's error on
    /// close.
    pub async fn shutdown(mut self) -> Result<(), EmbeddedError> {
        self.stop.cancel();
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        if let Some((_, fetch)) = self.shared.stop_fetching().await {
            fetch.map_err(EmbeddedError::Server)?;
        }
        if let Some((broker, _)) = self.shared.promoted.get() {
            broker.close().await?;
        }
        Ok(())
    }
}

impl Drop for FollowerNode {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Ok(mut fetch) = self.shared.fetch.try_lock()
            && let Some((stop, _)) = fetch.take()
        {
            stop.cancel();
        }
    }
}

impl Shared {
    /// Stops the fetch loop, once; returns its outcome and the position it reached.
    async fn stop_fetching(&self) -> Option<(u64, Result<(), String>)> {
        let (stop, fetch) = self.fetch.lock().await.take()?;
        stop.cancel();
        let outcome = match fetch.await {
            Ok(r) => r,
            Err(e) => Err(e.to_string()),
        };
        Some((self.progress.position.load(Ordering::Acquire), outcome))
    }

    async fn promote(&self, request: PromoteRequest) -> Result<Promotion, BrokerError> {
        // One promotion at a time: a second caller waits, then finds the node promoted.
        let mut fetch = self.fetch.lock().await;
        if let Some((broker, _)) = self.promoted.get() {
            return Err(already_leader(broker));
        }
        let standing = promote::standing(&self.progress);
        if request.dry_run {
            return Ok(standing);
        }
        if !standing.in_sync && !request.force {
            return Err(BrokerError::InvalidRequest(promote::refusal(
                &standing,
                &self.leader,
            )));
        }
        if !standing.in_sync {
            tracing::warn!(
                loss = standing.loss(),
                "forced promotion of a follower that is not in sync"
            );
        }
        let Some((stop, task)) = fetch.take() else {
            return Err(BrokerError::InvalidRequest(
                "this follower is shutting down; promote another one".into(),
            ));
        };
        stop.cancel();
        match task.await {
            Ok(Ok(())) => {}
            // The store was closed all the same; what the log holds is what the new leader has.
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the fetch loop had stopped before the promotion")
            }
            Err(e) => tracing::warn!(error = %e, "the fetch loop failed before the promotion"),
        }
        let mut config = self.broker.clone();
        config.replication = self.lead_with;
        let broker = Broker::open(&self.dir, config).await.map_err(|e| {
            tracing::error!(error = %e, "promotion failed: the store did not open as a leader");
            e
        })?;
        let leader = broker.replication().ok_or_else(|| {
            BrokerError::Replication("the promoted broker has no leadership".into())
        })?;
        let status = leader.status();
        let handler = BrokerHandler::new(broker.clone())
            .with_max_frame_size(self.max_frame_size)
            .with_security(self.security.clone());
        let done = Promotion {
            promoted: true,
            epoch: status.epoch,
            position: status.log_end,
            ..standing
        };
        tracing::warn!(
            epoch = done.epoch,
            start = done.position,
            forced = !standing.in_sync,
            "promoted: this node is the leader now"
        );
        let _ = self.promoted.set((broker, handler));
        Ok(done)
    }
}

fn already_leader(broker: &Broker) -> BrokerError {
    let epoch = broker.replication().map_or(0, |l| l.epoch());
    BrokerError::InvalidRequest(format!(
        "this node is already the leader (epoch {epoch}); promote runs on a follower"
    ))
}

/// A connection's handler: the follower's answers until the node is promoted, then the
/// broker's (one broker connection per server connection, made on its first request after the
/// promotion, so group memberships end with the connection as usual).
#[derive(Debug, Clone)]
struct NodeHandler {
    shared: Arc<Shared>,
    principal: Arc<Principal>,
    connection: Arc<OnceLock<BrokerHandler>>,
}

impl NodeHandler {
    fn as_leader(&self) -> Option<&BrokerHandler> {
        let (_, base) = self.shared.promoted.get()?;
        Some(
            self.connection
                .get_or_init(|| base.connect_as(self.principal.clone())),
        )
    }

    fn describe(&self) -> Response {
        let p = &self.shared.progress;
        let status = crate::protocol::ReplicationStatus {
            epoch: p.epoch.load(Ordering::Acquire),
            commit_position: p.leader_commit.load(Ordering::Acquire),
            log_end: p.position.load(Ordering::Acquire),
            leader: Some(self.shared.leader.clone()),
            followers: Vec::new(),
        };
        Response::Described(server::broker::describe(
            &self.shared.broker,
            &self.shared.security,
            Some(status),
        ))
    }
}

impl Handler for NodeHandler {
    async fn handle(&self, request: Request) -> Result<Response, ErrorReply> {
        if let Some(leader) = self.as_leader() {
            return leader.handle(request).await;
        }
        match request {
            Request::Ping => Ok(Response::Done),
            Request::Describe => Ok(self.describe()),
            Request::Promote(p) => match self.shared.promote(p).await {
                Ok(done) => Ok(Response::Promoted(done)),
                Err(BrokerError::InvalidRequest(why)) => {
                    Err(ErrorReply::new(ErrorCode::InvalidRequest, why))
                }
                Err(e) => Err(ErrorReply::new(ErrorCode::Internal, e.to_string())),
            },
            _ => Err(ErrorReply::new(
                ErrorCode::ShuttingDown,
                format!(
                    "this broker-lite is a follower of {}: send, consume and administer there \
                     (or promote this node)",
                    self.shared.leader
                ),
            )),
        }
    }

    fn connect_as(&self, principal: Arc<Principal>) -> Self {
        NodeHandler {
            shared: self.shared.clone(),
            principal,
            connection: Arc::new(OnceLock::new()),
        }
    }

    async fn disconnected(&self) {
        if let Some(leader) = self.connection.get() {
            leader.disconnected().await;
        }
    }
}
