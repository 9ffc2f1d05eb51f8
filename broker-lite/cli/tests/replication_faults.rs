//! Replication under follower faults and across a failover (issue 13): a follower stopped with
//! SIGSTOP and resumed, one killed and restarted empty, and consumer-group progress carried to
//! the promoted follower. Real `broker-lite serve` processes on 127.0.0.1.

mod replication_support;

use broker_lite_client::protocol::SendStatus;
use broker_lite_client::{Consumer, ConsumerConfig, Producer};
use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, SystemTime};
use uuid::Uuid;

use replication_support::*;

/// Kills the leader, promotes `follower` online and returns every id a fresh group gets there,
/// asserting none comes twice and every one of `acked` comes.
async fn fail_over_and_check(lead: &mut Node, follower: &Node, acked: &HashSet<Uuid>) {
    kill9(lead).await;
    let out = promote(&follower.addr, &[]).await;
    assert!(out.status.success(), "promote: {}", text(&out).1);
    let seen = consume_all(&follower.addr, acked).await;
    let have: HashSet<Uuid> = seen.iter().copied().collect();
    assert_eq!(have.len(), seen.len(), "a message was delivered twice");
    let lost = acked.difference(&have).count();
    assert_eq!(lost, 0, "{lost} acknowledged messages lost");
}

/// A follower stopped with SIGSTOP: FLUSH_SLAVE_TIMEOUT, then SLAVE_NOT_AVAILABLE; resumed, it
/// copies what the leader stored meanwhile, SEND_OK comes back, its log end equals the
/// leader's, and promoted it holds every acknowledged message once (no divergence).
#[tokio::test]
async fn a_follower_stopped_and_resumed_catches_up_without_divergence() {
    let root = tempfile::tempdir().unwrap();
    let (mut lead, follow) = pair(root.path(), &["--slave-timeout-ms", "400"]).await;
    let mut acked = send_acked(&lead.addr, 30).await;
    signal(&follow, "-STOP");
    until_status(&lead.addr, SendStatus::FlushSlaveTimeout).await;
    until_status(&lead.addr, SendStatus::SlaveNotAvailable).await;
    // Stored on the leader only while the follower is stopped: copied after the resume.
    let producer = Producer::connect(lead.addr.as_str(), producer_config())
        .await
        .unwrap();
    for i in 0..20 {
        let r = producer
            .send(message(format!("while stopped {i}")))
            .await
            .unwrap();
        assert_eq!(r.status, SendStatus::SlaveNotAvailable);
    }
    signal(&follow, "-CONT");
    until_status(&lead.addr, SendStatus::SendOk).await;
    acked.extend(send_acked(&lead.addr, 30).await);
    until_caught_up(&lead.addr, &follow.addr).await;
    fail_over_and_check(&mut lead, &follow, &acked).await;
}

/// A follower killed (SLAVE_NOT_AVAILABLE once it leaves the in-sync set) and restarted with an
/// empty data directory copies the whole log from position 0, re-enters the set, and promoted
/// it holds every acknowledged message. It restarts with small fetches, so that it catches up
/// the way a follower far behind does: fetching the next batch while the last one is fsynced.
#[tokio::test]
async fn a_follower_restarted_empty_catches_up_from_zero() {
    let root = tempfile::tempdir().unwrap();
    let (mut lead, mut follow) = pair(root.path(), &["--slave-timeout-ms", "400"]).await;
    let mut acked = send_acked(&lead.addr, 200).await;
    kill9(&mut follow).await;
    until_status(&lead.addr, SendStatus::SlaveNotAvailable).await;
    std::fs::remove_dir_all(&follow.dir).unwrap();
    let small_fetches = ["--replica-fetch-bytes", "2048"];
    let follow = follower_with(
        &follow.dir,
        &follow.addr,
        &lead.addr,
        &follow.addr,
        &small_fetches,
    )
    .await;
    until_status(&lead.addr, SendStatus::SendOk).await;
    acked.extend(send_acked(&lead.addr, 20).await);
    until_caught_up(&lead.addr, &follow.addr).await;
    assert!(status(&follow.addr).await.log_end > 0);
    fail_over_and_check(&mut lead, &follow, &acked).await;
}

/// The bytes of the offsets checkpoint in a node's data directory.
fn offsets_file(dir: &Path) -> Option<(SystemTime, Vec<u8>)> {
    let path = dir.join("cp-broker-offsets.ckpt");
    let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
    Some((modified, std::fs::read(&path).ok()?))
}

/// Consumer-group progress survives a failover: a group acks 60 of 100 messages and holds 5 in
/// flight; once the leader saved its offsets after the last ack and the follower copied them,
/// the leader is killed and the follower promoted. The group, reconnecting to the new leader,
/// gets the 40 it had not acked (the 5 in flight among them) and none of the 60 acked ones.
#[tokio::test]
async fn consumer_group_progress_survives_a_failover() {
    let root = tempfile::tempdir().unwrap();
    let (mut lead, follow) = pair(root.path(), &[]).await;
    let all = send_acked(&lead.addr, 100).await;
    let consumer = Consumer::connect(lead.addr.as_str(), ConsumerConfig::new("billing", TOPIC))
        .await
        .unwrap();
    let (mut acked, mut in_flight) = (HashSet::new(), HashSet::new());
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while acked.len() + in_flight.len() < 65 {
        assert!(tokio::time::Instant::now() < deadline, "deliveries stalled");
        for d in consumer.pull(5, Duration::from_millis(200)).await.unwrap() {
            let id = d.message.message_id;
            if id == Uuid::nil() || !all.contains(&id) {
                continue; // a probe of until_status
            }
            if acked.len() < 60 {
                consumer.ack(&d).await.unwrap();
                acked.insert(id);
            } else if in_flight.len() < 5 {
                in_flight.insert(id);
            }
        }
    }
    let after_acks = SystemTime::now();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let saved = offsets_file(&lead.dir);
        let copied = offsets_file(&follow.dir).map(|(_, bytes)| bytes);
        if let Some((at, bytes)) = saved
            && at > after_acks
            && copied.as_ref() == Some(&bytes)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the offsets saved after the acks never reached the follower"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    kill9(&mut lead).await;
    let out = promote(&follow.addr, &[]).await;
    assert!(out.status.success(), "promote: {}", text(&out).1);
    let consumer = Consumer::connect(follow.addr.as_str(), ConsumerConfig::new("billing", TOPIC))
        .await
        .unwrap();
    let mut again = HashSet::new();
    let want: HashSet<Uuid> = all.difference(&acked).copied().collect();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !want.is_subset(&again) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} unacked messages never redelivered",
            want.difference(&again).count()
        );
        for d in consumer.pull(64, Duration::from_millis(200)).await.unwrap() {
            again.insert(d.message.message_id);
            consumer.ack(&d).await.unwrap();
        }
    }
    let repeated = again.intersection(&acked).count();
    assert_eq!(
        repeated, 0,
        "{repeated} acked messages delivered again after the failover"
    );
    assert!(
        in_flight.is_subset(&again),
        "the in-flight ones are redelivered"
    );
}
