//! A shared handle on the transaction a handler writes in (idempotency layer, durable inbox).

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use sqlx::{PgConnection, Postgres, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::{AsDelivery, Delivery};

/// The database transaction a handler runs in. Write through it and your writes commit together
/// with the middleware's own bookkeeping (the idempotency record, the inbox row), after your handler
/// returned `Ok`, or roll back with it.
///
/// The handler cannot commit or roll back: the middleware does, once the handler has answered.
/// Cloning the handle is cheap; all clones share one transaction.
#[derive(Clone)]
pub struct PgTx {
    inner: Arc<Mutex<Option<Transaction<'static, Postgres>>>>,
}

impl fmt::Debug for PgTx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTx").finish_non_exhaustive()
    }
}

impl PgTx {
    pub(crate) fn new(tx: Transaction<'static, Postgres>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Some(tx))),
        }
    }

    /// Exclusive access to the transaction's connection, to run statements on.
    ///
    /// ```no_run
    /// # async fn example(tx: courier_middleware::PgTx) -> Result<(), sqlx::Error> {
    /// let mut conn = tx.lock().await;
    /// sqlx::query("INSERT INTO payments (order_id) VALUES ($1)")
    ///     .bind(7_i64)
    ///     .execute(&mut *conn)
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// Using the guard after the middleware finished the transaction (a handle kept beyond the
    /// handler call) panics: those writes could not commit with anything.
    pub async fn lock(&self) -> PgTxGuard {
        PgTxGuard {
            guard: self.inner.clone().lock_owned().await,
        }
    }

    /// Takes the transaction out, for the middleware to commit or roll back.
    pub(crate) async fn take(&self) -> Option<Transaction<'static, Postgres>> {
        self.inner.lock().await.take()
    }
}

/// Exclusive access to a [`PgTx`]'s connection; dereferences to [`PgConnection`], so
/// `&mut *guard` is an sqlx executor.
pub struct PgTxGuard {
    guard: OwnedMutexGuard<Option<Transaction<'static, Postgres>>>,
}

impl fmt::Debug for PgTxGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTxGuard").finish_non_exhaustive()
    }
}

const FINISHED: &str = "the handler's transaction was already committed or rolled back: \
                        do not keep the PgTx beyond the handler call";

impl Deref for PgTxGuard {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.guard.as_ref().expect(FINISHED)
    }
}

impl DerefMut for PgTxGuard {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.guard.as_mut().expect(FINISHED)
    }
}

/// What a transactional handler receives: the delivery and the transaction to write in.
///
/// Produced by the [`Idempotency`](crate::Idempotency) layer and the durable inbox worker.
#[derive(Debug, Clone)]
pub struct TxDelivery {
    /// The delivery.
    pub delivery: Delivery,
    tx: PgTx,
}

impl TxDelivery {
    pub(crate) fn new(delivery: Delivery, tx: PgTx) -> Self {
        Self { delivery, tx }
    }

    /// The transaction to write in.
    pub fn tx(&self) -> &PgTx {
        &self.tx
    }
}

impl AsDelivery for TxDelivery {
    fn delivery(&self) -> &Delivery {
        &self.delivery
    }
}
