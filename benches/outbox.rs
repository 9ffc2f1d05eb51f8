//! Outbox speed, side by side in one run: enqueue cost against a hand-written INSERT, and relay
//! drain into an in-memory sink against a raw `DELETE … RETURNING` loop.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench --bench outbox -- [messages]
//! ```
//!
//! Uses (and recreates) the database `courier_bench` on the server `DATABASE_URL` points at.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use courier::outbox::{MIGRATOR, Message, Outbox, Relay, RelayState};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Executor, PgPool};
use tokio_util::sync::CancellationToken;
use tower::{BoxError, service_fn};

const BATCH: usize = 500;
const PAYLOAD: usize = 256;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let messages: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let url = std::env::var("DATABASE_URL")
        .context("set DATABASE_URL, e.g. postgres://postgres@127.0.0.1:5432/postgres")?;
    let pool = fresh_database(&url).await?;
    println!("# outbox bench: {messages} messages of {PAYLOAD} bytes, relay batch {BATCH}");
    println!("# command: cargo bench --bench outbox -- {messages}");

    enqueue_cost(&pool, 2_000).await?;
    concurrent_enqueue(&pool, 16, 4_000).await?;

    fill(&pool, messages).await?;
    let raw = raw_drain(&pool).await?;
    fill(&pool, messages).await?;
    let relay = relay_drain(&pool, messages).await?;
    println!(
        "drain  raw DELETE..RETURNING loop: {:>9.0} msg/s | relay to in-memory sink: {:>9.0} msg/s | ratio {:.2}",
        raw,
        relay,
        relay / raw
    );
    Ok(())
}

async fn fresh_database(url: &str) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = url.parse()?;
    let mut admin = sqlx::PgConnection::connect_with(&options).await?;
    admin
        .execute("DROP DATABASE IF EXISTS courier_bench WITH (FORCE)")
        .await?;
    admin.execute("CREATE DATABASE courier_bench").await?;
    let pool = PgPoolOptions::new()
        .max_connections(20)
        .connect_with(options.database("courier_bench"))
        .await?;
    MIGRATOR.run(&pool).await?;
    pool.execute(
        "CREATE TABLE orders (id bigserial PRIMARY KEY, total bigint NOT NULL);
         CREATE TABLE hand_outbox (LIKE outbox.messages INCLUDING ALL)",
    )
    .await?;
    Ok(pool)
}

