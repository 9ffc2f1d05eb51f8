//! The admin client: topics, groups, lag, lookups, traces, dead letters.

use std::time::Duration;

use uuid::Uuid;

use super::endpoints::{Addresses, ConnectOptions, Endpoints};
use super::error::{ClientError, Result};
use super::security::Security;
use crate::protocol::{
    BrokerDescription, DEFAULT_MAX_FRAME_SIZE, GroupInfo, MessagePage, MessageView, PromoteRequest,
    Promotion, QueueLag, Request, Response, TopicInfo, TraceEvent,
};

/// Admin client settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AdminConfig {
    /// How long one request may take. Default 10 s.
    pub request_timeout: Duration,
    /// How long connecting to one address may take. Default 3 s.
    pub connect_timeout: Duration,
    /// Largest frame accepted from the broker. Default 8 MiB.
    pub max_frame_size: u32,
    /// Credentials and TLS for the broker (issue 16). Default: neither, for a broker on
    /// loopback that runs open.
    pub security: Security,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            security: Security::default(),
        }
    }
}

/// Administers a broker.
///
/// ```no_run
/// use broker_lite_client::{Admin, AdminConfig};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let admin = Admin::connect("127.0.0.1:9876", AdminConfig::default()).await?;
/// admin.create_topic("orders", 4).await?;
/// for lag in admin.lag("billing").await? {
///     println!("{} queue {}: {} behind", lag.topic, lag.queue_id, lag.lag);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Admin {
    endpoints: Endpoints,
    config: AdminConfig,
}

macro_rules! expect {
    ($response:expr, $variant:ident, $what:literal) => {
        match $response {
            Response::$variant(v) => Ok(v),
            _ => Err(ClientError::UnexpectedResponse($what)),
        }
    };
}

impl Admin {
    /// Connects to the first reachable address.
    ///
    /// # Errors
    ///
    /// [`ClientError::InvalidAddress`] or [`ClientError::Connect`].
    pub async fn connect(addresses: impl Into<Addresses>, config: AdminConfig) -> Result<Admin> {
        let options = ConnectOptions {
            connect_timeout: config.connect_timeout,
            max_frame_size: config.max_frame_size,
            security: config.security.clone(),
        };
        let endpoints = Endpoints::new(addresses.into(), options)?;
        endpoints.connection().await?;
        Ok(Admin { endpoints, config })
    }

    async fn call(&self, request: Request) -> Result<Response> {
        self.endpoints
            .call_failover(&request, self.config.request_timeout)
            .await
    }

    /// Checks that the broker answers.
    ///
    /// # Errors
    ///
    /// A connection error.
    pub async fn ping(&self) -> Result<()> {
        self.call(Request::Ping).await.map(|_| ())
    }

    /// The broker's version and durability settings: flush mode, replication, retention, disk
    /// ceiling (safeguards B1-B5, audited by L2).
    ///
    /// ```no_run
    /// use broker_lite_client::{Admin, AdminConfig};
    /// use broker_lite_client::protocol::FlushMode;
    ///
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let admin = Admin::connect("127.0.0.1:9876", AdminConfig::default()).await?;
    /// let description = admin.describe().await?;
    /// if let FlushMode::Async { interval } = description.flush_mode {
    ///     println!("ASYNC_FLUSH: up to {interval:?} of acknowledged messages can be lost");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// A connection error, or [`ClientError::Server`] with
    /// [`ErrorCode::UnknownCommand`](crate::protocol::ErrorCode::UnknownCommand) from a broker
    /// older than this command.
    pub async fn describe(&self) -> Result<BrokerDescription> {
        expect!(self.call(Request::Describe).await?, Described, "describe")
    }

    /// Creates `topic` with `queues` queues.
    ///
    /// # Errors
    ///
    /// A connection error or the broker's refusal.
    pub async fn create_topic(&self, topic: &str, queues: u32) -> Result<()> {
        self.call(Request::CreateTopic(TopicInfo {
            name: topic.to_string(),
            queues,
        }))
        .await
        .map(|_| ())
    }

    /// Lists topics with their queue counts.
    ///
    /// # Errors
    ///
    /// A connection error or the broker's refusal.
    pub async fn topics(&self) -> Result<Vec<TopicInfo>> {
        expect!(self.call(Request::ListTopics).await?, Topics, "list topics")
    }

    /// Lists consumer groups.
    ///
    /// # Errors
    ///
    /// A connection error or the broker's refusal.
    pub async fn groups(&self) -> Result<Vec<GroupInfo>> {
        expect!(self.call(Request::ListGroups).await?, Groups, "list groups")
    }

    /// The lag of `group` per queue (L5).
    ///
    /// # Errors
    ///
    /// A connection error or the broker's refusal (unknown group).
    pub async fn lag(&self, group: &str) -> Result<Vec<QueueLag>> {
        let request = Request::Lag {
            group: group.to_string(),
        };
        expect!(self.call(request).await?, Lag, "lag")
    }

    /// The message with id `id`, if the broker still has it.
    ///
    /// # Errors
    ///
    /// A connection error or the broker's refusal.
    pub async fn lookup_by_id(&self, id: Uuid) -> Result<Option<MessageView>> {
        expect!(
            self.call(Request::LookupById(id)).await?,
            Message,
            "lookup by id"
        )
    }

