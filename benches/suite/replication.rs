//! Scenario 9, replication cost (issue 13): publish throughput and acknowledgement latency of a
//! broker-lite leader with one follower under `SYNC_MASTER` and `ASYNC_MASTER` (leader and
//! follower both `SYNC_FLUSH`), beside a single `SYNC_FLUSH` node, at 1, 16 and 64 producers,
//! 1 KiB messages, one in flight per producer, each on its own connection, in the same run.
//!
//! Leader and follower run in this process, each with its own store under the target dir (not
//! /tmp, which may be a tmpfs), talking over loopback TCP as separate machines would.

use std::time::{Duration, Instant};

use anyhow::bail;
use broker_lite::embedded::{self, EmbeddedBroker, EmbeddedConfig};
use broker_lite::protocol::Replication;
use broker_lite::replication::{FollowerConfig, FollowerNode, start_follower};
use broker_lite::storage::FlushMode;
use bytes::Bytes;
use courier::broker::protocol::{Message, SendStatus};
use courier::broker::{Producer, ProducerConfig};

use crate::Params;
use crate::report::{Report, quantile};

pub(crate) const SCENARIO: &str = "9. Replication: SYNC_MASTER / ASYNC_MASTER leader + 1 follower vs single node (1 KiB, SYNC_FLUSH everywhere)";

const SYSTEMS: [&str; 3] = [
    "single node SYNC_FLUSH",
    "SYNC_MASTER + SYNC_FLUSH",
    "ASYNC_MASTER + SYNC_FLUSH",
];

/// A leader (or single node) and its follower, with their data directories.
struct Cluster {
    leader: EmbeddedBroker,
    follower: Option<FollowerNode>,
    _dirs: Vec<tempfile::TempDir>,
}

async fn start(system: &str) -> anyhow::Result<Cluster> {
    let parent = crate::target_dir().join("bench-data");
    std::fs::create_dir_all(&parent)?;
    let leader_dir = tempfile::tempdir_in(&parent)?;
    let mut config = EmbeddedConfig::default();
    config.broker.store.flush_mode = FlushMode::Sync;
    config.broker.replication = if system.starts_with("SYNC_MASTER") {
        Replication::SyncMaster {
            min_sync_replicas: 1,
            slave_timeout: Duration::from_secs(3),
        }
    } else if system.starts_with("ASYNC_MASTER") {
        Replication::AsyncMaster
    } else {
        Replication::None
    };
    let leader = embedded::start(leader_dir.path(), config.clone()).await?;
    let mut dirs = vec![leader_dir];
    let follower = if config.broker.replication == Replication::None {
        None
    } else {
        let dir = tempfile::tempdir_in(&parent)?;
        let node = start_follower(
            dir.path(),
            config,
            FollowerConfig::new(leader.addr().to_string(), "bench-follower"),
        )
        .await?;
        dirs.push(dir);
        Some(node)
    };
    Ok(Cluster {
        leader,
        follower,
        _dirs: dirs,
    })
}

/// Waits (bounded) until a probe gets `SEND_OK`: under `SYNC_MASTER` the follower is in sync.
async fn ready(producer: &Producer) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = producer
            .send(Message::new("publish", Bytes::from_static(b"probe")))
            .await?;
        if r.status == SendStatus::SendOk {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the follower did not get in sync within 20 s (last status {:?})",
                r.status
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `producers` producers for `duration`; msg/s and every ack latency in ms.
async fn measure(
    system: &str,
    producers: usize,
    duration: Duration,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let cluster = start(system).await?;
    let mut config = ProducerConfig::default();
    config.retries = 0;
    config.send_timeout = Duration::from_secs(10);
    let mut clients = Vec::new();
    for _ in 0..producers {
        clients.push(Producer::connect(cluster.leader.addr(), config.clone()).await?);
    }
    ready(&clients[0]).await?;
    let payload = Bytes::from(vec![b'x'; 1024]);
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|producer| {
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    let r = producer
                        .send(Message::new("publish", payload.clone()))
                        .await?;
                    if r.status != SendStatus::SendOk {
                        bail!("broker-lite answered {:?}", r.status);
                    }
                    latencies.push(sent.elapsed().as_secs_f64() * 1e3);
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let took = started.elapsed().as_secs_f64();
    if let Some(follower) = cluster.follower {
        follower.shutdown().await?;
    }
    cluster.leader.shutdown().await?;
    Ok((all.len() as f64 / took, all))
}

pub(crate) async fn run(params: &Params, report: &mut Report) -> anyhow::Result<()> {
    for &producers in &[1usize, 16, 64] {
        let mut figures = Vec::new();
        for system in SYSTEMS {
            let (rate, mut latencies) = measure(system, producers, params.publish_duration).await?;
            latencies.sort_by(f64::total_cmp);
            let p99 = quantile(&latencies, 0.99);
            let label = format!(
                "{system}, {producers} producer{}",
                if producers > 1 { "s" } else { "" }
            );
            report.add(SCENARIO, &format!("{label}: throughput"), "msg/s", rate);
            report.add(
                SCENARIO,
                &format!("{label}: ack p50"),
                "ms",
                quantile(&latencies, 0.5),
            );
            report.add(SCENARIO, &format!("{label}: ack p99"), "ms", p99);
            figures.push((rate, p99));
        }
        let (single_rate, single_p99) = figures[0];
        for (i, name) in [(1, "SYNC_MASTER"), (2, "ASYNC_MASTER")] {
            let (rate, p99) = figures[i];
            report.add(
                SCENARIO,
                &format!("ratio {name} / single node throughput, {producers} producers"),
                "x",
                rate / single_rate,
            );
            report.add(
                SCENARIO,
                &format!("ratio {name} / single node ack p99, {producers} producers"),
                "x",
                p99 / single_p99,
            );
        }
    }
    Ok(())
}
