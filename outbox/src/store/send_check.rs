//! Compile-time check: the public futures are `Send` on every store, so they run inside web
//! handlers and spawned tasks (an opaque future generic over an executor lifetime can lose it,
//! rust-lang/rust#100013).

#![allow(dead_code)]

use sqlx::Pool;
use tokio_util::sync::CancellationToken;

use crate::{FailureFilter, Failures, Message, Outbox, Relay, Store};

fn assert_send<T: Send>(_: T) {}

async fn every_future_is_send<DB: Store>(pool: Pool<DB>, message: Message)
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'c> &'c mut DB::Connection: sqlx::Acquire<'c, Database = DB>,
{
    let mut tx = pool.begin().await.unwrap();
    assert_send(Outbox::new().enqueue(&mut *tx, &message));
    assert_send(Outbox::new().enqueue_batch(&mut *tx, std::slice::from_ref(&message)));
    assert_send(Failures::new().replay(&mut *tx, &FailureFilter::all()));
    assert_send(Failures::new().list(&pool, &FailureFilter::all()));
    assert_send(Failures::new().purge(&pool, &FailureFilter::all()));
    let publisher = tower::service_fn(|_: Message| async { Ok::<_, tower::BoxError>(()) });
    let relay = Relay::builder(pool, publisher).build().unwrap();
    assert_send(relay.run(CancellationToken::new()));
}

#[cfg(feature = "postgres")]
async fn on_postgres(pool: sqlx::PgPool, message: Message) {
    let mut tx = pool.begin().await.unwrap();
    assert_send(Outbox::new().enqueue(&mut *tx, &message));
    assert_send(every_future_is_send(pool, message));
}

#[cfg(feature = "sqlite")]
async fn on_sqlite(pool: sqlx::SqlitePool, message: Message) {
    let mut tx = pool.begin().await.unwrap();
    assert_send(Outbox::new().enqueue(&mut *tx, &message));
    assert_send(every_future_is_send(pool, message));
}
