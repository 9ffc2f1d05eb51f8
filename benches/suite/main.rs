//! The courier benchmark suite (issue 7): enqueue cost, relay drain, end-to-end latency,
//! broker-lite against NATS JetStream and RabbitMQ, idempotent consumer throughput, the relay and
//! consumer runtime on RabbitMQ (scenario 7), the relay on NATS JetStream (scenario 8, feature
//! `nats`: `cargo bench --bench suite --features nats -- --quick --only 8`), broker-lite
//! replication, `SYNC_MASTER` / `ASYNC_MASTER` against a single node (scenario 9), consumer
//! throughput through the broker-lite, NATS and RabbitMQ sources with the idempotency layer
//! (scenario 10), the SQLite store's relay drain beside a raw delete loop (scenario 12).
//!
//! ```sh
//! # quick mode (under 2 minutes), then the full suite (under 15 minutes)
//! cargo bench --bench suite -- --quick
//! cargo bench --bench suite -- --full --write-report
//! ```
//!
//! Options: `--quick` (3 repeats, small sizes) or `--full` (5 repeats; the default), `--only 1,2`
//! (scenarios by number), `--write-report` (also copy the Markdown to `benches/REPORT.md`).
//! Environment: `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`; the suite
//! recreates the database `courier_bench` there, or `BENCH_DATABASE`), `NATS_ADDR` (default
//! `127.0.0.1:4222`), `RABBITMQ_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`),
//! `MYSQL_URL` (scenario 6; default `mysql://root@127.0.0.1:3306/test`). A service that does not
//! answer is reported, and the scenarios needing it are skipped with the reason.
//!
//! Writes `<target dir>/bench-report/report.md` and `report.json`.

mod broker_memory;
mod brokers;
mod consumers;
mod enqueue;
mod idempotency;
mod latency;
mod mysql;
mod nats;
#[cfg(feature = "nats")]
mod nats_relay;
mod rabbitmq;
mod relay;
mod replication;
mod report;
mod sqlite;
mod targets;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::prelude::*;

use report::Report;

pub(crate) const NATS_ADDR: &str = "127.0.0.1:4222";
pub(crate) const RABBIT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Sizes and durations of one suite run.
#[derive(Debug)]
pub(crate) struct Params {
    pub(crate) mode: &'static str,
    pub(crate) repeats: usize,
    pub(crate) enqueue_rounds: usize,
    pub(crate) batch_rows: usize,
    pub(crate) backlog: usize,
    pub(crate) big_backlog: Option<(usize, usize)>,
    pub(crate) latency_rates: Vec<(u32, f64)>,
    pub(crate) publish_duration: Duration,
    pub(crate) idempotency_count: usize,
    pub(crate) drain_timeout: Duration,
}

impl Params {
    fn quick() -> Params {
        Params {
            mode: "quick",
            repeats: 3,
            enqueue_rounds: 300,
            batch_rows: 20_000,
            backlog: 10_000,
            big_backlog: None,
            latency_rates: vec![(100, 2.0), (1000, 2.0), (5000, 1.0)],
            publish_duration: Duration::from_millis(700),
            idempotency_count: 4_000,
            drain_timeout: Duration::from_secs(60),
        }
    }

    fn full() -> Params {
        Params {
            mode: "full",
            repeats: 5,
            enqueue_rounds: 2_000,
            batch_rows: 100_000,
            backlog: 10_000,
            big_backlog: Some((1_000_000, 3)),
            latency_rates: vec![(100, 8.0), (1000, 6.0), (5000, 4.0)],
            publish_duration: Duration::from_secs(2),
            idempotency_count: 20_000,
            drain_timeout: Duration::from_secs(180),
        }
    }
}

/// The Cargo target directory (where data files and the report go).
pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

