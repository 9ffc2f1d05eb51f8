//! Replication (issue 13) with real `broker-lite serve` processes on 127.0.0.1, each on its own
//! data directory, killed with SIGKILL.

mod replication_support;

use broker_lite_client::protocol::SendStatus;
use broker_lite_client::{Consumer, ConsumerConfig, Producer, ProducerConfig};
use std::collections::HashSet;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use uuid::Uuid;

use replication_support::*;

#[tokio::test]
async fn sync_master_failover_loses_no_acknowledged_message() {
    let lost = failovers(2, "sync").await;
    assert!(
        lost.is_empty(),
        "{} acknowledged messages lost, first: {:?}",
        lost.len(),
        lost.first()
    );
}

#[tokio::test]
#[ignore = "long mode: 10 failovers"]
async fn sync_master_ten_failovers() {
    let lost = failovers(10, "sync").await;
    assert!(
        lost.is_empty(),
        "{} acknowledged messages lost, first: {:?}",
        lost.len(),
        lost.first()
    );
}

/// ASYNC_MASTER acknowledges before replication: the same failovers lose what the follower had
/// not copied. The count is measured and printed (the documented window), not hidden.
#[tokio::test]
async fn async_master_failover_loss_is_measured() {
    let lost = failovers(2, "async").await;
    eprintln!("ASYNC_MASTER lost {} acknowledged messages", lost.len());
}

/// No follower at all: SLAVE_NOT_AVAILABLE at once, not SEND_OK.
#[tokio::test]
async fn a_sync_master_without_followers_answers_slave_not_available() {
    let dir = tempfile::tempdir().unwrap();
    let lead = leader(dir.path(), &free_port(), &[]).await;
    let producer = Producer::connect(lead.addr.as_str(), producer_config())
        .await
        .unwrap();
    let r = producer.send(message("x".into())).await.unwrap();
    assert_eq!(r.status, SendStatus::SlaveNotAvailable);
}

/// A stopped follower: FLUSH_SLAVE_TIMEOUT, then SLAVE_NOT_AVAILABLE once it left the in-sync
/// set; resumed, it catches up and SEND_OK comes back (no permanent SLAVE_NOT_AVAILABLE,
/// RocketMQ #5579).
#[tokio::test]
async fn a_stopped_follower_times_out_and_comes_back() {
    let root = tempfile::tempdir().unwrap();
    let lead = leader(
        &root.path().join("a"),
        &free_port(),
        &["--slave-timeout-ms", "400"],
    )
    .await;
    let follow = follower(&root.path().join("b"), &free_port(), &lead.addr).await;
    until_status(&lead.addr, SendStatus::SendOk).await;
    signal(&follow, "-STOP");
    until_status(&lead.addr, SendStatus::FlushSlaveTimeout).await;
    until_status(&lead.addr, SendStatus::SlaveNotAvailable).await;
    signal(&follow, "-CONT");
    until_status(&lead.addr, SendStatus::SendOk).await;
}

/// Only a user with the admin permission may fetch the log (no fake offsets, RocketMQ #3015):
/// a follower of a leader that does not know it never gets a SEND_OK through.
#[tokio::test]
async fn a_follower_without_credentials_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("leader.toml");
    std::fs::write(
        &config,
        "[[users]]\nname = \"app\"\npassword_env = \"REPL_TEST_PASSWORD\"\nproduce = [\"*\"]\n",
    )
    .unwrap();
    let lead = {
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--flush",
                "sync",
                "--segment-bytes",
                "16777216",
                "--role",
                "leader",
            ])
            .args(["--listen", &free_port(), "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(root.path().join("a"))
            .env("REPL_TEST_PASSWORD", "secret-password")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .await
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("broker-lite listening on ")
            .unwrap()
            .to_owned();
        (child, addr)
    };
    let mut follow = Command::new(BIN)
        .args([
            "serve",
            "--flush",
            "sync",
            "--segment-bytes",
            "16777216",
            "--role",
            "follower",
        ])
        .args(["--listen", &free_port(), "--leader-address", &lead.1])
        .args([
            "--replication-user",
            "app",
            "--replication-password-env",
            "REPL_TEST_PASSWORD",
        ])
        .arg("--data-dir")
        .arg(root.path().join("b"))
        .env("REPL_TEST_PASSWORD", "secret-password")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(follow.stderr.take().unwrap()).lines();
    let refused = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if line.contains("replica_fetch") || line.contains("admin") {
                return line;
            }
        }
        panic!("the follower ended without a refusal");
    })
    .await
    .expect("the leader refuses the follower's fetch in time");
    assert!(refused.contains("replication interrupted"), "{refused}");
}

