//! One `LISTEN` loop for every Postgres wake-up: the outbox relay's and the inbox workers'.
//!
//! A notification is only a hint that work exists; losing one must cost latency, never a message.
//! They are lost whenever the listening connection is down: sqlx's `PgListener::recv` reconnects
//! on its own and hides that gap, so a row committed while it reconnected waits for the next poll.
//! This loop reads with `try_recv` instead, which reports the lost connection, and calls `wake`
//! after every (re)connect as well as on every notification, so the caller looks for work that
//! arrived while nobody listened.
//!
//! ```no_run
//! # async fn example(pool: sqlx::PgPool) {
//! use std::sync::Arc;
//! use courier_core::listen::Listener;
//! use tokio::sync::Notify;
//! use tokio_util::sync::CancellationToken;
//!
//! let wake = Arc::new(Notify::new());
//! let stop = CancellationToken::new();
//! let signal = wake.clone();
//! Listener::new(&pool, "courier_inbox")
//!     .application_name("payments-inbox-listener")
//!     .payload("payments")
//!     .spawn(move || signal.notify_waiters(), stop.clone());
//! wake.notified().await; // the first wake-up comes once LISTEN is in effect
//! # }
//! ```

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgListener};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The first pause after a failed connect; it doubles up to [`Listener::max_pause`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);

/// A `LISTEN` on one channel, kept alive across lost connections; see the module docs.
#[derive(Debug, Clone)]
pub struct Listener {
    options: PgConnectOptions,
    channel: String,
    payload: Option<String>,
    max_pause: Duration,
}

impl Listener {
    /// Listens on `channel` with a connection of its own, opened with `pool`'s options.
    pub fn new(pool: &PgPool, channel: impl Into<String>) -> Self {
        Self {
            options: pool.connect_options().as_ref().clone(),
            channel: channel.into(),
            payload: None,
            max_pause: Duration::from_secs(10),
        }
    }

    /// The `application_name` of the listening connection, so that operators (and tests) can
    /// find it in `pg_stat_activity`.
    pub fn application_name(mut self, name: &str) -> Self {
        self.options = self.options.application_name(name);
        self
    }

    /// Wakes only for notifications whose payload is `payload` (reconnects always wake).
    pub fn payload(mut self, payload: impl Into<String>) -> Self {
        self.payload = Some(payload.into());
        self
    }

    /// The longest pause between failed connection attempts (default 10 s).
    pub fn max_pause(mut self, max_pause: Duration) -> Self {
        self.max_pause = max_pause.max(FIRST_PAUSE);
        self
    }

    /// Runs [`Listener::run`] on a task of its own.
    pub fn spawn<W>(self, wake: W, stop: CancellationToken) -> JoinHandle<()>
    where
        W: Fn() + Send + Sync + 'static,
    {
        tokio::spawn(self.run(wake, stop))
    }

    /// Calls `wake` for every matching notification and after every (re)connect, until `stop`.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future closes the listening connection; nothing else is lost.
    pub async fn run<W>(self, wake: W, stop: CancellationToken)
    where
        W: Fn() + Send + Sync,
    {
        stop.run_until_cancelled(self.listen_forever(&wake)).await;
    }

    async fn listen_forever(&self, wake: &(impl Fn() + Sync)) {
        let mut pause = FIRST_PAUSE;
        loop {
            match self.listen_once(wake).await {
                Ok(()) => {
                    tracing::debug!(channel = %self.channel, "LISTEN connection lost; reconnecting");
                    pause = FIRST_PAUSE;
                }
                Err(error) => {
                    tracing::warn!(
                        channel = %self.channel, %error,
                        "cannot LISTEN; polling until the connection is back"
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(self.max_pause);
                }
            }
            // Notifications sent while the connection was down reached nobody.
            wake();
        }
    }

    /// Listens until the connection is lost (`Ok`) or cannot be established (`Err`).
    async fn listen_once(&self, wake: &impl Fn()) -> sqlx::Result<()> {
        let pool = sqlx::pool::PoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(self.options.clone());
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.eager_reconnect(false);
        listener.listen(&self.channel).await?;
        // Anything committed before LISTEN took effect notified nobody.
        wake();
        while let Some(notification) = listener.try_recv().await? {
            if self
                .payload
                .as_deref()
                .is_none_or(|wanted| wanted == notification.payload())
            {
                wake();
            }
        }
        Ok(())
    }
}