    /// Up to `max` messages of `topic` with `key`, newest first, read page by page
    /// ([`lookup_by_key_page`](Self::lookup_by_key_page)) so that no answer exceeds the
    /// broker's byte budget.
    ///
    /// # Errors
    ///
    /// A connection error or the broker's refusal.
    pub async fn lookup_by_key(
        &self,
        topic: &str,
        key: &str,
        max: u32,
    ) -> Result<Vec<MessageView>> {
        collect_pages(max, |max, cursor| {
            self.lookup_by_key_page(topic, key, max, cursor)
        })
        .await
    }

    /// One page of the messages of `topic` with `key`, newest first: at most `max`, and at
    /// most the broker's response byte budget. Pass the page's `next` as `cursor` for the
    /// following page; `next` is `None` after the last one.
    ///
    /// ```no_run
    /// # async fn demo(admin: broker_lite_client::Admin) -> Result<(), broker_lite_client::ClientError> {
    /// let mut cursor = None;
    /// loop {
    ///     let page = admin.lookup_by_key_page("orders", "customer-7", 100, cursor).await?;
    ///     for m in &page.messages {
    ///         println!("{} {}", m.message_id, m.queue_offset);
    ///     }
    ///     match page.next {
    ///         Some(next) => cursor = Some(next),
    ///         None => break,
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// A connection error or the broker's refusal.
    pub async fn lookup_by_key_page(
        &self,
        topic: &str,
        key: &str,
        max: u32,
        cursor: Option<u64>,
    ) -> Result<MessagePage> {
        let request = Request::LookupByKeyPage {
            topic: topic.to_string(),
            key: key.to_string(),
            max,
            cursor,
        };
        expect!(self.call(request).await?, Page, "lookup by key")
    }

    /// The life of message `id`: stored, delivered, acked, retried, dead-lettered (L4).
    ///
    /// # Errors
    ///
    /// A connection error or the broker's refusal.
    pub async fn trace(&self, id: Uuid) -> Result<Vec<TraceEvent>> {
        expect!(self.call(Request::Trace(id)).await?, Trace, "trace")
    }

    /// Up to `max` dead letters of `group` (C8), oldest first, read page by page
    /// ([`dead_letters_page`](Self::dead_letters_page)) so that no answer exceeds the broker's
    /// byte budget.
    ///
    /// # Errors
    ///
    /// A connection error or the broker's refusal.
    pub async fn dead_letters(&self, group: &str, max: u32) -> Result<Vec<MessageView>> {
        collect_pages(max, |max, cursor| {
            self.dead_letters_page(group, max, cursor)
        })
        .await
    }

    /// One page of the dead letters of `group`, oldest first: at most `max`, and at most the
    /// broker's response byte budget. Pass the page's `next` as `cursor` for the following
    /// page; `next` is `None` after the last one.
    ///
    /// ```no_run
    /// # async fn demo(admin: broker_lite_client::Admin) -> Result<(), broker_lite_client::ClientError> {
    /// let first = admin.dead_letters_page("billing", 100, None).await?;
    /// if let Some(next) = first.next {
    ///     let second = admin.dead_letters_page("billing", 100, Some(next)).await?;
    ///     println!("{} more", second.messages.len());
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// A connection error or the broker's refusal.
    pub async fn dead_letters_page(
        &self,
        group: &str,
        max: u32,
        cursor: Option<u64>,
    ) -> Result<MessagePage> {
        let request = Request::DeadLettersPage {
            group: group.to_string(),
            max,
            cursor,
        };
        expect!(self.call(request).await?, Page, "dead letters")
    }

    /// Sends the dead letters of `group` back for consumption (only those in `ids`, or all
    /// when `ids` is empty); returns how many.
    ///
    /// # Errors
    ///
    /// A connection error or the broker's refusal.
    pub async fn redrive_dead_letters(&self, group: &str, ids: Vec<Uuid>) -> Result<u64> {
        let request = Request::RedriveDeadLetters {
            group: group.to_string(),
            ids,
        };
        expect!(self.call(request).await?, Redriven, "redrive dead letters")
    }

    /// Asks the follower this client is connected to to become the leader (issue 13), or with
    /// `dry_run` only whether it could and what it would lose. Connect to that one follower's
    /// address alone: the call is not moved along an address list.
    ///
    /// ```no_run
    /// use broker_lite_client::{Admin, AdminConfig};
    /// use broker_lite_client::protocol::PromoteRequest;
    ///
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let admin = Admin::connect("10.0.0.2:9876", AdminConfig::default()).await?;
    /// let check = admin.promote(PromoteRequest { force: false, dry_run: true }).await?;
    /// if check.in_sync {
    ///     let done = admin.promote(PromoteRequest::default()).await?;
    ///     println!("leader of epoch {}", done.epoch);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// A connection error, or [`ClientError::Server`] with
    /// [`ErrorCode::InvalidRequest`](crate::protocol::ErrorCode::InvalidRequest) when the node
    /// refuses (not in sync: the message says how far behind and since when; not a follower).
    pub async fn promote(&self, request: PromoteRequest) -> Result<Promotion> {
        expect!(
            self.call(Request::Promote(request)).await?,
            Promoted,
            "promote"
        )
    }
}

/// Follows pages from `page(max still wanted, cursor)` until `max` messages or the last page.
async fn collect_pages<F, Fut>(max: u32, mut page: F) -> Result<Vec<MessageView>>
where
    F: FnMut(u32, Option<u64>) -> Fut,
    Fut: std::future::Future<Output = Result<MessagePage>>,
{
    let mut out = Vec::new();
    let mut cursor = None;
    while out.len() < max as usize {
        let p = page(max - out.len() as u32, cursor).await?;
        out.extend(p.messages);
        match p.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    out.truncate(max as usize);
    Ok(out)
}
