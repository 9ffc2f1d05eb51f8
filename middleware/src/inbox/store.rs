//! [`InboxStore`]: the consumer-side handler that stores deliveries and acks.

use std::task::{Context, Poll};

use sqlx::Database;

use crate::database::DefaultDatabase;
use tower::{BoxError, Service};

use super::future::ResponseFuture;
use super::{Inbox, Stored};
use crate::{Delivery, TxDatabase};

/// The handler returned by [`Inbox::store`]: stores each delivery and answers `Ok`.
///
/// ```no_run
/// # async fn example(pool: sqlx::PgPool) {
/// use courier_middleware::{Inbox, InboxStore};
///
/// let store: InboxStore = Inbox::new(pool).store();
/// # let _ = store;
/// # }
/// ```
pub struct InboxStore<DB: Database = DefaultDatabase> {
    pub(super) inbox: Inbox<DB>,
}

impl<DB: Database> Clone for InboxStore<DB> {
    fn clone(&self) -> Self {
        Self {
            inbox: self.inbox.clone(),
        }
    }
}

impl<DB: Database> std::fmt::Debug for InboxStore<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxStore")
            .field("inbox", &self.inbox)
            .finish()
    }
}

impl<DB: Database> InboxStore<DB> {
    /// The inbox it writes to.
    ///
    /// ```no_run
    /// # async fn example(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
    /// let store = courier_middleware::Inbox::new(pool).store();
    /// let pending = store.get_ref().pending("billing").await?;
    /// # let _ = pending;
    /// # Ok(())
    /// # }
    /// ```
    pub fn get_ref(&self) -> &Inbox<DB> {
        &self.inbox
    }
}

impl<DB: TxDatabase> Service<Delivery> for InboxStore<DB> {
    type Response = Stored;
    type Error = BoxError;
    type Future = ResponseFuture<Stored>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, delivery: Delivery) -> Self::Future {
        let inbox = self.inbox.clone();
        ResponseFuture::new(Box::pin(async move {
            let stored = DB::inbox_insert_pooled(&inbox.pool, &delivery).await?;
            if stored == Stored::New {
                DB::inbox_stored(&inbox.pool, &delivery.group);
            }
            Ok(stored)
        }))
    }
}
