//! The [`Handler`] that answers requests with a [`Broker`] (the conversions between wire types
//! and broker types are in the `wire` module).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::handler::Handler;
use super::principal::Principal;
use super::quota::Quotas;
use super::wire::{delivery, send_request, send_result, trace_event};
use crate::broker::{self, Broker, BrokerError, ConsumerSpec, Receipt, ReceiptKey, SessionId};
use crate::protocol::{BrokerDescription, ErrorCode, ErrorReply, GroupInfo, Request, Response};

/// Answers requests with a [`Broker`].
///
/// Each connection gets its own handler ([`Handler::connect`]) with its own
/// [`SessionId`]: members subscribe over it, and when the connection closes they leave their
/// groups at once ([`Broker::close_session`]), so a killed consumer's queues and in-flight
/// messages go to the other members without waiting for its heartbeats to run out.
#[derive(Debug, Clone)]
pub struct BrokerHandler {
    broker: Broker,
    connection: Option<Arc<ConnectionState>>,
    /// The byte budget of a pull's deliveries: what a frame holds besides the answer's framing.
    max_pull_bytes: usize,
    /// The byte budget of a dead-letter listing or key lookup answer (issue 16).
    max_response_bytes: usize,
    /// Signs the receipts handed out and checks those given back (issue 16).
    receipts: Arc<ReceiptKey>,
    /// What the server tells `describe`.
    security: Arc<SecuritySummary>,
    /// The topics and groups each principal created, and its limits (issue 16).
    quotas: Arc<Quotas>,
}

/// The server's security settings, as `describe` reports them.
#[derive(Debug, Clone, Default)]
pub(crate) struct SecuritySummary {
    pub(crate) authentication: bool,
    pub(crate) tls: bool,
    pub(crate) listen: String,
}

/// What a handler knows about its connection.
#[derive(Debug)]
struct ConnectionState {
    session: SessionId,
    principal: Arc<Principal>,
    /// Set when the connection stopped reading.
    closed: AtomicBool,
}

impl BrokerHandler {
    /// A handler over `broker`, for frames of at most
    /// [`DEFAULT_MAX_FRAME_SIZE`](crate::protocol::DEFAULT_MAX_FRAME_SIZE) bytes.
    pub fn new(broker: Broker) -> Self {
        BrokerHandler {
            broker,
            connection: None,
            max_pull_bytes: pull_budget(crate::protocol::DEFAULT_MAX_FRAME_SIZE),
            max_response_bytes: super::ServerConfig::default().max_response_bytes,
            receipts: Arc::new(ReceiptKey::generate()),
            security: Arc::default(),
            quotas: Arc::new(default_quotas()),
        }
    }

    /// Limits the topics and consumer groups each principal may create (see
    /// [`ServerConfig::max_topics_per_principal`](super::ServerConfig::max_topics_per_principal)).
    pub(super) fn with_quotas(mut self, max_topics: usize, max_groups: usize) -> Self {
        self.quotas = Arc::new(Quotas::new(max_topics, max_groups));
        self
    }

    /// What `describe` reports about authentication, TLS and the listen address.
    pub(crate) fn with_security(mut self, security: SecuritySummary) -> Self {
        self.security = Arc::new(security);
        self
    }

    /// The principal of this handler's connection: anonymous when it serves no connection.
    fn principal(&self) -> &str {
        self.connection
            .as_ref()
            .map_or("anonymous", |c| c.principal.name())
    }

    /// Refuses to act for a live member that subscribed over another connection, so that
    /// another client of the same principal cannot make it leave (it leaves by itself when its
    /// connection closes).
    fn check_own_member(&self, group: &str, client_id: &str) -> Result<(), ErrorReply> {
        if !self.is_elsewhere(group, client_id) {
            return Ok(());
        }
        Err(ErrorReply::new(
            ErrorCode::Forbidden,
            format!(
                "member {client_id:?} consumes over another connection: only that connection \
                 may unsubscribe it; nothing was changed"
            ),
        ))
    }

    /// Whether `client_id` of `group` is a live member that subscribed over another connection
    /// than this handler's.
    fn is_elsewhere(&self, group: &str, client_id: &str) -> bool {
        let Some(connection) = &self.connection else {
            return false;
        };
        self.broker
            .member_session(group, client_id)
            .is_some_and(|session| session != Some(connection.session))
    }