/// Consumers of a SYNC_MASTER leader see only replicated records: a message written while the
/// follower is stopped is not delivered until the follower has it.
#[tokio::test]
async fn consumers_see_only_replicated_messages() {
    let root = tempfile::tempdir().unwrap();
    let lead = leader(
        &root.path().join("a"),
        &free_port(),
        &["--slave-timeout-ms", "400"],
    )
    .await;
    let follow = follower(&root.path().join("b"), &free_port(), &lead.addr).await;
    until_status(&lead.addr, SendStatus::SendOk).await;
    let consumer = Consumer::connect(lead.addr.as_str(), ConsumerConfig::new("g", TOPIC))
        .await
        .unwrap();
    // Drain the probes.
    while !consumer
        .pull(256, Duration::from_millis(200))
        .await
        .unwrap()
        .is_empty()
    {}
    signal(&follow, "-STOP");
    let producer = Producer::connect(lead.addr.as_str(), producer_config())
        .await
        .unwrap();
    let m = message("unreplicated".into());
    let id = m.message_id.unwrap();
    let r = producer.send(m).await.unwrap();
    assert_ne!(r.status, SendStatus::SendOk);
    let early = consumer
        .pull(256, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(
        early.iter().all(|d| d.message.message_id != id),
        "a message the follower does not hold was delivered"
    );
    signal(&follow, "-CONT");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "never delivered");
        let batch = consumer
            .pull(256, Duration::from_millis(300))
            .await
            .unwrap();
        if batch.iter().any(|d| d.message.message_id == id) {
            break;
        }
    }
}

/// A producer retries SLAVE_NOT_AVAILABLE with the same message id, and the leader stores the
/// message once: after a follower joins, it is delivered exactly once.
#[tokio::test]
async fn retries_of_an_unreplicated_send_are_stored_once() {
    let root = tempfile::tempdir().unwrap();
    let lead = leader(
        &root.path().join("a"),
        &free_port(),
        &["--slave-timeout-ms", "500"],
    )
    .await;
    let mut config = producer_config();
    config.retries = 3;
    config.retry_backoff = Duration::from_millis(5);
    let producer = Producer::connect(lead.addr.as_str(), config).await.unwrap();
    let m = message("retried".into());
    let id = m.message_id.unwrap();
    let r = producer.send(m.clone()).await.unwrap();
    assert_eq!(r.status, SendStatus::SlaveNotAvailable, "no follower yet");
    let _follow = follower(&root.path().join("b"), &free_port(), &lead.addr).await;
    until_status(&lead.addr, SendStatus::SendOk).await;
    let again = producer.send(m).await.unwrap();
    assert_eq!(
        again.status,
        SendStatus::SendOk,
        "the stored copy is replicated now"
    );
    assert_eq!(
        (again.queue_id, again.queue_offset),
        (r.queue_id, r.queue_offset)
    );
    let seen = consume_all(&lead.addr, &HashSet::from([id])).await;
    assert_eq!(
        seen.iter().filter(|s| **s == id).count(),
        1,
        "stored once: {seen:?}"
    );
}

