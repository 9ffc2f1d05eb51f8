//! Scenario 6, the MySQL / MariaDB store: enqueue cost beside a hand-written INSERT, and relay
//! drain (one relay, in-memory sink) beside a raw `DELETE … ORDER BY seq LIMIT … RETURNING` loop
//! (MariaDB; MySQL 8 has no RETURNING) with the same batch size on the same server.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use courier::outbox::{MYSQL_MIGRATOR, Message, Outbox, Relay};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{Connection, Executor, MySqlPool};
use tokio_util::sync::CancellationToken;
use tower::{BoxError, service_fn};

use crate::Params;
use crate::enqueue::PAYLOAD;
use crate::relay::BATCH;
use crate::report::Report;

pub(crate) const SCENARIO: &str = "6. MySQL / MariaDB store (256-byte payloads, batch 500)";

/// Drops and recreates the scratch database `courier_bench`, migrated, with a business table.
pub(crate) async fn fresh_database(url: &str) -> anyhow::Result<MySqlPool> {
    let options: MySqlConnectOptions = url.parse()?;
    let mut admin = sqlx::MySqlConnection::connect_with(&options).await?;
    admin
        .execute("DROP DATABASE IF EXISTS courier_bench; CREATE DATABASE courier_bench")
        .await?;
    let pool = MySqlPoolOptions::new()
        .max_connections(8)
        .connect_with(options.database("courier_bench"))
        .await?;
    MYSQL_MIGRATOR.run(&pool).await?;
    pool.execute(
        "CREATE TABLE orders (id BIGINT AUTO_INCREMENT PRIMARY KEY, total BIGINT NOT NULL)",
    )
    .await?;
    Ok(pool)
}

pub(crate) async fn run(
    pool: &MySqlPool,
    params: &Params,
    report: &mut Report,
) -> anyhow::Result<()> {
    enqueue(pool, params, report).await?;
    drain(pool, params, report).await
}

/// A business transaction alone, with `Outbox::enqueue`, and with a hand-written INSERT of the
/// same row, interleaved round by round.
async fn enqueue(pool: &MySqlPool, params: &Params, report: &mut Report) -> anyhow::Result<()> {
    const VARIANTS: [&str; 3] = [
        "business tx only",
        "with Outbox::enqueue",
        "with hand INSERT",
    ];
    let outbox = Outbox::new();
    let payload = vec![b'x'; PAYLOAD];
    let mut samples: [Vec<Duration>; 3] = Default::default();
    let mut conn = pool.acquire().await?;
    for round in 0..params.enqueue_rounds * VARIANTS.len() {
        let variant = round % VARIANTS.len();
        let message = Message::new("orders.created", payload.clone()).with_key("k");
        let started = Instant::now();
        let mut tx = conn.begin().await?;
        sqlx::query("INSERT INTO orders (total) VALUES (1)")
            .execute(&mut *tx)
            .await?;
        match variant {
            1 => {
                outbox.enqueue(&mut *tx, &message).await?;
            }
            2 => {
                sqlx::query(
                    "INSERT INTO outbox_messages
                         (id, topic, `key`, headers, payload, created_at, available_at)
                     VALUES (?, ?, ?, '{}', ?, ?, UTC_TIMESTAMP(6))",
                )
                .bind(message.id)
                .bind(&message.topic)
                .bind(message.key.as_deref())
                .bind(message.payload.as_ref())
                .bind(message.created_at)
                .execute(&mut *tx)
                .await?;
            }
            _ => {}
        }
        tx.commit().await?;
        samples[variant].push(started.elapsed());
    }
    drop(conn);
    pool.execute("TRUNCATE outbox_messages").await?;
    let medians: Vec<f64> = samples
        .iter_mut()
        .map(|s| {
            s.sort();
            s[s.len() / 2].as_secs_f64() * 1e6
        })
        .collect();
    for (variant, median) in VARIANTS.iter().zip(&medians) {
        report.add(
            SCENARIO,
            &format!("MySQL tx {variant}, median"),
            "µs/tx",
            *median,
        );
    }
    report.add(
        SCENARIO,
        "MySQL enqueue / hand INSERT (tx time ratio)",
        "x",
        medians[1] / medians[2],
    );
    Ok(())
}

/// `messages` rows through `Outbox::enqueue_batch`, 5000 per statement, keyed over 1024 keys.
async fn fill(pool: &MySqlPool, messages: usize) -> anyhow::Result<()> {
    let payload = vec![b'x'; PAYLOAD];
    let all: Vec<Message> = (0..messages)
        .map(|i| Message::new("orders", payload.clone()).with_key(format!("key-{}", i % 1024)))
        .collect();
    for chunk in all.chunks(5000) {
        Outbox::new().enqueue_batch(pool, chunk).await?;
    }
    Ok(())
}

async fn drain(pool: &MySqlPool, params: &Params, report: &mut Report) -> anyhow::Result<()> {
    let backlog = params.backlog;
    fill(pool, backlog).await?;
    let published = Arc::new(AtomicUsize::new(0));
    let counter = published.clone();
    let publisher = service_fn(move |_message: Message| {
        counter.fetch_add(1, Ordering::Relaxed);
        async { Ok::<_, BoxError>(()) }
    });
    let relay = Relay::builder(pool.clone(), publisher)
        .name("bench-mysql")
        .batch_size(BATCH)
        .build()?;
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(relay.run(shutdown.clone()));
    let deadline = started + params.drain_timeout;
    while published.load(Ordering::Relaxed) < backlog && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let relay_rate = published.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    shutdown.cancel();
    task.await??;
    pool.execute("TRUNCATE outbox_messages").await?;

    fill(pool, backlog).await?;
    let mut conn = pool.acquire().await?;
    let started = Instant::now();
    let mut drained = 0;
    loop {
        let rows = sqlx::query(
            "DELETE FROM outbox_messages ORDER BY seq LIMIT ?
             RETURNING id, topic, `key`, headers, payload",
        )
        .bind(BATCH as i64)
        .fetch_all(&mut *conn)
        .await?;
        if rows.is_empty() {
            break;
        }
        drained += rows.len();
    }
    let raw_rate = drained as f64 / started.elapsed().as_secs_f64();
    let label = format!(
        "MySQL relay → in-memory sink, 1 relay, {}k backlog",
        backlog / 1000
    );
    report.add(SCENARIO, &label, "msg/s", relay_rate);
    report.add(
        SCENARIO,
        "MySQL raw DELETE … RETURNING drain",
        "msg/s",
        raw_rate,
    );
    report.add(
        SCENARIO,
        &format!("{label} / raw"),
        "x",
        relay_rate / raw_rate,
    );
    Ok(())
}