    /// Checks a receipt given back by this handler's connection for `group`: signed by this
    /// server for this principal and group, and delivered to a member of this connection.
    ///
    /// A member that is gone (it left, or its connection closed) may still settle its late
    /// deliveries over a new connection, as the broker allows, so a reconnected consumer's ack
    /// spares a duplicate; but a live member's deliveries are settled only over the connection
    /// it subscribed over, so another member of the same principal cannot ack (drop) them.
    fn open(&self, receipt: &[u8], group: &str) -> Result<Receipt, BrokerError> {
        let receipt = Receipt::open(receipt, &self.receipts, self.principal(), group)?;
        if self.is_elsewhere(receipt.group(), receipt.client_id()) {
            return Err(BrokerError::ForeignReceipt(format!(
                "it was delivered to member {:?}, which consumes over another connection; only \
                 that member may settle it",
                receipt.client_id()
            )));
        }
        Ok(receipt)
    }

    /// Sizes pull answers for frames of at most `max_frame_size` bytes (the server's
    /// [`Limits::max_frame_size`](crate::protocol::Limits::max_frame_size)): a pull then returns
    /// as many messages as fit one frame, and at least one.
    pub fn with_max_frame_size(mut self, max_frame_size: u32) -> Self {
        self.max_pull_bytes = pull_budget(max_frame_size);
        self
    }

    /// Bounds dead-letter listings and key lookups to `max_bytes` of answer (see
    /// [`ServerConfig::max_response_bytes`](super::ServerConfig::max_response_bytes)); never
    /// more than a frame holds.
    ///
    /// ```
    /// # fn f(broker: broker_lite::broker::Broker) {
    /// let handler = broker_lite::server::BrokerHandler::new(broker).with_max_response_bytes(1 << 20);
    /// # }
    /// ```
    pub fn with_max_response_bytes(mut self, max_bytes: usize) -> Self {
        self.max_response_bytes = max_bytes;
        self
    }

    /// The byte budget of one page: the configured one, within a frame.
    fn page_budget(&self) -> usize {
        self.max_response_bytes
            .min(self.max_pull_bytes.saturating_add(4))
    }
}

fn default_quotas() -> Quotas {
    let defaults = super::ServerConfig::default();
    Quotas::new(
        defaults.max_topics_per_principal,
        defaults.max_groups_per_principal,
    )
}

/// What sealing adds to each delivery's receipt (the broker's pull budget counts the plain
/// receipt): the principal's name with its length, and the signature.
fn seal_overhead(principal: &str) -> usize {
    2 + principal.len() + 32
}

/// The deliveries' share of a frame: the frame less its header and the delivery count.
fn pull_budget(max_frame_size: u32) -> usize {
    (max_frame_size as usize).saturating_sub(crate::protocol::HEADER_LEN + 4)
}

impl Handler for BrokerHandler {
    async fn handle(&self, request: Request) -> Result<Response, ErrorReply> {
        if let Request::Unsubscribe(m) = &request {
            self.check_own_member(&m.group, &m.consumer_id)?;
        }
        let reservation = self
            .quotas
            .reserve(self.principal(), &request, &self.broker)?;
        let result = self.dispatch(request).await.map_err(to_reply);
        reservation.settle(&self.broker);
        result
    }

    fn connect(&self) -> Self {
        self.connect_as(Arc::new(Principal::anonymous()))
    }

    fn connect_as(&self, principal: Arc<Principal>) -> Self {
        BrokerHandler {
            connection: Some(Arc::new(ConnectionState {
                session: SessionId::new(),
                principal,
                closed: AtomicBool::new(false),
            })),
            ..self.clone()
        }
    }

    async fn disconnected(&self) {
        let Some(connection) = &self.connection else {
            return;
        };
        connection.closed.store(true, Ordering::SeqCst);
        self.leave(connection.session).await;
    }
}

impl BrokerHandler {
    /// Ends the memberships of a closed connection.
    async fn leave(&self, session: SessionId) {
        match self.broker.close_session(session).await {
            Ok(gone) if !gone.is_empty() => {
                tracing::info!(members = ?gone, "connection closed: its members left their groups")
            }
            Ok(_) | Err(BrokerError::Closed) => {}
            Err(e) => {
                tracing::warn!(error = %e, "ending the memberships of a closed connection failed")
            }
        }
    }

