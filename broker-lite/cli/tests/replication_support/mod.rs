//! What the replication tests share: `broker-lite serve` nodes on free ports of 127.0.0.1 with
//! their own data directories, signals, a producer load and the failover loop.

#![allow(dead_code, unreachable_pub)]

use broker_lite_client::protocol::{Message, SendStatus};
use broker_lite_client::{Consumer, ConsumerConfig, Producer, ProducerConfig};
use std::collections::HashSet;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use uuid::Uuid;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_broker-lite");
/// Waits longer than this fail the test instead of hanging it.
pub(crate) const PATIENCE: Duration = Duration::from_secs(20);
pub(crate) const TOPIC: &str = "payments";

/// A free port on 127.0.0.1 (bound and released: a node restarted on its address keeps it).
pub(crate) fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// One `broker-lite serve` process; killed on drop.
pub(crate) struct Node {
    pub(crate) child: Child,
    pub(crate) addr: String,
    pub(crate) dir: std::path::PathBuf,
}

pub(crate) async fn spawn(dir: &std::path::Path, addr: &str, role: &[&str]) -> Node {
    let mut child = Command::new(BIN)
        .args(["serve", "--flush", "sync", "--segment-bytes", "16777216"])
        .args(["--listen", addr])
        .args(role)
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the broker binary starts");
    let mut line = String::new();
    tokio::time::timeout(
        PATIENCE,
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line),
    )
    .await
    .expect("the broker starts in time")
    .unwrap();
    assert!(
        line.starts_with("broker-lite listening on "),
        "unexpected first line {line:?}"
    );
    Node {
        child,
        addr: addr.to_owned(),
        dir: dir.to_owned(),
    }
}

pub(crate) async fn leader(dir: &std::path::Path, addr: &str, extra: &[&str]) -> Node {
    let mut args = vec!["--role", "leader"];
    args.extend_from_slice(extra);
    spawn(dir, addr, &args).await
}

pub(crate) async fn follower(dir: &std::path::Path, addr: &str, leader: &str) -> Node {
    follower_with(dir, addr, leader, addr, &[]).await
}

/// A follower of `leader` named `name`, with `extra` arguments (`--replica-fetch-bytes`, ...).
pub(crate) async fn follower_with(
    dir: &std::path::Path,
    addr: &str,
    leader: &str,
    name: &str,
    extra: &[&str],
) -> Node {
    let mut args = vec![
        "--role",
        "follower",
        "--leader-address",
        leader,
        "--follower-name",
        name,
    ];
    args.extend_from_slice(extra);
    spawn(dir, addr, &args).await
}

/// A leader (with `leader_args`) in `root/a` and its follower in `root/b`, once SEND_OK comes.
pub(crate) async fn pair(root: &std::path::Path, leader_args: &[&str]) -> (Node, Node) {
    let lead = leader(&root.join("a"), &free_port(), leader_args).await;
    let follow = follower(&root.join("b"), &free_port(), &lead.addr).await;
    until_status(&lead.addr, SendStatus::SendOk).await;
    (lead, follow)
}

pub(crate) async fn kill9(node: &mut Node) {
    node.child.start_kill().unwrap();
    node.child.wait().await.unwrap();
}

