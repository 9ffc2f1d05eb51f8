//! The transactional outbox: enqueue messages in your own sqlx transaction, relay them to a broker,
//! keep what cannot be delivered.
//!
//! A message written with [`Outbox::enqueue`] inside a business transaction exists if and only if
//! that transaction commits (safeguard P7). A [`Relay`] drains the table to any
//! `tower::Service<Message>` ([`Publisher`]), in per-key order, with backoff between attempts, and
//! moves what exhausts its attempts to a failure table ([`Failures`], safeguard P6). A broker
//! that cannot be reached ([`Unavailable`]) pauses the relay instead of costing attempts.
//!
//! # Example
//!
//! ```no_run
//! use courier_outbox::{Message, Outbox, Relay, MIGRATOR};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres").await?;
//! MIGRATOR.run(&pool).await?;
//!
//! // In the application: the message commits with the order.
//! let mut tx = pool.begin().await?;
//! Outbox::new()
//!     .enqueue(&mut *tx, &Message::json("orders.created", &serde_json::json!({"id": 7}))?.with_key("order-7"))
//!     .await?;
//! tx.commit().await?;
//!
//! // In the relay (same process or a sidecar): publish through any tower service.
//! let publisher = tower::service_fn(|message: Message| async move {
//!     println!("{} -> {}", message.id, message.topic);
//!     Ok::<_, tower::BoxError>(())
//! });
//! let shutdown = CancellationToken::new();
//! Relay::builder(pool, publisher).build()?.run(shutdown).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `postgres` | yes | the Postgres store: writer, relay (`SKIP LOCKED`, `LISTEN/NOTIFY`, advisory-lock key partitions), failure table |
//! | `sqlite` | no | the SQLite store: writer, relay (rows leased in short `BEGIN IMMEDIATE` transactions, in-process wake-ups plus polling), failure table |
//! | `mysql` | no | the MySQL 8 / MariaDB 10.6+ store: writer, relay (rows leased by primary key in short READ COMMITTED transactions, deadlocks and lock-wait timeouts retried, in-process wake-ups plus polling), failure table |
//!
//! Everything takes the pool or executor of any of these databases ([`Store`]); [`migrate`] runs
//! the right migrations.
//!
//! ## MySQL and MariaDB
//!
//! The relay never holds a row lock while it publishes and never makes the application's inserts
//! wait: relays take turns to lease due rows (one row of `outbox_claim_turn`, locked for the claim
//! only), pick them with a non-locking read at READ COMMITTED, lease them by primary key, publish,
//! and record outcomes by primary key in small batches. The SQL is what MySQL 8 and MariaDB both
//! accept (no `RETURNING`, which MySQL lacks and MariaDB has only on `INSERT`/`DELETE`; no
//! `UPDATE … RETURNING` anywhere). READ COMMITTED needs `binlog_format` ROW or MIXED when the
//! binary log is on (the default on both). The tables live in the pool's database.
//!
//! # Tables
//!
//! [`MIGRATOR`] creates schema `outbox` with `outbox.messages` and `outbox.failures`
//! (`migrations/postgres/` in the repository). `SQLITE_MIGRATOR` creates `outbox_messages` and
//! `outbox_failures` (`migrations/sqlite/`). `MYSQL_MIGRATOR` creates `outbox_messages`,
//! `outbox_failures` and `outbox_claim_turn` in the pool's database (`migrations/mysql/`). Each
//! also creates the consumer tables of `courier-middleware` (idempotency records, durable inbox).

#![forbid(unsafe_code)]

mod error;
mod failures;
mod publisher;
mod relay;
mod store;
mod writer;

/// The batch publish contract and its helpers (`PublishBatch`, `by_key`, `NotAttempted`).
pub use courier_core::batch;
pub use courier_core::{Limits, Message};
pub use error::{Error, Result, ValidationError};
pub use failures::{FailedMessage, FailureFilter, Failures, ReplayReport};
pub use publisher::{
    Batched, NotAttempted, OneByOne, Permanent, PublishBatch, PublishMode, Publisher, Unavailable,
};
pub use relay::{Backoff, CircuitState, Relay, RelayBuilder, RelayState};
pub use store::{Store, migrate};
pub use writer::Outbox;

/// Creates and upgrades the outbox tables (schema `outbox`). Run it at startup or with
/// `outbox-relay migrate`; it is safe to run concurrently and repeatedly.
///
/// ```no_run
/// # async fn example(pool: sqlx::PgPool) -> Result<(), sqlx::migrate::MigrateError> {
/// courier_outbox::MIGRATOR.run(&pool).await?;
/// # Ok(())
/// # }
/// ```
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// Creates and upgrades the outbox and consumer tables on SQLite (`outbox_messages`,
/// `outbox_failures`, `courier_inbox_*`; `migrations/sqlite/` in the repository).
///
/// ```no_run
/// # async fn example(pool: sqlx::SqlitePool) -> Result<(), sqlx::migrate::MigrateError> {
/// courier_outbox::SQLITE_MIGRATOR.run(&pool).await?;
/// # Ok(())
/// # }
/// ```
#[cfg(feature = "sqlite")]
pub static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// Creates and upgrades the outbox and consumer tables on MySQL 8 or MariaDB 10.6+, in the pool's
/// database (`outbox_messages`, `outbox_failures`, `outbox_claim_turn`, and the consumer tables of
/// `courier-middleware`; `migrations/mysql/` in the repository).
///
/// ```no_run
/// # async fn example(pool: sqlx::MySqlPool) -> Result<(), sqlx::migrate::MigrateError> {
/// courier_outbox::MYSQL_MIGRATOR.run(&pool).await?;
/// # Ok(())
/// # }
/// ```
#[cfg(feature = "mysql")]
pub static MYSQL_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/mysql");
