//! The relay: drains the outbox table to a publisher.
//!
//! One loop per relay instance, over one store [`Session`]:
//!
//! 1. claim up to `batch_size` due rows (oldest first, never a key whose earlier message is backing
//!    off or in another relay's hands);
//! 2. publish them: keys in parallel, each key in order, a failure holding that key's later rows;
//! 3. delete (or mark sent) what was published, push back what failed, move what exhausted its
//!    attempts to the failure table.
//!
//! How a store claims differs (Postgres: `SKIP LOCKED` in the publishing transaction, key partitions
//! through advisory locks; SQLite: short leases), the loop does not. Wake-ups adapt to the load.
//! Writers in the relay's process wake it at once (an in-process signal per insert, on every
//! store), and it looks again a few times within the next milliseconds, since the signal comes
//! before the writer's commit. While work keeps arriving (within `linger` of the last batch or
//! wake-up) the relay polls every `busy_poll_interval`, and on Postgres the insert trigger stays
//! silent, because a NOTIFY takes a database-wide lock at commit that would serialise the
//! application's transactions. Once quiet, the relay marks itself idle (on Postgres the trigger
//! then notifies) and waits for a wake-up, the poll interval, the next delayed message or the next
//! rebalance. A transaction that inserted just
//! before the mark and commits just after it sent no wake-up; a few spaced re-polls catch it.
//!
//! A broker that cannot be reached is not a message failure. A publish error marked
//! [`Unavailable`](crate::Unavailable) counts no attempt; the batch goes back untouched and the
//! relay's circuit opens: between probes the relay is [`RelayState::Paused`], each probe claims and
//! publishes one row, and the first probe the broker answers closes the circuit (`circuit.rs`).

mod circuit;
mod config;
mod metrics;
mod publish;
mod session;
mod state;

use std::sync::Arc;
use std::time::Duration;

use sqlx::Pool;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use circuit::CircuitState;
pub use courier_core::Backoff;
// `pub` because the sealed `Store` trait names them; no path outside the crate reaches them.
#[allow(unreachable_pub)]
pub use config::RelayConfig;
#[allow(unreachable_pub)]
pub use session::{Backlog, BatchEnd, Claimed, Outcome, PublishFn, Session};
pub use state::RelayState;

use crate::{Batched, Error, OneByOne, PublishBatch, PublishMode, Publisher, Result, Store};
use circuit::Circuit;
use publish::PublishPolicy;

/// Drains the outbox table to a [`Publisher`] (one message per call, [`OneByOne`]) or a
/// [`PublishBatch`] (one call per batch, [`Batched`]).
///
/// Run as many relays against one database as you like, in-process or as sidecars: each row is
/// claimed by one relay (Postgres: `SKIP LOCKED`, keys partitioned among the live relays; SQLite:
/// short leases), and each message is published once in normal operation. Delivery is at least once: a relay that dies after the
/// broker accepted a message but before its transaction commits leaves the row to be published
/// again, so consumers deduplicate on [`Message::id`](crate::Message::id).
///
/// # Examples
///
/// ```no_run
/// use courier_outbox::{Message, Relay};
/// use tokio_util::sync::CancellationToken;
/// use tower::service_fn;
///
/// # async fn example(pool: sqlx::PgPool) -> Result<(), courier_outbox::Error> {
/// let publisher = service_fn(|message: Message| async move {
///     // hand the message to your broker client here
///     Ok::<_, tower::BoxError>(())
/// });
/// let relay = Relay::builder(pool, publisher)
///     .batch_size(200)
///     .max_attempts(10)
///     .build()?;
/// let shutdown = CancellationToken::new();
/// let task = tokio::spawn(relay.run(shutdown.clone()));
/// // ... on SIGTERM:
/// shutdown.cancel();
/// task.await.expect("relay task panicked")?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Relay<DB: Store, P, M = OneByOne> {
    pool: Pool<DB>,
    publisher: P,
    mode: std::marker::PhantomData<fn() -> M>,
    config: RelayConfig,
    state: watch::Sender<RelayState>,
    circuit: watch::Sender<CircuitState>,
}

