//! A follower node: its store, its fetch loop and a server that answers `describe` and `ping`
//! and refuses everything else, naming the leader.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::follower::{self, FollowerConfig, FollowerProgress};
use crate::broker::{BrokerConfig, BrokerError, Replication};
use crate::embedded::{EmbeddedConfig, EmbeddedError};
use crate::protocol::{ErrorCode, ErrorReply, Request, Response};
use crate::server::{self, Handler};
use crate::storage::{FlushMode, Store};

/// A running follower. Promote it by stopping it ([`shutdown`](Self::shutdown)) and starting
/// the same data directory as a leader (`serve --role leader`): the new leadership gets the
/// next epoch, starting at the follower's log end.
#[derive(Debug)]
pub struct FollowerNode {
    addr: SocketAddr,
    progress: Arc<FollowerProgress>,
    stop: CancellationToken,
    fetch: Option<JoinHandle<Result<(), String>>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

/// Opens the store in `dir` (with `config.broker.store`, which must be `SYNC_FLUSH`) and follows
/// the leader of `follower`, serving `describe` on `config.listen`.
///
/// # Errors
/// [`EmbeddedError::Broker`] for an async flush store or a store that cannot open;
/// [`EmbeddedError::Bind`].
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
    let progress = Arc::new(FollowerProgress::default());
    let stop = CancellationToken::new();
    let fetch = tokio::spawn(follower::run(
        store,
        dir,
        config.broker.store.clone(),
        follower.clone(),
        progress.clone(),
        stop.clone(),
    ));
    let mut broker = config.broker.clone();
    broker.replication = Replication::Follower;
    let handler = FollowerHandler {
        inner: Arc::new(HandlerInner {
            leader: follower.leader_address.clone(),
            progress: progress.clone(),
            broker,
            security: server::broker::SecuritySummary {
                authentication: config.server.users.is_some(),
                tls: config.server.tls.is_some(),
                listen: addr.to_string(),
            },
        }),
    };
    let shutdown = stop.clone();
    let server = tokio::spawn(server::serve(
        listener,
        handler,
        config.server,
        async move { shutdown.cancelled().await },
    ));
    Ok(FollowerNode {
        addr,
        progress,
        stop,
        fetch: Some(fetch),
        server: Some(server),
    })
}

impl FollowerNode {
    /// The address it serves `describe` on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The local log end: everything below it is copied and durable.
    pub fn position(&self) -> u64 {
        self.progress.position.load(Ordering::Acquire)
    }

    /// The newest epoch this follower knows.
    pub fn epoch(&self) -> u64 {
        self.progress.epoch.load(Ordering::Acquire)
    }

    /// Stops fetching and serving; the fetch loop closes the store (flushed and checkpointed).
    ///
    /// # Errors
    /// [`EmbeddedError::Server`] when the fetch loop stopped for good earlier (divergence, a
    /// segment size unlike the leader's) or the server failed; the store's error on close.
    pub async fn shutdown(mut self) -> Result<(), EmbeddedError> {
        self.stop.cancel();
        let mut failure = None;
        if let Some(fetch) = self.fetch.take() {
            match fetch.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failure = Some(e),
                Err(e) => failure = Some(e.to_string()),
            }
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        match failure {
            Some(e) => Err(EmbeddedError::Server(e)),
            None => Ok(()),
        }
    }
}

impl Drop for FollowerNode {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[derive(Debug, Clone)]
struct FollowerHandler {
    inner: Arc<HandlerInner>,
}

#[derive(Debug)]
struct HandlerInner {
    leader: String,
    progress: Arc<FollowerProgress>,
    broker: BrokerConfig,
    security: server::broker::SecuritySummary,
}

impl Handler for FollowerHandler {
    async fn handle(&self, request: Request) -> Result<Response, ErrorReply> {
        match request {
            Request::Ping => Ok(Response::Done),
            Request::Describe => {
                let p = &self.inner.progress;
                let status = crate::protocol::ReplicationStatus {
                    epoch: p.epoch.load(Ordering::Acquire),
                    commit_position: p.leader_commit.load(Ordering::Acquire),
                    log_end: p.position.load(Ordering::Acquire),
                    leader: Some(self.inner.leader.clone()),
                    followers: Vec::new(),
                };
                Ok(Response::Described(server::broker::describe(
                    &self.inner.broker,
                    &self.inner.security,
                    Some(status),
                )))
            }
            _ => Err(ErrorReply::new(
                ErrorCode::ShuttingDown,
                format!(
                    "this broker-lite is a follower of {}: send, consume and administer there \
                     (or promote this node)",
                    self.inner.leader
                ),
            )),
        }
    }
}