fn shell(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn machine() -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .map_or("unknown".into(), |kb| format!("{:.1} GiB", kb / 1048576.0));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    vec![
        (
            "machine".into(),
            format!(
                "{cores} cores ({model}), {memory} memory, Linux {}",
                kernel.trim()
            ),
        ),
        (
            "load average at start".into(),
            load.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        ),
    ]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if let Some(dir) = broker_memory::child_dir() {
        return broker_memory::child(dir).await;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let params = if args.iter().any(|a| a == "--quick") {
        Params::quick()
    } else {
        Params::full()
    };
    let write_report = args.iter().any(|a| a == "--write-report");
    let only: Option<Vec<u32>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect());
    let wanted = |n: u32| only.as_ref().is_none_or(|o| o.contains(&n));

    tracing_subscriber::registry()
        .with(relay::BatchTimer.with_filter(filter_fn(|m| {
            matches!(m.name(), "outbox.batch" | "outbox.claim")
        })))
        .with(tracing_subscriber::fmt::layer().with_filter(filter_fn(|m| {
            // lapin logs its own connection teardown as errors.
            *m.level() <= tracing::Level::WARN && !m.target().starts_with("lapin")
        })))
        .init();

    let suite_started = Instant::now();
    let mut report = Report::default();
    let command = format!(
        "cargo bench --bench suite -- {}",
        args.iter()
            .filter(|a| *a != "--bench")
            .cloned()
            .collect::<Vec<_>>()
            .join(" ")
    );
    report
        .context
        .push(("command".into(), format!("`{}`", command.trim())));
    report.context.push((
        "date".into(),
        shell("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default(),
    ));
    report.context.push((
        "commit".into(),
        shell("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_default(),
    ));
    report.context.extend(machine());
    report.context.push((
        "rustc".into(),
        shell("rustc", &["--version"]).unwrap_or_else(|| "unknown".into()),
    ));

    // Services.
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let pool: Option<PgPool> = match tokio::time::timeout(
        Duration::from_secs(10),
        enqueue::fresh_database(&url, 90),
    )
    .await
    {
        Ok(Ok(pool)) => {
            let version: String = sqlx::query_scalar("SHOW server_version")
                .fetch_one(&pool)
                .await?;
            report.context.push(("PostgreSQL".into(), version));
            Some(pool)
        }
        Ok(Err(e)) => {
            report.skip(
                "Postgres scenarios (1, 2, 3, 5, 7)",
                format!("PostgreSQL at {url} unreachable or unusable: {e:#}"),
            );
            None
        }
        Err(_) => {
            report.skip(
                "Postgres scenarios (1, 2, 3, 5, 7)",
                format!("PostgreSQL at {url} did not answer within 10 s"),
            );
            None
        }
    };
    let mysql_url =
        std::env::var("MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let mysql_pool = if wanted(6) {
        match tokio::time::timeout(Duration::from_secs(10), mysql::fresh_database(&mysql_url)).await
        {
            Ok(Ok(pool)) => {
                let version: String = sqlx::query_scalar("SELECT VERSION()")
                    .fetch_one(&pool)
                    .await?;
                report.context.push(("MySQL / MariaDB".into(), version));
                Some(pool)
            }
            Ok(Err(e)) => {
                report.skip(
                    "scenario 6, MySQL",
                    format!("MySQL at {mysql_url} unusable: {e:#}"),
                );
                None
            }
            Err(_) => {
                report.skip(
                    "scenario 6, MySQL",
                    format!("MySQL at {mysql_url} did not answer within 10 s"),
                );
                None
            }
        }
    } else {
        None
    };
    let nats_addr = std::env::var("NATS_ADDR").unwrap_or_else(|_| NATS_ADDR.into());
    let nats = match nats::Nats::connect(&nats_addr).await {
        Ok(n) if n.info.get("jetstream").and_then(|j| j.as_bool()) == Some(true) => {
            let version = n
                .info
                .get("version")
                .and_then(|v| v.as_str())
                .unwrap_or("?");
            report.context.push((
                "NATS".into(),
                format!("nats-server {version}, JetStream enabled"),
            ));
            true
        }
        Ok(_) => {
            report.skip(
                "scenario 4, NATS JetStream",
                format!("nats-server at {nats_addr} runs without JetStream (start it with -js)"),
            );
            false
        }
        Err(e) => {
            report.skip(
                "scenario 4, NATS JetStream",
                format!("nats-server at {nats_addr} unreachable: {e:#}"),
            );
            false
        }
    };
    let rabbit_url = std::env::var("RABBITMQ_URL").unwrap_or_else(|_| RABBIT_URL.into());
    let rabbit = match tokio::time::timeout(
        Duration::from_secs(5),
        lapin::Connection::connect(&rabbit_url, lapin::ConnectionProperties::default()),
    )
    .await
    {
        Ok(Ok(connection)) => {
            let _ = connection.close(200, "bye").await;
            let version = shell("rabbitmqctl", &["version"])
                .unwrap_or_else(|| "version unknown (rabbitmqctl failed)".into());
            report.context.push(("RabbitMQ".into(), version));
            true
        }
        Ok(Err(e)) => {
            report.skip(
                "scenarios 4 and 7, RabbitMQ",
                format!("RabbitMQ at {rabbit_url} unreachable: {e}"),
            );
            false
        }
        Err(_) => {
            report.skip(
                "scenarios 4 and 7, RabbitMQ",
                format!("RabbitMQ at {rabbit_url} did not answer within 5 s"),
            );
            false
        }
    };
    report.context.push((
        "parameters".into(),
        format!(
            "{} mode, {} repeats; enqueue: {} rounds per variant, enqueue_batch of {} rows; relay: batch {}, backlog {}{}; latency: {}; publish: {:?} per point; idempotency: {} deliveries",
            params.mode,
            params.repeats,
            params.enqueue_rounds,
            params.batch_rows,
            relay::BATCH,
            params.backlog,
            params.big_backlog.map_or(String::new(), |(n, r)| format!(" and {n} ({r} repeats)")),
            params.latency_rates.iter().map(|(r, s)| format!("{r} msg/s for {s} s")).collect::<Vec<_>>().join(", "),
            params.publish_duration,
            params.idempotency_count,
        ),
    ));
    for (key, value) in &report.context {
        println!("# {key}: {value}");
    }

    for repeat in 1..=params.repeats {
        println!(
            "# repeat {repeat}/{} ({:.0?} elapsed)",
            params.repeats,
            suite_started.elapsed()
        );
        if let Some(pool) = &pool {
            if wanted(1) {
                enqueue::run(pool, &params, &mut report).await?;
            }
            if wanted(2) {
                relay::run(pool, &params, params.backlog, false, &mut report).await?;
                if let Some((big, repeats)) = params.big_backlog
                    && repeat <= repeats
                {
                    relay::run(pool, &params, big, true, &mut report).await?;
                }
            }
            if wanted(3) {
                latency::run(pool, &params, &mut report).await?;
            }
            if wanted(5) {
                idempotency::run(pool, &params, &mut report).await?;
            }
            if wanted(7) && rabbit {
                rabbitmq::run(pool, &rabbit_url, &params, &mut report).await?;
            }
            #[cfg(feature = "nats")]
            if wanted(8) && nats {
                nats_relay::run(pool, &nats_addr, &params, &mut report).await?;
            }
            if wanted(10) {
                let brokers = consumers::Brokers {
                    nats: nats.then(|| format!("nats://{nats_addr}")),
                    rabbitmq: rabbit.then(|| rabbit_url.clone()),
                };
                consumers::run(pool, &brokers, &params, &mut report).await?;
            }
            #[cfg(not(feature = "nats"))]
            if wanted(8) && repeat == 1 {
                report.skip(
                    "scenario 8, relay → NATS JetStream",
                    "built without the `nats` feature: cargo bench --bench suite --features nats",
                );
            }
        }
        if let Some(pool) = &mysql_pool
            && wanted(6)
        {
            mysql::run(pool, &params, &mut report).await?;
        }
        if wanted(4) {
            let systems = brokers::Systems { nats, rabbit };
            brokers::run(&params, &systems, &mut report).await?;
        }
        if wanted(9) {
            replication::run(&params, &mut report).await?;
        }
        if wanted(12) {
            sqlite::run(&params, &mut report).await?;
        }
        if wanted(11) && repeat == 1 {
            broker_memory::run(&params, &mut report).await?;
        }
    }
    targets::notes(&mut report);
    report.context.push((
        "suite duration".into(),
        format!("{:.0?}", suite_started.elapsed()),
    ));
    report.context.push((
        "load average at end".into(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    ));

    let targets = targets::targets(&params);
    let dir = target_dir().join("bench-report");
    let markdown = report.write(&dir, &targets)?;
    println!("\n{markdown}");
    println!("# wrote {}/report.md and report.json", dir.display());
    if write_report {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/REPORT.md");
        std::fs::write(&path, &markdown)?;
        println!("# wrote {}", path.display());
    }
    let _ = std::fs::remove_dir_all(target_dir().join("bench-data"));
    Ok(())
}