/// Configures a [`Relay`]; start from [`Relay::builder`].
#[derive(Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct RelayBuilder<DB: Store, P, M = OneByOne> {
    pool: Pool<DB>,
    publisher: P,
    mode: std::marker::PhantomData<fn() -> M>,
    config: RelayConfig,
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, $name: $ty) -> Self {
            self.config.$name = $name;
            self
        }
    };
}

impl<DB: Store, P, M> RelayBuilder<DB, P, M> {
    /// Names the relay in logs and in `pg_stat_activity.application_name`. Default `courier-relay`.
    /// On Postgres its second connection, which claims the next batch while one is published,
    /// is named `<name>-ahead`, and its NOTIFY listener `<name>-listener`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    setter!(
        /// Most rows claimed in one transaction. Default 500.
        batch_size: usize
    );
    setter!(
        /// Most keys published concurrently within a batch, one by one ([`Relay::builder`]); a
        /// batch publisher paces itself. Default 64.
        max_in_flight: usize
    );
    setter!(
        /// Longest a single publish call may take before it counts as failed: one message, or
        /// the whole batch with a batch publisher. Default 10 s.
        publish_timeout: Duration
    );
    setter!(
        /// Publish attempts before a message moves to the failure table. Default 16.
        max_attempts: u32
    );
    setter!(
        /// Delay between attempts of one message. Default 1 s doubling to 5 min, 20 % jitter.
        backoff: Backoff
    );
    setter!(
        /// Longest idle wait without a notification; the fallback if `NOTIFY` is lost. Default 5 s.
        poll_interval: Duration
    );
    setter!(
        /// While busy, how often the relay looks for new messages without waiting for a NOTIFY.
        /// Inserts made in the relay's own process wake it sooner. Default 5 ms.
        busy_poll_interval: Duration
    );
    setter!(
        /// How long after the last message found the relay stays busy (polling) before it asks
        /// for NOTIFY wake-ups again. Default 250 ms.
        linger: Duration
    );
    setter!(
        /// How often the relay recounts its peers and rebalances key partitions. Default 5 s.
        rebalance_interval: Duration
    );
    setter!(
        /// How often the backlog gauges are refreshed and sent rows purged. Default 15 s.
        maintenance_interval: Duration
    );
    setter!(
        /// On shutdown, how long the batch in hand may take to finish before it is rolled back.
        /// Default 10 s.
        shutdown_grace: Duration
    );

    setter!(
        /// SQLite: how long the rows of a batch stay reserved to this relay. The relay renews the
        /// lease while it publishes; if it dies, other relays take the rows once the lease ran out.
        /// Postgres needs no lease (row locks die with the connection) and ignores it. Default 30 s.
        lease: Duration
    );
    setter!(
        /// Postgres: how long the relay's connection may stay silent before the database ends it,
        /// releasing the key partitions and the rows of the batch in hand to the other relays.
        /// Bounds how long a relay cut off by a network partition (or frozen) holds them. The
        /// relay pings every third of it while it publishes, and gives up on a database that does
        /// not answer within it. Between batches the bound is this plus the longest of the relay's
        /// own waits (the shortest of `poll_interval`, `rebalance_interval` and
        /// `maintenance_interval`). SQLite ignores it (see `lease`). Default 30 s, at least 100 ms.
        session_timeout: Duration
    );

    setter!(
        /// While the broker is unavailable (a publish error marked
        /// [`Unavailable`](crate::Unavailable)), the pauses between the probes that test whether
        /// it is back; the cap bounds how long the relay stays paused after the broker returns.
        /// Default 50 ms doubling to 1 s, 20 % jitter.
        broker_probe: Backoff
    );

    /// Keeps published rows (marked `sent_at`) for `retention` instead of deleting them, for
    /// auditing; the relay purges them afterwards. Default: delete at once.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.config.retention = Some(retention);
        self
    }

    /// Checks the settings and returns the relay.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the setting that is out of range.
    pub fn build(self) -> Result<Relay<DB, P, M>> {
        self.config.validate().map_err(Error::Config)?;
        let (state, _) = watch::channel(RelayState::Starting);
        let (circuit, _) = watch::channel(CircuitState::Closed);
        Ok(Relay {
            pool: self.pool,
            publisher: self.publisher,
            mode: std::marker::PhantomData,
            config: self.config,
            state,
            circuit,
        })
    }
}