/// One business transaction alone, with `Outbox::enqueue`, and with a hand-written INSERT of the
/// same row, interleaved round by round so that drift on the machine hits all three alike. Reports
/// the median per variant.
async fn enqueue_cost(pool: &PgPool, rounds: usize) -> anyhow::Result<()> {
    const VARIANTS: [&str; 3] = ["business only", "with enqueue", "with hand INSERT"];
    let outbox = Outbox::new();
    let payload = vec![b'x'; PAYLOAD];
    let mut samples: [Vec<Duration>; 3] = Default::default();
    let mut conn = pool.acquire().await?;
    for round in 0..rounds * VARIANTS.len() {
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
    sqlx::query("TRUNCATE outbox.messages")
        .execute(pool)
        .await?;
    let medians: Vec<Duration> = samples
        .iter_mut()
        .map(|s| {
            s.sort();
            s[s.len() / 2]
        })
        .collect();
    let hand = medians[2].as_secs_f64();
    for (variant, median) in VARIANTS.iter().zip(&medians) {
        println!(
            "enqueue {variant:<18} {:>8.1} µs/tx median  ({:.2}x hand INSERT)",
            median.as_secs_f64() * 1e6,
            median.as_secs_f64() / hand
        );
    }
    Ok(())
}

/// `clients` connections committing one message per transaction at once: a hand-written INSERT
/// into a copy of the table without the trigger, `enqueue` while every relay is busy, and
/// `enqueue` while a relay is idle (the trigger then sends NOTIFY, which serialises commits).
async fn concurrent_enqueue(pool: &PgPool, clients: usize, total: usize) -> anyhow::Result<()> {
    let mut rates = Vec::new();
    for variant in ["hand INSERT", "enqueue, relay busy", "enqueue, relay idle"] {
        if variant == "enqueue, relay idle" {
            sqlx::query("INSERT INTO outbox.idle_relays (pid) VALUES (0)")
                .execute(pool)
                .await?;
        }
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                let mut conn = pool.acquire().await?;
                for _ in 0..total / clients {
                    let message = Message::new("orders.created", vec![b'x'; PAYLOAD]);
                    let mut tx = conn.begin().await?;
                    if variant == "hand INSERT" {
                        sqlx::query(
                            "INSERT INTO hand_outbox (id, topic, headers, payload, created_at)
                             VALUES ($1, $2, '{}', $3, $4)",
                        )
                        .bind(message.id)
                        .bind(&message.topic)
                        .bind(message.payload.as_ref())
                        .bind(message.created_at)
                        .execute(&mut *tx)
                        .await?;
                    } else {
                        Outbox::new().enqueue(&mut *tx, &message).await?;
                    }
                    tx.commit().await?;
                }
                anyhow::Ok(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        rates.push((variant, total as f64 / started.elapsed().as_secs_f64()));
    }
    pool.execute("DELETE FROM outbox.idle_relays; TRUNCATE outbox.messages, hand_outbox")
        .await?;
    let hand = rates[0].1;
    for (variant, rate) in rates {
        println!(
            "enqueue {clients} clients, {variant:<20} {rate:>8.0} tx/s  ({:.2}x hand INSERT)",
            rate / hand
        );
    }
    Ok(())
}

async fn fill(pool: &PgPool, messages: usize) -> anyhow::Result<()> {
    let outbox = Outbox::new();
    let started = Instant::now();
    let payload = bytes::Bytes::from(vec![b'x'; PAYLOAD]);
    for chunk_start in (0..messages).step_by(5_000) {
        let batch: Vec<Message> = (chunk_start..messages.min(chunk_start + 5_000))
            .map(|i| Message::new("bench", payload.clone()).with_key(format!("key-{}", i % 1024)))
            .collect();
        outbox.enqueue_batch(pool, &batch).await?;
    }
    let took = started.elapsed();
    println!(
        "enqueue_batch (5000 per statement): {:>9.0} rows/s",
        messages as f64 / took.as_secs_f64()
    );
    sqlx::query("VACUUM ANALYZE outbox.messages")
        .execute(pool)
        .await?;
    Ok(())
}

async fn raw_drain(pool: &PgPool) -> anyhow::Result<f64> {
    let mut conn = pool.acquire().await?;
    let started = Instant::now();
    let mut drained = 0usize;
    loop {
        let rows = sqlx::query(
            "DELETE FROM outbox.messages WHERE seq IN (
                 SELECT seq FROM outbox.messages ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING id, topic, key, headers, payload",
        )
        .bind(BATCH as i64)
        .fetch_all(&mut *conn)
        .await?;
        if rows.is_empty() {
            break;
        }
        drained += rows.len();
    }
    Ok(drained as f64 / started.elapsed().as_secs_f64())
}

async fn relay_drain(pool: &PgPool, messages: usize) -> anyhow::Result<f64> {
    let published = Arc::new(AtomicUsize::new(0));
    let counter = published.clone();
    let sink = service_fn(move |_message: Message| {
        counter.fetch_add(1, Ordering::Relaxed);
        async { Ok::<_, BoxError>(()) }
    });
    let relay = Relay::builder(pool.clone(), sink)
        .batch_size(BATCH)
        .poll_interval(Duration::from_secs(3600))
        .build()?;
    let mut state = relay.state();
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(relay.run(shutdown.clone()));
    state.wait_for(|s| *s == RelayState::Draining).await?;
    state.wait_for(|s| *s == RelayState::Idle).await?;
    let took = started.elapsed();
    shutdown.cancel();
    task.await??;
    anyhow::ensure!(
        published.load(Ordering::Relaxed) == messages,
        "published {} of {messages}",
        published.load(Ordering::Relaxed)
    );
    Ok(messages as f64 / took.as_secs_f64())
}
