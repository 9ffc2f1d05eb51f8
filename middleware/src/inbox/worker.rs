//! The inbox worker: claims stored rows and runs a transactional handler on them.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::{BoxError, Service, ServiceExt};

use super::Inbox;
use super::sql::{self, Claimed};
use crate::{Disposition, Panicked, PgTx, TxDelivery};

/// Processes the rows of one consumer group in an [`Inbox`]; see there. Built by
/// [`Inbox::worker`].
#[derive(Debug)]
pub struct InboxWorker<H> {
    inbox: Inbox,
    group: String,
    handler: H,
}

enum Step {
    Idle,
    Worked,
}

impl<H> InboxWorker<H>
where
    H: Service<TxDelivery> + Clone + Send + 'static,
    H::Error: Into<BoxError>,
    H::Future: Send + 'static,
    H::Response: Send + 'static,
{
    /// Processes rows until `shutdown` is cancelled, then finishes the rows in hand and returns.
    /// Idle loops wake on a `NOTIFY` from the insert trigger, and poll as a fallback. Database
    /// errors are logged and retried after the poll interval.
    pub async fn run(self, shutdown: CancellationToken) {
        let wake = Arc::new(Notify::new());
        let listener = tokio::spawn(listen(
            self.inbox.pool.clone(),
            self.group.clone(),
            wake.clone(),
            self.inbox.config.poll_interval,
            shutdown.clone(),
        ));
        let mut loops = JoinSet::new();
        for _ in 0..self.inbox.config.concurrency {
            let this = Self {
                inbox: self.inbox.clone(),
                group: self.group.clone(),
                handler: self.handler.clone(),
            };
            loops.spawn(this.work(wake.clone(), shutdown.clone()));
        }
        while let Some(joined) = loops.join_next().await {
            if let Err(error) = joined {
                tracing::error!(%error, "an inbox worker loop failed");
            }
        }
        listener.abort();
    }

    async fn work(mut self, wake: Arc<Notify>, shutdown: CancellationToken) {
        let idle = self.inbox.config.poll_interval;
        while !shutdown.is_cancelled() {
            // Listen before looking, so a row inserted meanwhile is not missed.
            let woken = wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            match self.step().await {
                Ok(Step::Worked) => continue,
                Ok(Step::Idle) => {}
                Err(error) => {
                    tracing::warn!(%error, group = %self.group, "inbox worker: database error");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = woken => {}
                () = tokio::time::sleep(idle) => {}
            }
        }
    }

    /// Claims and processes one row.
    async fn step(&mut self) -> Result<Step, sqlx::Error> {
        let config = &self.inbox.config;
        let pool = &self.inbox.pool;
        let Some(Claimed { seq, delivery }) = sql::claim(pool, &self.group, config.lease).await?
        else {
            return Ok(Step::Idle);
        };
        let id = delivery.message.id;
        let attempt = delivery.attempt;
        let mut tx = pool.begin().await?;
        if !sql::lock(&mut tx, seq).await? {
            // Another worker finished it after our claim.
            return Ok(Step::Worked);
        }
        let handle = PgTx::new(tx);
        let call = self
            .handler
            .clone()
            .oneshot(TxDelivery::new(delivery, handle.clone()));
        let result = match AssertUnwindSafe(call).catch_unwind().await {
            Ok(result) => result.map_err(Into::into),
            Err(payload) => Err(BoxError::from(Panicked::from_payload(payload.as_ref()))),
        };
        let tx = handle.take().await;
        let error = match (result, tx) {
            (Ok(_), Some(mut tx)) => {
                sql::mark_done(&mut tx, seq).await?;
                tx.commit().await?;
                metrics::counter!("courier_inbox_processed_total", "group" => self.group.clone())
                    .increment(1);
                return Ok(Step::Worked);
            }
            (Ok(_), None) => BoxError::from("the handler's transaction disappeared"),
            (Err(error), tx) => {
                if let Some(tx) = tx {
                    let _ = tx.rollback().await;
                }
                error
            }
        };
        let reason = error.to_string();
        let give_up = Disposition::of_error(error.as_ref()) == Disposition::DeadLetter
            || attempt >= config.max_attempts;
        if give_up {
            tracing::warn!(message.id = %id, attempt, %reason, group = %self.group,
                "inbox: dead-lettering the row");
            sql::dead_letter(pool, seq, &reason).await?;
            metrics::counter!("courier_inbox_dead_letters_total", "group" => self.group.clone())
                .increment(1);
        } else {
            let delay = match Disposition::of_error(error.as_ref()) {
                Disposition::Redeliver { after: Some(after) } => after,
                _ => config.backoff.delay(attempt),
            };
            tracing::debug!(message.id = %id, attempt, %reason, ?delay, "inbox: retrying later");
            sql::retry_later(pool, seq, delay, &reason).await?;
            metrics::counter!("courier_inbox_retries_total", "group" => self.group.clone())
                .increment(1);
        }
        Ok(Step::Worked)
    }
}

impl<H> InboxWorker<H> {
    pub(super) fn new(inbox: Inbox, group: String, handler: H) -> Self {
        Self {
            inbox,
            group,
            handler,
        }
    }

    /// The consumer group it processes.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// How long an idle worker waits before looking again.
    pub fn poll_interval(&self) -> Duration {
        self.inbox.config.poll_interval
    }
}

/// Wakes the idle loops whenever a row of `group` is inserted; reconnects after failures.
async fn listen(
    pool: PgPool,
    group: String,
    wake: Arc<Notify>,
    pause: Duration,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "inbox worker: cannot listen for new rows; polling");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(pause) => continue,
                }
            }
        };
        if let Err(error) = listener.listen("courier_inbox").await {
            tracing::warn!(%error, "inbox worker: LISTEN failed; polling");
        }
        // Rows may have arrived before the LISTEN took effect.
        wake.notify_waiters();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                received = listener.recv() => match received {
                    Ok(notification) if notification.payload() == group => wake.notify_waiters(),
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "inbox worker: lost the notification connection");
                        break;
                    }
                },
            }
        }
    }
}