/// Re-polls after registering as idle, in multiples of the busy poll interval: they catch
/// transactions that inserted before the registration (so sent no NOTIFY) and commit after it.
const SETTLE_POLLS: [u32; 4] = [2, 10, 50, 200];

/// The first pause between looks after a wake-up; each further one doubles, while shorter than
/// the busy poll interval and [`LAST_FOLLOW_UP`]. An in-process wake-up comes when the writer
/// inserts, before its transaction commits: the first look usually comes too early, and waiting the
/// whole busy poll interval for the next would be most of the commit-to-publish latency. Doubling
/// keeps the extra looks few (at most eight per wake-up); a transaction that stays open longer is
/// caught by the busy poll.
const FIRST_FOLLOW_UP: Duration = Duration::from_micros(500);
/// The longest pause between follow-up looks.
const LAST_FOLLOW_UP: Duration = Duration::from_millis(64);

/// Why a session on one connection ended.
enum SessionEnd {
    /// Shutdown was requested.
    Shutdown,
    /// The database failed; reconnect.
    Lost(sqlx::Error),
}

impl From<sqlx::Error> for SessionEnd {
    fn from(error: sqlx::Error) -> Self {
        Self::Lost(error)
    }
}

impl<DB: Store, P: Publisher> Relay<DB, P> {
    /// Starts configuring a relay that claims from `pool`'s database (Postgres, SQLite or MySQL)
    /// and publishes through `publisher`, one message per call ([`OneByOne`]). On Postgres the
    /// relay opens its own connections with the pool's options; on SQLite and MySQL it borrows
    /// the pool's connections for short transactions.
    pub fn builder(pool: Pool<DB>, publisher: P) -> RelayBuilder<DB, P> {
        RelayBuilder {
            pool,
            publisher,
            mode: std::marker::PhantomData,
            config: RelayConfig::default(),
        }
    }
}

impl<DB: Store, P: PublishBatch + Clone + Send + 'static> Relay<DB, P, Batched> {
    /// As [`builder`](Relay::builder), but hands each claimed batch to `publisher` in one call
    /// ([`Batched`]): broker-lite stores it in one request and one group commit.
    ///
    /// ```no_run
    /// # async fn demo(pool: sqlx::PgPool, publisher: impl courier_outbox::PublishBatch + Clone + Send + 'static) -> Result<(), courier_outbox::Error> {
    /// use courier_outbox::Relay;
    ///
    /// let relay = Relay::batch_builder(pool, publisher).batch_size(500).build()?;
    /// # let _ = relay;
    /// # Ok(()) }
    /// ```
    pub fn batch_builder(pool: Pool<DB>, publisher: P) -> RelayBuilder<DB, P, Batched> {
        RelayBuilder {
            pool,
            publisher,
            mode: std::marker::PhantomData,
            config: RelayConfig::default(),
        }
    }
}

