//! One conformance suite for every broker adapter (issue 14): each case runs against each adapter
//! as `<case>::<adapter>` (`cargo test -p courier-middleware --test conformance -- per_key_order`).
//!
//! An adapter implements [`harness::Adapter`] in its own module and adds one line to
//! [`for_each_adapter!`]; the cases are in [`cases`].

mod broker_lite;
mod cases;
mod effects;
mod harness;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "nats")]
#[path = "../nats_support/mod.rs"]
mod nats_support;
#[cfg(feature = "rabbitmq")]
mod rabbitmq;

courier_test_support::postgres_for_tests!();

/// One `#[sqlx::test]` per adapter for case `$case`: a fresh database (with the outbox migrations)
/// and a fresh broker or topic per test.
macro_rules! for_each_adapter {
    ($case:ident) => {
        mod $case {
            use sqlx::PgPool;

            use crate::harness::Adapter;

            #[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
            async fn broker_lite(pool: PgPool) {
                crate::cases::$case(crate::broker_lite::BrokerLite::start().await, pool).await;
            }

            #[cfg(feature = "rabbitmq")]
            #[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
            async fn rabbitmq(pool: PgPool) {
                crate::cases::$case(crate::rabbitmq::RabbitMq::start().await, pool).await;
            }
            #[cfg(feature = "nats")]
            #[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
            async fn nats(pool: PgPool) {
                crate::cases::$case(crate::nats::Nats::start().await, pool).await;
            }
        }
    };
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        $(for_each_adapter!($case);)*
    };
}

conformance!(
    publish_consume,
    ack_after_commit,
    error_redelivers_with_delay,
    panic_and_timeout_redeliver,
    poison_dead_letters,
    duplicate_publish_has_one_effect,
    per_key_order,
    reconnect_after_the_connection_drops,
);
