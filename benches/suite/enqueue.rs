//! Scenario 1, enqueue cost, and the Postgres helpers the other scenarios share (scratch
//! database, backlog fill, raw `DELETE … RETURNING` drain).

use std::time::{Duration, Instant};

use courier::outbox::{MIGRATOR, Message, Outbox};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Executor, PgPool};

use crate::Params;
use crate::report::Report;

pub(crate) const PAYLOAD: usize = 256;
pub(crate) const SCENARIO: &str = "1. Enqueue cost (256-byte payload, one connection, interleaved)";

/// Drops and recreates the scratch database (`courier_bench`, or `$BENCH_DATABASE` so that two
/// suites on one server do not drop each other's), with the outbox schema, a business table and a
/// copy of the outbox table for the hand-written INSERT.
pub(crate) async fn fresh_database(url: &str, connections: u32) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = url.parse()?;
    let name = std::env::var("BENCH_DATABASE").unwrap_or_else(|_| "courier_bench".into());
    anyhow::ensure!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "BENCH_DATABASE must be letters, digits and '_' (it is dropped and recreated), got {name:?}"
    );
    let mut admin = sqlx::PgConnection::connect_with(&options).await?;
    admin
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await?;
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await?;
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .connect_with(options.database(&name))
        .await?;
    MIGRATOR.run(&pool).await?;
    pool.execute(
        "CREATE TABLE orders (id bigserial PRIMARY KEY, total bigint NOT NULL);
         CREATE TABLE hand_outbox (LIKE outbox.messages INCLUDING ALL);
         CREATE TABLE effects (message_id uuid NOT NULL)",
    )
    .await?;
    Ok(pool)
}

/// A business transaction alone, with `Outbox::enqueue`, and with a hand-written INSERT of the
/// same row, interleaved round by round so drift hits all three alike; then `enqueue_batch`.
pub(crate) async fn run(pool: &PgPool, params: &Params, report: &mut Report) -> anyhow::Result<()> {
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
                    "INSERT INTO outbox.messages (id, topic, key, headers, payload, created_at)
                     VALUES ($1, $2, $3, '{}', $4, $5)",
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
    pool.execute("TRUNCATE outbox.messages").await?;
    let medians: Vec<f64> = samples
        .iter_mut()
        .map(|s| {
            s.sort();
            s[s.len() / 2].as_secs_f64() * 1e6
        })
        .collect();
    for (variant, median) in VARIANTS.iter().zip(&medians) {
        report.add(SCENARIO, &format!("tx {variant}, median"), "µs/tx", *median);
    }
    report.add(
        SCENARIO,
        "enqueue / hand INSERT (tx time ratio)",
        "x",
        medians[1] / medians[2],
    );
    let rows = params.batch_rows;
    let started = Instant::now();
    fill_with_enqueue_batch(pool, rows).await?;
    report.add(
        SCENARIO,
        "enqueue_batch, 5000 rows per statement",
        "rows/s",
        rows as f64 / started.elapsed().as_secs_f64(),
    );
    pool.execute("TRUNCATE outbox.messages").await?;
    Ok(())
}

/// Writes `messages` rows through `Outbox::enqueue_batch`, 5000 per statement, keyed over 1024 keys.
pub(crate) async fn fill_with_enqueue_batch(pool: &PgPool, messages: usize) -> anyhow::Result<()> {
    let outbox = Outbox::new();
    let payload = bytes::Bytes::from(vec![b'x'; PAYLOAD]);
    for chunk_start in (0..messages).step_by(5_000) {
        let batch: Vec<Message> = (chunk_start..messages.min(chunk_start + 5_000))
            .map(|i| Message::new("bench", payload.clone()).with_key(format!("key-{}", i % 1024)))
            .collect();
        outbox.enqueue_batch(pool, &batch).await?;
    }
    Ok(())
}

/// A backlog of `messages` rows like the ones `enqueue_batch` writes (1024 keys, 256-byte
/// payloads), written by one `INSERT … SELECT` so that large backlogs fill quickly.
pub(crate) async fn fill_backlog(pool: &PgPool, messages: usize) -> anyhow::Result<()> {
    pool.execute("TRUNCATE outbox.messages").await?;
    sqlx::query(
        "INSERT INTO outbox.messages (id, topic, key, headers, payload)
         SELECT gen_random_uuid(), 'bench', 'key-' || (g % 1024), '{}', convert_to(repeat('x', $2), 'UTF8')
         FROM generate_series(1, $1) AS g",
    )
    .bind(messages as i64)
    .bind(PAYLOAD as i32)
    .execute(pool)
    .await?;
    pool.execute("VACUUM ANALYZE outbox.messages").await?;
    Ok(())
}

/// Drains the outbox with a plain `DELETE … RETURNING` loop of `batch` rows per statement (each
/// its own transaction), the ceiling a relay is compared with. Returns (messages/s, mean µs per
/// batch).
pub(crate) async fn raw_drain(pool: &PgPool, batch: usize) -> anyhow::Result<(f64, f64)> {
    let mut conn = pool.acquire().await?;
    let started = Instant::now();
    let mut drained = 0usize;
    let mut batches = 0usize;
    loop {
        let rows = sqlx::query(
            "DELETE FROM outbox.messages WHERE seq IN (
                 SELECT seq FROM outbox.messages ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING id, topic, key, headers, payload",
        )
        .bind(batch as i64)
        .fetch_all(&mut *conn)
        .await?;
        if rows.is_empty() {
            break;
        }
        drained += rows.len();
        batches += 1;
    }
    let took = started.elapsed().as_secs_f64();
    Ok((drained as f64 / took, took * 1e6 / batches.max(1) as f64))
}