impl<DB: Store, P: Clone + Send + 'static, M: PublishMode<P>> Relay<DB, P, M> {
    /// Watches what the relay is doing; useful for readiness probes and tests.
    pub fn state(&self) -> watch::Receiver<RelayState> {
        self.state.subscribe()
    }

    /// Watches whether the relay publishes ([`CircuitState::Closed`]) or is paused because the
    /// broker is unavailable ([`CircuitState::Open`]); a readiness probe should fail while open.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use courier_outbox::{CircuitState, Message, Relay};
    /// use tokio_util::sync::CancellationToken;
    ///
    /// # async fn example(pool: sqlx::PgPool) -> Result<(), courier_outbox::Error> {
    /// let publisher = tower::service_fn(|_: Message| async { Ok::<_, tower::BoxError>(()) });
    /// let relay = Relay::builder(pool, publisher).build()?;
    /// let mut circuit = relay.circuit();
    /// tokio::spawn(async move {
    ///     while circuit.changed().await.is_ok() {
    ///         let open = *circuit.borrow_and_update() == CircuitState::Open;
    ///         println!("broker unavailable: {open}");
    ///     }
    /// });
    /// relay.run(CancellationToken::new()).await
    /// # }
    /// ```
    pub fn circuit(&self) -> watch::Receiver<CircuitState> {
        self.circuit.subscribe()
    }

    /// Runs until `shutdown` is cancelled. The batch in hand when it is cancelled is finished
    /// within the shutdown grace period, or given back (its messages stay in the outbox).
    ///
    /// A database that is down or drops the connection is retried with backoff, forever.
    ///
    /// # Errors
    ///
    /// [`Error::NotMigrated`] if the outbox tables are missing.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let wake = Arc::new(Notify::new());
        let wakeup_stop = shutdown.child_token();
        let wakeup = DB::spawn_wakeup(&self.pool, &self.config, wake.clone(), wakeup_stop.clone());
        // Stops the wake-up task if this future is dropped (an aborted task) rather than returning.
        let _wakeup_guard = wakeup_stop.clone().drop_guard();
        let span = tracing::info_span!("outbox.relay", relay = %self.config.name);
        let result = self.run_sessions(&wake, &shutdown).instrument(span).await;
        wakeup_stop.cancel();
        let _ = wakeup.await;
        self.state.send_replace(RelayState::Stopped);
        result
    }

    async fn run_sessions(&self, wake: &Notify, shutdown: &CancellationToken) -> Result<()> {
        let mut failures = 0;
        // Outlives the sessions: a database reconnect says nothing about the broker.
        let mut circuit = Circuit::new(self.circuit.clone(), self.config.broker_probe);
        loop {
            self.state.send_replace(RelayState::Starting);
            let outcome = match DB::open_session(&self.pool, &self.config).await {
                Ok(mut session) => {
                    failures = 0;
                    match self
                        .drain_loop(&mut session, &mut circuit, wake, shutdown)
                        .await
                    {
                        SessionEnd::Shutdown => {
                            session.close().await;
                            return Ok(());
                        }
                        SessionEnd::Lost(error) => Err(Error::Database(error)),
                    }
                }
                Err(error) => Err(error),
            };
            match outcome {
                Ok(()) => {}
                Err(Error::Database(error)) => {
                    failures += 1;
                    let pause = self.config.reconnect_backoff.delay(failures);
                    tracing::error!(%error, retry_in = ?pause, "outbox relay lost its database connection");
                    self.state.send_replace(RelayState::Reconnecting);
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.cancelled() => return Ok(()),
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn drain_loop(
        &self,
        session: &mut DB::Session,
        circuit: &mut Circuit,
        wake: &Notify,
        shutdown: &CancellationToken,
    ) -> SessionEnd {
        let config = &self.config;
        let mut next_rebalance = Instant::now() + config.rebalance_interval;
        let mut next_maintenance = Instant::now();
        let mut last_work: Option<Instant> = None;
        let mut marked_idle = false;
        let mut settle_polls = SETTLE_POLLS.iter();
        let mut follow_up: Option<Duration> = None;
        loop {
            if shutdown.is_cancelled() {
                return SessionEnd::Shutdown;
            }
            let now = Instant::now();
            if now >= next_rebalance {
                if let Err(error) = session.rebalance().await {
                    return error.into();
                }
                next_rebalance = now + config.rebalance_interval;
            }
            if now >= next_maintenance {
                match session.maintain(config.retention).await {
                    Ok(backlog) => metrics::record_backlog(backlog),
                    Err(error) => return error.into(),
                }
                next_maintenance = now + config.maintenance_interval;
            }
            if let Some(probe_at) = circuit.next_probe().filter(|at| *at > now) {
                // The broker is unavailable: claim nothing until the next probe. Wake-ups are
                // ignored (more work changes nothing); rebalancing and maintenance go on.
                self.state.send_replace(RelayState::Paused);
                let deadline = probe_at.min(next_rebalance).min(next_maintenance);
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {}
                    _ = shutdown.cancelled() => return SessionEnd::Shutdown,
                }
                continue;
            }
            let limit = circuit.claim_limit(config.batch_size);
            let (end, unavailable) = match self.batch(session, limit, shutdown).await {
                Ok(done) => done,
                Err(error) => return error.into(),
            };
            match (&end, unavailable) {
                (BatchEnd::Done, Some(error)) => circuit.unavailable(&error, Instant::now()),
                (BatchEnd::Done, None) => circuit.answered(Instant::now()),
                // Nothing was published: the broker's state is as unknown as before.
                _ => {}
            }
            match end {
                BatchEnd::Done => {
                    last_work = Some(Instant::now());
                    if marked_idle {
                        if let Err(error) = session.set_idle(false).await {
                            return error.into();
                        }
                        marked_idle = false;
                    }
                    continue;
                }
                BatchEnd::Abandoned => return SessionEnd::Shutdown,
                BatchEnd::Empty => {}
            }

            let busy = last_work.is_some_and(|at| at.elapsed() < config.linger);
            let now = Instant::now();
            let mut deadline = (now + config.poll_interval)
                .min(next_rebalance)
                .min(next_maintenance);
            if busy {
                let step = follow_up.take().map_or(config.busy_poll_interval, |step| {
                    follow_up = Some(step * 2).filter(|next| {
                        *next < config.busy_poll_interval && *next <= LAST_FOLLOW_UP
                    });
                    step.min(config.busy_poll_interval)
                });
                deadline = deadline.min(now + step);
            } else if !marked_idle {
                if let Err(error) = session.set_idle(true).await {
                    return error.into();
                }
                marked_idle = true;
                settle_polls = SETTLE_POLLS.iter();
                // Rows committed before the mark sent no wake-up: look once more before waiting.
                continue;
            } else if let Some(&factor) = settle_polls.next() {
                deadline = deadline.min(now + config.busy_poll_interval * factor);
            }
            // While busy the next poll comes within milliseconds anyway: spare the query.
            if !busy {
                match session.next_due().await {
                    Ok(Some(due)) => deadline = deadline.min(now + due + Duration::from_millis(2)),
                    Ok(None) => {}
                    Err(error) => return error.into(),
                }
            }
            self.state.send_replace(RelayState::Idle);
            tokio::select! {
                _ = wake.notified() => {
                    // A wake-up says a writer inserted. In-process ones come before the writer's
                    // commit, so look again within milliseconds, then keep polling for a while.
                    last_work = Some(Instant::now());
                    follow_up = Some(FIRST_FOLLOW_UP);
                }
                _ = tokio::time::sleep_until(deadline) => {}
                _ = shutdown.cancelled() => return SessionEnd::Shutdown,
            }
        }
    }

    /// One claim-publish-record round of up to `limit` rows, with the error of a publish that
    /// found the broker unavailable. Publishing is what shutdown interrupts: the batch in hand
    /// gets the grace period, then is given back.
    async fn batch(
        &self,
        session: &mut DB::Session,
        limit: usize,
        shutdown: &CancellationToken,
    ) -> sqlx::Result<(BatchEnd, Option<String>)> {
        let policy = PublishPolicy {
            timeout: self.config.publish_timeout,
            max_attempts: self.config.max_attempts,
            backoff: self.config.backoff,
            max_in_flight: self.config.max_in_flight,
        };
        // Owned and shared parts only: the closure must be `Send` whatever the publisher's `Sync`.
        let publisher = self.publisher.clone();
        let state = &self.state;
        let grace = self.config.shutdown_grace;
        let unavailable = std::sync::Mutex::new(None);
        let found_unavailable = &unavailable;
        let publish = move |claimed: Arc<[Claimed]>| async move {
            state.send_replace(RelayState::Draining);
            let size = claimed.len();
            let span = tracing::info_span!("outbox.batch", size);
            let publishing =
                publish::publish_batch::<P, M>(publisher, &claimed, policy).instrument(span);
            tokio::pin!(publishing);
            let published = tokio::select! {
                published = &mut publishing => published,
                _ = shutdown.cancelled() => {
                    match tokio::time::timeout(grace, publishing).await {
                        Ok(published) => published,
                        Err(_) => {
                            tracing::warn!(size, "shutdown grace elapsed; giving the batch back, its messages stay in the outbox");
                            return None;
                        }
                    }
                }
            };
            *found_unavailable.lock().unwrap_or_else(|e| e.into_inner()) = published.unavailable;
            Some(published.outcomes)
        };
        let end = session
            .batch(limit, self.config.retention.is_some(), publish)
            .await?;
        let unavailable = unavailable.into_inner().unwrap_or_else(|e| e.into_inner());
        Ok((end, unavailable))
    }
}