    async fn dispatch(&self, request: Request) -> Result<Response, BrokerError> {
        let b = &self.broker;
        Ok(match request {
            Request::Ping => Response::Done,
            Request::Send(m) => Response::Send(send_result(b.send(send_request(m)).await?)),
            Request::SendOneway(m) => {
                metrics::counter!("broker_lite_server_oneway_sends_total").increment(1);
                let result = b.send(send_request(m)).await?;
                if !result.status.is_ok() {
                    tracing::warn!(status = ?result.status, message_id = %result.message_id,
                        "one-way send not stored as configured; the producer is not told");
                }
                Response::Done
            }
            Request::SendBatch(ms) => Response::SendBatch(
                b.send_batch(ms.into_iter().map(send_request).collect())
                    .await?
                    .into_iter()
                    .map(send_result)
                    .collect(),
            ),
            Request::Subscribe(s) => {
                let mut spec = ConsumerSpec::new(s.group, s.consumer_id, s.topic)
                    .with_model(s.model)
                    .ordered(s.ordered);
                if !s.tags.is_empty() {
                    spec = spec.with_tags(s.tags);
                }
                if let Some(connection) = &self.connection {
                    spec = spec.with_session(connection.session);
                }
                b.subscribe(spec).await?;
                // A subscribe still running when its connection closed would outlive it: end it
                // here (the close either saw this member or set the flag first).
                if let Some(connection) = &self.connection {
                    if connection.closed.load(Ordering::SeqCst) {
                        self.leave(connection.session).await;
                    }
                }
                Response::Done
            }
            Request::Heartbeat(m) => {
                b.heartbeat(&m.group, &m.consumer_id).await?;
                Response::Done
            }
            Request::Unsubscribe(m) => {
                b.unsubscribe(&m.group, &m.consumer_id).await?;
                Response::Done
            }
            Request::Pull(p) => {
                let pull =
                    broker::PullRequest::new(p.group, p.consumer_id, p.topic)
                        .with_max_messages(p.max_messages as usize)
                        .with_max_bytes(self.max_pull_bytes.saturating_sub(
                            p.max_messages as usize * seal_overhead(self.principal()),
                        ))
                        .with_long_poll(Duration::from_millis(p.long_poll_ms));
                let principal = self.principal();
                Response::Pull(
                    b.pull(pull)
                        .await?
                        .into_iter()
                        .map(|d| delivery(d, &self.receipts, principal))
                        .collect(),
                )
            }
            Request::Ack(a) => {
                b.ack(&self.open(&a.receipt, &a.group)?).await?;
                Response::Done
            }
            Request::Nack(n) => {
                let level = n.delay_level.map(|l| u8::try_from(l).unwrap_or(u8::MAX));
                Response::Nacked(b.nack(&self.open(&n.receipt, &n.group)?, level).await?)
            }
            Request::DeadLetter(d) => {
                b.dead_letter(&self.open(&d.receipt, &d.group)?, d.reason)
                    .await?;
                Response::Done
            }
            Request::CreateTopic(t) => {
                b.create_topic(&t.name, t.queues).await?;
                Response::Done
            }
            Request::ListTopics => Response::Topics(b.topics()),
            Request::ListGroups => Response::Groups(
                b.groups()
                    .into_iter()
                    .map(|g| GroupInfo {
                        name: g.group,
                        model: g.model,
                        topics: g.topics,
                        members: g.members.into_iter().map(|m| m.client_id).collect(),
                    })
                    .collect(),
            ),
            Request::Lag { group } => Response::Lag(b.lag(&group)?),
            Request::LookupById(id) => Response::Message(b.lookup(id).await?),
            // The unpaged commands of older clients get the first page.
            Request::LookupByKey { topic, key, max } => Response::Messages(
                b.lookup_by_key_page(&topic, &key, max as usize, None, self.page_budget())
                    .await?
                    .messages,
            ),
            Request::LookupByKeyPage {
                topic,
                key,
                max,
                cursor,
            } => Response::Page(
                b.lookup_by_key_page(&topic, &key, max as usize, cursor, self.page_budget())
                    .await?,
            ),
            Request::Trace(id) => {
                Response::Trace(b.trace(id).into_iter().map(trace_event).collect())
            }
            Request::DeadLetters { group, max } => Response::Messages(
                b.dead_letters_page(&group, max as usize, None, self.page_budget())
                    .await?
                    .messages,
            ),
            Request::DeadLettersPage { group, max, cursor } => Response::Page(
                b.dead_letters_page(&group, max as usize, cursor, self.page_budget())
                    .await?,
            ),
            Request::RedriveDeadLetters { group, ids } => {
                let ids = if ids.is_empty() { None } else { Some(ids) };
                Response::Redriven(b.redrive_dead_letters(&group, ids).await?)
            }
            Request::Describe => Response::Described(describe(
                b.config(),
                &self.security,
                b.replication().map(|l| l.status()),
            )),
            Request::ReplicaFetch(fetch) => Response::ReplicaBatch(leading(b)?.fetch(fetch).await?),
            Request::ReplicaAck(ack) => {
                leading(b)?.ack(&ack)?;
                Response::Done
            }
            // A leader or a single node: promotion is for followers (replication::FollowerNode).
            Request::Promote(_) => {
                return Err(BrokerError::InvalidRequest(match b.replication() {
                    Some(l) => format!(
                        "this node is already the leader (epoch {}); promote runs on a follower",
                        l.epoch()
                    ),
                    None => "this broker-lite has no replication role; promote runs on a                              follower (`serve --role follower`)"
                        .into(),
                }));
            }
            Request::AuthStart(_) | Request::AuthFinish(_) => {
                return Err(BrokerError::InvalidRequest(
                    "authentication happens when a connection starts; this one already has".into(),
                ));
            }
        })
    }
}

