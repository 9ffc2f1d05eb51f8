//! A follower holding records its leader lost (issue 13): a leader ships records from its
//! written end, before its own fsync of them, so a follower may hold a tail the leader never made
//! durable. When the leader loses that tail in a crash and restarts, the follower must cut it
//! (the restart begins a new epoch at the recovered log end) instead of keeping records that the
//! leader's log then holds other records at. Real `broker-lite serve` processes on 127.0.0.1.

mod replication_support;

use broker_lite_client::Producer;
use broker_lite_client::protocol::SendStatus;
use std::collections::HashSet;
use uuid::Uuid;

use replication_support::*;

/// The leader's tail is lost in a crash after its follower copied it: the restarted leader
/// starts a new epoch at its shorter log end, the follower cuts what it holds past it, copies
/// what the leader stores from then on at the leader's positions, and promoted it delivers
/// every acknowledged message once and nothing of the lost tail.
///
/// The lost tail is made real this way: the leader is restarted needing two in-sync followers
/// while it has one, so that it stores and ships every send of the tail but acknowledges none
/// (`SLAVE_NOT_AVAILABLE`) and shows none to consumers, exactly as for records it had written
/// but not fsynced yet; after `kill -9` the tail is cut from its log (`truncate_log`), which is
/// what a power cut before the fsync leaves.
#[tokio::test]
async fn a_follower_cuts_the_tail_its_restarted_leader_lost() {
    let root = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (root.path().join("a"), root.path().join("b"));
    let (addr_a, addr_b) = (free_port(), free_port());
    let timeout = ["--slave-timeout-ms", "400"];
    let mut a = leader(&dir_a, &addr_a, &timeout).await;
    let b = follower(&dir_b, &addr_b, &addr_a).await;
    until_status(&addr_a, SendStatus::SendOk).await;
    let mut acked = send_acked(&addr_a, 50).await;
    until_caught_up(&addr_a, &addr_b).await;

    kill9(&mut a).await;
    let mut a = leader(
        &dir_a,
        &addr_a,
        &["--slave-timeout-ms", "400", "--min-sync-replicas", "2"],
    )
    .await;
    // Everything from here on is the tail: stored and shipped, never acknowledged.
    let cut_at = status(&addr_a).await.log_end;
    let producer = Producer::connect(addr_a.as_str(), producer_config())
        .await
        .unwrap();
    let mut tail = HashSet::new();
    for i in 0..40 {
        let m = message(format!("tail {i}"));
        tail.insert(m.message_id.unwrap());
        let r = producer.send(m).await.unwrap();
        assert_eq!(r.status, SendStatus::SlaveNotAvailable, "tail send {i}");
    }
    drop(producer);
    until_caught_up(&addr_a, &addr_b).await;
    let copied = status(&addr_b).await.log_end;
    assert!(copied > cut_at, "the follower copied the tail");

    kill9(&mut a).await;
    let cut = broker_lite::storage::truncate_log(&dir_a, cut_at).unwrap();
    assert_eq!(
        cut,
        copied - cut_at,
        "the whole tail is cut from the leader"
    );
    let mut a = leader(&dir_a, &addr_a, &timeout).await;
    // SEND_OK needs the follower in sync again: it cut the tail and copied from the cut on.
    until_status(&addr_a, SendStatus::SendOk).await;
    acked.extend(send_acked(&addr_a, 50).await);
    until_caught_up(&addr_a, &addr_b).await;

    kill9(&mut a).await;
    let out = promote(&b.addr, &[]).await;
    assert!(out.status.success(), "promote: {}", text(&out).1);
    let seen = consume_all(&b.addr, &acked).await;
    let have: HashSet<Uuid> = seen.iter().copied().collect();
    assert_eq!(have.len(), seen.len(), "a message was delivered twice");
    let lost = acked.difference(&have).count();
    assert_eq!(lost, 0, "{lost} acknowledged messages lost");
    let kept = have.intersection(&tail).count();
    assert_eq!(
        kept, 0,
        "the follower kept and delivered {kept} records of the tail its leader lost"
    );
}