pub(crate) fn signal(node: &Node, sig: &str) {
    let pid = node.child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

pub(crate) fn producer_config() -> ProducerConfig {
    let mut c = ProducerConfig::default();
    c.retries = 0;
    c.send_timeout = Duration::from_secs(5);
    c
}

pub(crate) fn message(body: String) -> Message {
    let mut m = Message::new(TOPIC, body.into_bytes());
    m.message_id = Some(Uuid::now_v7());
    m
}

/// Sends probes until one gets `want` (a follower caught up, or left the in-sync set).
pub(crate) async fn until_status(addr: &str, want: SendStatus) {
    let producer = Producer::connect(addr, producer_config()).await.unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        match producer.send(message("probe".into())).await {
            Ok(r) if r.status == want => return,
            Ok(r) => last = Some(format!("{:?}", r.status)),
            Err(e) => last = Some(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no {want:?} within {PATIENCE:?}; last answer {last:?}");
}

/// Every id delivered on `addr` to a fresh group, each acked, until `want` are all seen (bounded).
pub(crate) async fn consume_all(addr: &str, want: &HashSet<Uuid>) -> Vec<Uuid> {
    let consumer = Consumer::connect(addr, ConsumerConfig::new("verify", TOPIC))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut idle = 0;
    while tokio::time::Instant::now() < deadline {
        let batch = consumer
            .pull(256, Duration::from_millis(300))
            .await
            .unwrap();
        idle = if batch.is_empty() { idle + 1 } else { 0 };
        for d in &batch {
            seen.push(d.message.message_id);
            consumer.ack(d).await.unwrap();
        }
        let have: HashSet<_> = seen.iter().copied().collect();
        // Done when everything wanted came, or nothing came three long polls in a row.
        if (want.is_subset(&have) && idle >= 1) || idle >= 3 {
            break;
        }
    }
    seen
}

/// Producers sending until `stop`, recording the ids answered `SEND_OK`.
pub(crate) fn load(
    addr: &str,
    producers: usize,
    acked: Arc<Mutex<Vec<Uuid>>>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..producers)
        .map(|p| {
            let (addr, acked, stop) = (addr.to_owned(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                let Ok(producer) = Producer::connect(addr.as_str(), producer_config()).await else {
                    return;
                };
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let m = message(format!("p{p}-{i}"));
                    let id = m.message_id.unwrap();
                    match producer.send(m).await {
                        Ok(r) if r.status == SendStatus::SendOk => acked.lock().unwrap().push(id),
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            })
        })
        .collect()
}

pub(crate) async fn wait_acked(acked: &Mutex<Vec<Uuid>>, at_least: usize) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while acked.lock().unwrap().len() < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the producers stalled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The leader is killed under load from several producers while its follower lags (stopped with
/// SIGSTOP for a moment of load: without it the follower is a few microseconds behind and a
/// broken SYNC_MASTER would rarely show), the follower (killed too) is promoted by restarting it
/// as the leader, a fresh follower joins; `failovers` times. Returns the SEND_OK ids lost on the
/// last leader; asserts none was delivered twice.
pub(crate) async fn failovers(failovers: usize, replication: &str) -> Vec<Uuid> {
    let mode = ["--replication", replication, "--slave-timeout-ms", "2000"];
    let mode = if replication == "async" {
        &["--replication", "async"][..]
    } else {
        &mode[..]
    };
    let root = tempfile::tempdir().unwrap();
    let mut n = 0;
    let mut fresh = || {
        n += 1;
        root.path().join(format!("node{n}"))
    };
    let mut lead = leader(&fresh(), &free_port(), mode).await;
    let mut follow = follower(&fresh(), &free_port(), &lead.addr).await;
    until_status(&lead.addr, SendStatus::SendOk).await;
    let acked = Arc::new(Mutex::new(Vec::new()));
    for round in 0..failovers {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = load(&lead.addr, 4, acked.clone(), stop.clone());
        let before = acked.lock().unwrap().len();
        wait_acked(&acked, before + 200).await;
        signal(&follow, "-STOP");
        // A moment of load while the follower lags: SYNC_MASTER acknowledges nothing in it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        kill9(&mut lead).await;
        signal(&follow, "-CONT");
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        // Promotion: the follower stops (killed too, the harder case) and restarts as leader.
        kill9(&mut follow).await;
        let (dir, addr) = (follow.dir.clone(), follow.addr.clone());
        lead = leader(&dir, &addr, mode).await;
        follow = follower(&fresh(), &free_port(), &lead.addr).await;
        until_status(&lead.addr, SendStatus::SendOk).await;
        eprintln!(
            "failover {}: {} messages acknowledged so far",
            round + 1,
            acked.lock().unwrap().len()
        );
    }
    let want: HashSet<Uuid> = acked.lock().unwrap().iter().copied().collect();
    let seen = consume_all(&lead.addr, &want).await;
    let have: HashSet<Uuid> = seen.iter().copied().collect();
    assert_eq!(have.len(), seen.len(), "a message was delivered twice");
    eprintln!(
        "{replication}: {} acknowledged, {} lost after {failovers} failovers",
        want.len(),
        want.difference(&have).count()
    );
    want.difference(&have).copied().collect()
}

/// `broker-lite --addr <addr> promote <args>`.
pub(crate) async fn promote(addr: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(BIN)
        .args(["--addr", addr, "promote"])
        .args(args)
        .output()
        .await
        .unwrap()
}

pub(crate) fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A node's replication status from `describe`.
pub(crate) async fn status(addr: &str) -> broker_lite_client::protocol::ReplicationStatus {
    let admin =
        broker_lite_client::Admin::connect(addr, broker_lite_client::AdminConfig::default())
            .await
            .unwrap();
    admin.describe().await.unwrap().replication_status.unwrap()
}

/// Polls `describe` on `follower` until its log end reaches the leader's (bounded).
pub(crate) async fn until_caught_up(leader: &str, follower: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (l, f) = (status(leader).await.log_end, status(follower).await.log_end);
        if f == l {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the follower stayed at {f}, the leader at {l}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SEND_OK ids of `n` sends to `addr`.
pub(crate) async fn send_acked(addr: &str, n: usize) -> HashSet<uuid::Uuid> {
    let producer = Producer::connect(addr, producer_config()).await.unwrap();
    let mut acked = HashSet::new();
    for i in 0..n {
        let m = message(format!("m{i}"));
        let id = m.message_id.unwrap();
        let r = producer.send(m).await.unwrap();
        assert_eq!(r.status, SendStatus::SendOk, "send {i}");
        acked.insert(id);
    }
    acked
}
