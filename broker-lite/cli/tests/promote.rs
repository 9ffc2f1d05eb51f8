//! `broker-lite promote` (issue 13): a running follower becomes the leader without a restart,
//! refused when it cannot be sure it holds every acknowledged message unless forced. Real
//! `broker-lite serve` processes on 127.0.0.1, killed with SIGKILL.

mod replication_support;

use broker_lite_client::protocol::SendStatus;
use broker_lite_client::{Admin, AdminConfig};
use std::collections::HashSet;

use replication_support::*;

/// The leader is killed; the running follower is promoted in place: the same process, on the
/// same address, now leads epoch 2, takes a new follower and sends, and holds every message the
/// old leader acknowledged.
#[tokio::test]
async fn an_in_sync_follower_is_promoted_without_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let mut lead = leader(
        &root.path().join("a"),
        &free_port(),
        &["--slave-timeout-ms", "1000"],
    )
    .await;
    let mut follow = follower(&root.path().join("b"), &free_port(), &lead.addr).await;
    until_status(&lead.addr, SendStatus::SendOk).await;
    let acked = send_acked(&lead.addr, 50).await;
    kill9(&mut lead).await;

    let out = promote(&follow.addr, &[]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "promote failed: {stderr}");
    assert!(
        stdout.contains("promoted: this node leads epoch 2"),
        "{stdout}"
    );
    assert!(
        follow.child.try_wait().unwrap().is_none(),
        "the follower process kept running"
    );

    let admin = Admin::connect(follow.addr.as_str(), AdminConfig::default())
        .await
        .unwrap();
    let status = admin.describe().await.unwrap().replication_status.unwrap();
    assert_eq!(
        (status.epoch, status.leader),
        (2, None),
        "it describes itself as the leader"
    );

    // It leads with SYNC_MASTER: no SEND_OK on one disk until a follower joins.
    until_status(&follow.addr, SendStatus::SlaveNotAvailable).await;
    let _fresh = follower(&root.path().join("c"), &free_port(), &follow.addr).await;
    until_status(&follow.addr, SendStatus::SendOk).await;
    let seen = consume_all(&follow.addr, &acked).await;
    let seen: HashSet<_> = seen.into_iter().collect();
    assert!(
        acked.is_subset(&seen),
        "{} acknowledged messages lost",
        acked.difference(&seen).count()
    );

    let again = promote(&follow.addr, &[]).await;
    assert!(!again.status.success());
    assert!(
        text(&again).1.contains("already the leader (epoch 2)"),
        "{}",
        text(&again).1
    );
    kill9(&mut follow).await;
}

/// A follower restarted after its leader died never heard from it: it cannot know what was
/// acknowledged, so promote refuses and says why; --dry-run reports; --force promotes and spells
/// out what may be lost.
#[tokio::test]
async fn a_follower_that_cannot_know_it_is_in_sync_is_promoted_only_with_force() {
    let root = tempfile::tempdir().unwrap();
    let mut lead = leader(&root.path().join("a"), &free_port(), &[]).await;
    let mut follow = follower(&root.path().join("b"), &free_port(), &lead.addr).await;
    until_status(&lead.addr, SendStatus::SendOk).await;
    let acked = send_acked(&lead.addr, 20).await;
    kill9(&mut follow).await;
    kill9(&mut lead).await;
    let follow = follower(&follow.dir, &follow.addr, &lead.addr).await;

    let refused = promote(&follow.addr, &[]).await;
    let (_, stderr) = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not in sync"), "{stderr}");
    assert!(
        stderr.contains("no contact with the leader since this node started"),
        "{stderr}"
    );

    let check = promote(&follow.addr, &["--dry-run"]).await;
    let (stdout, stderr) = text(&check);
    assert!(check.status.success(), "{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("in sync:") && l.ends_with(" no")),
        "{stdout}"
    );
    assert!(stdout.contains("not promoted (dry run)"), "{stdout}");

    let forced = promote(&follow.addr, &["--force"]).await;
    let (stdout, stderr) = text(&forced);
    assert!(forced.status.success(), "{stderr}");
    assert!(
        stdout.contains("promoted: this node leads epoch 2"),
        "{stdout}"
    );
    assert!(stdout.contains("may be lost: unknown"), "{stdout}");
    let _fresh = follower(&root.path().join("c"), &free_port(), &follow.addr).await;
    until_status(&follow.addr, SendStatus::SendOk).await;
    let seen: HashSet<_> = consume_all(&follow.addr, &acked)
        .await
        .into_iter()
        .collect();
    assert!(acked.is_subset(&seen), "what it had copied is all there");
}

/// A leader or a single node is not promoted.
#[tokio::test]
async fn promote_on_a_leader_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let lead = leader(dir.path(), &free_port(), &[]).await;
    let out = promote(&lead.addr, &[]).await;
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("already the leader (epoch 1)"),
        "{}",
        text(&out).1
    );
}