/// A former leader that wrote while its follower was cut off (nothing of it acknowledged) comes
/// back after the follower was promoted: it cuts that suffix, follows the new leader, and when
/// it is promoted again no message written after it was superseded reaches a consumer.
#[tokio::test]
async fn a_returning_old_leader_truncates_and_follows() {
    let root = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (root.path().join("a"), root.path().join("b"));
    let (addr_a, addr_b) = (free_port(), free_port());
    let timeout = ["--slave-timeout-ms", "400"];
    let mut a = leader(&dir_a, &addr_a, &timeout).await;
    let mut b = follower(&dir_b, &addr_b, &addr_a).await;
    until_status(&addr_a, SendStatus::SendOk).await;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    for t in load(&addr_a, 2, acked.clone(), stop.clone()) {
        wait_acked(&acked, 50).await;
        stop.store(true, Ordering::Relaxed);
        t.await.unwrap();
    }
    // Cut off: what A writes now is on A only (never SEND_OK).
    signal(&b, "-STOP");
    let producer = Producer::connect(addr_a.as_str(), producer_config())
        .await
        .unwrap();
    let mut orphans = HashSet::new();
    for i in 0..20 {
        let m = message(format!("orphan {i}"));
        orphans.insert(m.message_id.unwrap());
        let r = producer.send(m).await.unwrap();
        assert_ne!(r.status, SendStatus::SendOk);
    }
    drop(producer);
    kill9(&mut a).await;
    // Killed while stopped: B cannot store a fetch answer still in its socket buffer.
    kill9(&mut b).await;
    // B promoted; A returns as its follower and must cut its suffix to get in sync.
    let mut b = leader(&dir_b, &addr_b, &timeout).await;
    let mut a = follower(&dir_a, &addr_a, &addr_b).await;
    until_status(&addr_b, SendStatus::SendOk).await;
    let stop = Arc::new(AtomicBool::new(false));
    for t in load(&addr_b, 2, acked.clone(), stop.clone()) {
        wait_acked(&acked, 100).await;
        stop.store(true, Ordering::Relaxed);
        t.await.unwrap();
    }
    // A promoted again: it holds everything acknowledged and none of the orphans.
    kill9(&mut b).await;
    kill9(&mut a).await;
    let a = leader(&dir_a, &addr_a, &timeout).await;
    let want: HashSet<Uuid> = acked.lock().unwrap().iter().copied().collect();
    let seen: HashSet<Uuid> = consume_all(&a.addr, &want).await.into_iter().collect();
    assert!(want.is_subset(&seen), "acknowledged messages missing");
    assert!(
        seen.is_disjoint(&orphans),
        "a message written after fencing reached a consumer"
    );
}

/// Clients given the addresses of a replicated pair, follower first, find the leader: the
/// producer, the consumer (subscribe, pull, ack) and admin calls move along the list past the
/// follower's refusal.
#[tokio::test]
async fn clients_move_along_their_address_list_to_the_leader() {
    let root = tempfile::tempdir().unwrap();
    let lead = leader(
        &root.path().join("a"),
        &free_port(),
        &["--slave-timeout-ms", "2000"],
    )
    .await;
    let follow = follower(&root.path().join("b"), &free_port(), &lead.addr).await;
    until_status(&lead.addr, SendStatus::SendOk).await;
    let list = format!("{};{}", follow.addr, lead.addr);
    let mut config = ProducerConfig::default();
    config.send_timeout = Duration::from_secs(5);
    config.retry_backoff = Duration::from_millis(5);
    let producer = Producer::connect(list.as_str(), config).await.unwrap();
    let m = message("found the leader".into());
    let id = m.message_id.unwrap();
    let r = producer.send(m).await.unwrap();
    assert_eq!(r.status, SendStatus::SendOk);
    let admin = broker_lite_client::Admin::connect(
        list.as_str(),
        broker_lite_client::AdminConfig::default(),
    )
    .await
    .unwrap();
    let topics = admin.topics().await.expect("admin calls reach the leader");
    assert!(topics.iter().any(|t| t.name == TOPIC), "{topics:?}");
    let seen = consume_all(&list, &HashSet::from([id])).await;
    assert!(
        seen.contains(&id),
        "the consumer reached the leader: {seen:?}"
    );
}

/// `describe` on a leader names its followers, the in-sync set, lag and epoch; on a follower
/// its leader.
#[tokio::test]
async fn describe_reports_role_epoch_and_followers() {
    let root = tempfile::tempdir().unwrap();
    let lead = leader(&root.path().join("a"), &free_port(), &[]).await;
    let follow = follower(&root.path().join("b"), &free_port(), &lead.addr).await;
    until_status(&lead.addr, SendStatus::SendOk).await;
    let admin = broker_lite_client::Admin::connect(
        lead.addr.as_str(),
        broker_lite_client::AdminConfig::default(),
    )
    .await
    .unwrap();
    let d = admin.describe().await.unwrap();
    let status = d
        .replication_status
        .expect("a leader reports its replication");
    assert_eq!(status.epoch, 1);
    assert_eq!(status.followers.len(), 1);
    assert_eq!(status.followers[0].name, follow.addr);
    assert!(status.followers[0].in_sync);
    assert!(status.commit_position > 0);
    let admin = broker_lite_client::Admin::connect(
        follow.addr.as_str(),
        broker_lite_client::AdminConfig::default(),
    )
    .await
    .unwrap();
    let d = admin.describe().await.unwrap();
    assert_eq!(
        d.replication,
        broker_lite_client::protocol::Replication::Follower
    );
    let status = d.replication_status.unwrap();
    assert_eq!(status.leader.as_deref(), Some(lead.addr.as_str()));
    let out = Command::new(BIN)
        .args(["--addr", &lead.addr, "describe"])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("in sync"), "{text}");
}