/// The wire view of the broker's configuration (safeguard L2).
pub(crate) fn describe(
    config: &broker::BrokerConfig,
    security: &SecuritySummary,
    replication_status: Option<crate::protocol::ReplicationStatus>,
) -> BrokerDescription {
    let store = &config.store;
    BrokerDescription {
        version: env!("CARGO_PKG_VERSION").to_string(),
        flush_mode: store.flush_mode,
        sync_flush_timeout_ms: millis(store.sync_flush_timeout),
        replication: config.replication,
        retention_ms: millis(store.file_reserved_time),
        max_disk_bytes: store.max_disk_usage,
        max_message_size: config.max_message_size as u64,
        consume_timeout_ms: millis(config.consume_timeout),
        max_reconsume_times: config.max_reconsume_times,
        authentication: security.authentication,
        tls: security.tls,
        listen: security.listen.clone(),
        replication_status,
    }
}

/// The broker's replication leadership, for a follower's requests.
fn leading(b: &Broker) -> Result<&crate::replication::Leader, BrokerError> {
    b.replication().ok_or_else(|| {
        BrokerError::Replication(
            "this broker-lite is not a replication leader: start it with `--role leader` to serve \
             followers"
                .into(),
        )
    })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn to_reply(e: BrokerError) -> ErrorReply {
    let code = match &e {
        BrokerError::UnknownTopic(_)
        | BrokerError::UnknownGroup(_)
        | BrokerError::UnknownMember { .. }
        | BrokerError::UnknownQueue { .. } => ErrorCode::NotFound,
        // Retryable on another address: clients move along their address list to the leader.
        BrokerError::Closed | BrokerError::Replication(_) => ErrorCode::ShuttingDown,
        BrokerError::ForeignReceipt(_) => ErrorCode::Forbidden,
        BrokerError::Storage(_) | BrokerError::CorruptState { .. } => ErrorCode::Internal,
        _ => ErrorCode::InvalidRequest,
    };
    ErrorReply::new(code, e.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::broker::budget::Budget;
    use crate::storage::StoredRecord;

    fn record(key: Option<&str>, tag: Option<&str>, props: usize, body: usize) -> StoredRecord {
        StoredRecord {
            topic: "orders".into(),
            queue_id: 3,
            queue_offset: 42,
            log_position: 0,
            message_id: uuid::Uuid::now_v7(),
            key: key.map(Into::into),
            tag: tag.map(Into::into),
            properties: (0..props)
                .map(|i| (format!("k{i}"), "v".repeat(i % 5)))
                .collect::<BTreeMap<_, _>>(),
            body: vec![7u8; body].into(),
            born_timestamp_ms: 1,
            stored_timestamp_ms: 2,
            flags: 0,
        }
    }

    /// The broker's cost of a delivery bounds its size in a pull answer, so an answer within
    /// the budget fits the frame (issue 12, item 4).
    #[test]
    fn a_delivery_never_costs_less_than_its_wire_size() {
        let (group, client) = ("g".repeat(300), "c".repeat(200));
        for r in [
            record(None, None, 0, 0),
            record(Some("k"), Some("t"), 0, 10),
            record(Some(""), Some(""), 1000, 100),
            record(None, Some("tag"), 3, 1 << 20),
        ] {
            let budget = Budget::new(usize::MAX, &group, &client, &r.topic);
            let cost = budget.exact(&r);
            assert!(cost >= budget.estimate(r.encoded_len() as u32));
            let d = broker::Delivery {
                message_id: r.message_id,
                topic: r.topic.clone(),
                queue_id: r.queue_id,
                queue_offset: r.queue_offset,
                key: r.key.clone(),
                tag: r.tag.clone(),
                properties: r.properties.clone(),
                body: r.body.clone(),
                born_timestamp_ms: r.born_timestamp_ms,
                stored_timestamp_ms: r.stored_timestamp_ms,
                reconsume_times: u32::MAX,
                first_delivered_at_ms: u64::MAX,
                receipt: Receipt {
                    group: group.clone(),
                    client_id: client.clone(),
                    topic: r.topic.clone(),
                    queue_id: r.queue_id,
                    queue_offset: r.queue_offset,
                    attempt: u32::MAX,
                },
            };
            let one = Response::Pull(vec![delivery(d, &ReceiptKey::generate(), "anonymous")])
                .encode_body()
                .len();
            let empty = Response::Pull(Vec::new()).encode_body().len();
            let cost = cost + seal_overhead("anonymous");
            assert!(one - empty <= cost, "wire {} > cost {cost}", one - empty);
            assert_eq!(
                pull_budget(1000),
                1000 - crate::protocol::HEADER_LEN - empty
            );
        }
    }
}
