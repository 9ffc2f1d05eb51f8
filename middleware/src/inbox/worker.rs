//! The inbox worker: claims stored rows and runs a transactional handler on them.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use sqlx::Database;

use crate::database::DefaultDatabase;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::{BoxError, Service, ServiceExt};

use super::Inbox;
use super::sql::Claimed;
use crate::{Disposition, Panicked, Tx, TxDatabase, TxDelivery};

/// Processes the rows of one consumer group in an [`Inbox`]; see there. Built by
/// [`Inbox::worker`].
///
/// ```no_run
/// # async fn example(pool: sqlx::PgPool) {
/// use courier_middleware::{Inbox, InboxWorker, TxDelivery};
/// use tokio_util::sync::CancellationToken;
///
/// let handler = tower::service_fn(|_: TxDelivery| async { Ok::<_, tower::BoxError>(()) });
/// let worker = Inbox::new(pool).concurrency(4).worker("billing", handler);
/// worker.run(CancellationToken::new()).await;
/// # }
/// ```
pub struct InboxWorker<H, DB: Database = DefaultDatabase> {
    inbox: Inbox<DB>,
    group: String,
    handler: H,
}

impl<H: std::fmt::Debug, DB: Database> std::fmt::Debug for InboxWorker<H, DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxWorker")
            .field("inbox", &self.inbox)
            .field("group", &self.group)
            .field("handler", &self.handler)
            .finish()
    }
}

enum Step {
    Idle,
    Worked,
}

impl<H, DB: TxDatabase> InboxWorker<H, DB>
where
    H: Service<TxDelivery<DB>> + Clone + Send + 'static,
    H::Error: Into<BoxError>,
    H::Future: Send + 'static,
    H::Response: Send + 'static,
{
    /// Processes rows until `shutdown` is cancelled, then finishes the rows in hand and returns.
    /// Idle loops wake on a `NOTIFY` from the insert trigger (on SQLite: on a row stored by this
    /// process), and poll as a fallback. Database errors are logged and retried after the poll
    /// interval.
    ///
    /// ```no_run
    /// # async fn example(pool: sqlx::PgPool) {
    /// use courier_middleware::{Inbox, TxDelivery};
    ///
    /// let handler = tower::service_fn(|_: TxDelivery| async { Ok::<_, tower::BoxError>(()) });
    /// let shutdown = tokio_util::sync::CancellationToken::new();
    /// let worker = Inbox::new(pool).worker("billing", handler);
    /// let running = tokio::spawn(worker.run(shutdown.clone()));
    /// shutdown.cancel();
    /// running.await.unwrap();
    /// # }
    /// ```
    pub async fn run(self, shutdown: CancellationToken) {
        let wake = DB::inbox_wake_signal(&self.inbox.pool, &self.group);
        let listener = tokio::spawn(DB::inbox_listen(
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
    ///
    /// Every write after the claim is conditional on the claim's [`Lease`](super::sql::Lease):
    /// a slow attempt whose lease ran out may find the row claimed (and perhaps processed) by
    /// another worker, and then neither marks it done, nor schedules its retry, nor dead-letters
    /// it. Its handler's writes roll back; the attempt was counted when it was claimed.
    async fn step(&mut self) -> Result<Step, sqlx::Error> {
        let config = &self.inbox.config;
        let pool = &self.inbox.pool;
        let Some(Claimed {
            seq,
            lease,
            delivery,
        }) = DB::inbox_claim(pool, &self.group, config.lease).await?
        else {
            return Ok(Step::Idle);
        };
        let id = delivery.message.id;
        let attempt = delivery.attempt;
        let mut tx = DB::begin_write(pool).await?;
        if !DB::inbox_lock(&mut tx, seq, &lease).await? {
            // Another worker finished it, or claimed it after our lease ran out.
            return Ok(Step::Worked);
        }
        let handle = Tx::new(tx);
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
                if !DB::inbox_mark_done(&mut tx, seq, &lease).await? {
                    let _ = tx.rollback().await;
                    self.lease_lost(id, attempt, "its handler succeeded");
                    return Ok(Step::Worked);
                }
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
            if !DB::inbox_dead_letter(pool, seq, &lease, &reason).await? {
                self.lease_lost(id, attempt, &format!("it failed for good: {reason}"));
                return Ok(Step::Worked);
            }
            tracing::warn!(message.id = %id, attempt, %reason, group = %self.group,
                "inbox: dead-lettered the row");
            metrics::counter!("courier_inbox_dead_letters_total", "group" => self.group.clone())
                .increment(1);
        } else {
            let delay = match Disposition::of_error(error.as_ref()) {
                Disposition::Redeliver { after: Some(after) } => after,
                _ => config.backoff.delay(attempt),
            };
            if !DB::inbox_retry_later(pool, seq, &lease, delay, &reason).await? {
                self.lease_lost(id, attempt, &format!("it failed: {reason}"));
                return Ok(Step::Worked);
            }
            tracing::debug!(message.id = %id, attempt, %reason, ?delay, "inbox: retrying later");
            metrics::counter!("courier_inbox_retries_total", "group" => self.group.clone())
                .increment(1);
        }
        Ok(Step::Worked)
    }

    /// The attempt's outcome was not recorded: the row is another worker's now.
    fn lease_lost(&self, id: uuid::Uuid, attempt: u32, outcome: &str) {
        tracing::warn!(message.id = %id, attempt, group = %self.group,
            lease = ?self.inbox.config.lease,
            "inbox: {outcome}, but its lease ran out and another worker took the row, which \
             decides now; nothing of this attempt was recorded (lengthen the inbox lease if \
             handlers run this long)");
        metrics::counter!("courier_inbox_leases_lost_total", "group" => self.group.clone())
            .increment(1);
    }
}

impl<H, DB: Database> InboxWorker<H, DB> {
    pub(super) fn new(inbox: Inbox<DB>, group: String, handler: H) -> Self {
        Self {
            inbox,
            group,
            handler,
        }
    }

    /// The consumer group it processes.
    ///
    /// ```no_run
    /// # fn example<H>(worker: courier_middleware::InboxWorker<H>) {
    /// assert_eq!(worker.group(), "billing");
    /// # }
    /// ```
    pub fn group(&self) -> &str {
        &self.group
    }

    /// How long an idle worker waits before looking again.
    ///
    /// ```no_run
    /// # fn example<H>(worker: courier_middleware::InboxWorker<H>) {
    /// println!("polling every {:?}", worker.poll_interval());
    /// # }
    /// ```
    pub fn poll_interval(&self) -> Duration {
        self.inbox.config.poll_interval
    }
}
