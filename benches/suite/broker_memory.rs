//! Scenario 11, broker-lite at scale (issue 15): the broker's memory and its restart-to-serving
//! time against the number of retained messages (1 KiB bodies, a key each, default store
//! configuration: SYNC_FLUSH, 1 GiB segments).
//!
//! The suite fills a broker in this process with `send_batch` (1000 messages per call), closes
//! it, then restarts it as a child process (this binary again, selected by an environment
//! variable) and takes the time from the spawn until the child has opened the broker and answered
//! a lookup by id and a read by queue offset; the child then reports its resident set
//! (`VmRSS`, and `VmHWM`, the peak, from `/proc/self/status`). Quick mode: 200k messages; full
//! mode: 1M and 10M (10 GiB of log; it takes its time). `BENCH_BROKER_MEMORY=300000,2000000`
//! picks other counts.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use broker_lite::broker::{Broker, BrokerConfig, SendRequest};
use bytes::Bytes;
use uuid::Uuid;

use crate::Params;
use crate::report::Report;

pub(crate) const SCENARIO: &str =
    "11. broker-lite memory and restart vs retained messages (1 KiB, keyed, SYNC_FLUSH)";

const CHILD_DIR: &str = "COURIER_BENCH_BROKER_MEMORY_DIR";
const CHILD_PROBE: &str = "COURIER_BENCH_BROKER_MEMORY_PROBE";
const TOPIC: &str = "memory";

/// The data directory when this process is the restarted broker of the scenario.
pub(crate) fn child_dir() -> Option<PathBuf> {
    std::env::var_os(CHILD_DIR).map(PathBuf::from)
}

fn config() -> BrokerConfig {
    BrokerConfig::default()
}

/// `VmRSS` and `VmHWM` of `/proc/<pid>/status`, in KiB.
fn rss_kib(pid: &str) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// The child: opens the broker, proves it serves (lookup by id, read by offset), reports its
/// memory and waits for its stdin to close.
pub(crate) async fn child(dir: PathBuf) -> anyhow::Result<()> {
    let probe: Uuid = std::env::var(CHILD_PROBE)?.parse()?;
    let started = Instant::now();
    let broker = Broker::open(&dir, config()).await?;
    let found = broker
        .lookup(probe)
        .await?
        .context("the probe message is not found by id")?;
    let read = broker
        .store()
        .read_queue(TOPIC, found.queue_id, found.queue_offset, 1, usize::MAX)
        .await?;
    if read.first().map(|r| r.message_id) != Some(probe) {
        bail!("the probe message is not at its queue offset");
    }
    println!("SERVING {:.3}", started.elapsed().as_secs_f64() * 1e3);
    let (rss, hwm) = rss_kib("self")?;
    println!("RSS {rss} {hwm}");
    std::io::stdout().flush()?;
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)
    })
    .await??;
    broker.close().await?;
    Ok(())
}

/// Fills a new broker in `dir` with `count` messages; the id of one in the middle, and msg/s.
async fn fill(dir: &Path, count: usize) -> anyhow::Result<(Uuid, f64)> {
    let broker = Broker::open(dir, config()).await?;
    let body = Bytes::from(vec![b'm'; 1024]);
    let started = Instant::now();
    let mut probe = None;
    let mut sent = 0;
    while sent < count {
        let n = (count - sent).min(1000);
        let batch: Vec<SendRequest> = (sent..sent + n)
            .map(|i| SendRequest::new(TOPIC, body.clone()).with_key(format!("key-{}", i % 10_000)))
            .collect();
        let results = broker.send_batch(batch).await?;
        if sent <= count / 2 && count / 2 < sent + n {
            probe = Some(results[count / 2 - sent].message_id);
        }
        sent += n;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    broker.close().await?;
    Ok((probe.context("no message was sent")?, rate))
}

/// Restarts the broker as a child: (ms from spawn to serving, ms the open took inside the
/// child, RSS KiB, peak RSS KiB).
fn restart(dir: &Path, probe: Uuid) -> anyhow::Result<(f64, f64, u64, u64)> {
    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe()?)
        .env(CHILD_DIR, dir)
        .env(CHILD_PROBE, probe.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("child stdout")?).lines();
    let mut serving = None;
    let mut inside = 0.0;
    let mut rss = None;
    for line in lines.by_ref() {
        let line = line?;
        if let Some(ms) = line.strip_prefix("SERVING ") {
            serving = Some(started.elapsed().as_secs_f64() * 1e3);
            inside = ms.parse()?;
        } else if let Some(v) = line.strip_prefix("RSS ") {
            let mut it = v.split(' ').map(str::parse::<u64>);
            rss = Some((it.next().context("rss")??, it.next().context("hwm")??));
            break;
        }
    }
    // Cross-check from outside, as a supervisor would see it.
    let (outside, _) = rss_kib(&child.id().to_string())?;
    drop(child.stdin.take());
    let status = child.wait()?;
    if !status.success() {
        bail!("the restarted broker exited with {status}");
    }
    let (rss, hwm) = rss.context("the restarted broker did not report serving")?;
    let serving = serving.context("no SERVING line")?;
    Ok((serving, inside, rss.max(outside), hwm))
}

fn counts(params: &Params) -> Vec<usize> {
    if let Ok(list) = std::env::var("BENCH_BROKER_MEMORY") {
        return list
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .collect();
    }
    match params.mode {
        "quick" => vec![200_000],
        _ => vec![1_000_000, 10_000_000],
    }
}

fn label(count: usize) -> String {
    match count {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M retained", n / 1_000_000),
        n if n % 1000 == 0 => format!("{}k retained", n / 1000),
        n => format!("{n} retained"),
    }
}

pub(crate) async fn run(params: &Params, report: &mut Report) -> anyhow::Result<()> {
    let parent = crate::target_dir().join("bench-data");
    std::fs::create_dir_all(&parent)?;
    for count in counts(params) {
        let dir = tempfile::tempdir_in(&parent)?;
        let label = label(count);
        println!("# scenario 11: filling a broker with {count} messages");
        let (probe, rate) = fill(dir.path(), count).await?;
        report.add(
            SCENARIO,
            &format!("{label}: fill with send_batch(1000)"),
            "msg/s",
            rate,
        );
        let disk: u64 = std::fs::read_dir(dir.path())?
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum();
        report.add(
            SCENARIO,
            &format!("{label}: data directory"),
            "MiB",
            disk as f64 / 1048576.0,
        );
        for _ in 0..params.repeats {
            let dir = dir.path().to_path_buf();
            let (serving, inside, rss, hwm) =
                tokio::task::spawn_blocking(move || restart(&dir, probe)).await??;
            report.add(
                SCENARIO,
                &format!("{label}: restart to serving (spawn to first answer)"),
                "ms",
                serving,
            );
            report.add(
                SCENARIO,
                &format!("{label}: broker open inside the process"),
                "ms",
                inside,
            );
            report.add(
                SCENARIO,
                &format!("{label}: RSS serving"),
                "MiB",
                rss as f64 / 1024.0,
            );
            report.add(
                SCENARIO,
                &format!("{label}: peak RSS (VmHWM)"),
                "MiB",
                hwm as f64 / 1024.0,
            );
        }
    }
    Ok(())
}
