//! `broker-lite promote` (issue 13): a running follower becomes the leader without a restart,
//! refused when it cannot be sure it holds every acknowledged message unless forced. Real
//! `broker-lite serve` processes on 127.0.0.1, killed with SIGKILL.

mod replication_support;

use broker_lite_client::protocol::SendStatus;
use broker_lite_client::{Admin, AdminConfig, Producer};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use replication_support::*;

/// The leader is killed; the running follower is promoted in place: the same process, on the
/// same address, now leads epoch 2, takes a new follower and sends, and holds every message the
/// old leader acknowledged.
#[tokio::test]
async fn an_in_sync_follower_is_promoted_without_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let (mut lead, mut follow) = pair(root.path(), &["--slave-timeout-ms", "1000"]).await;
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
    let (mut lead, mut follow) = pair(root.path(), &[]).await;
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

/// An ASYNC_MASTER leader acknowledges while its follower, copying one record per fetch, falls
/// behind: promote refuses, naming the acknowledged bytes the follower lacks; --force promotes
/// and prints the log positions that may be lost, and messages acknowledged there are gone.
#[tokio::test]
async fn a_lagging_follower_is_refused_with_the_bytes_it_lacks() {
    let root = tempfile::tempdir().unwrap();
    let mut lead = leader(
        &root.path().join("a"),
        &free_port(),
        &["--replication", "async"],
    )
    .await;
    let addr = free_port();
    let one_record_per_fetch = ["--replica-fetch-bytes", "1"];
    let follow = follower_with(
        &root.path().join("b"),
        &addr,
        &lead.addr,
        "slow",
        &one_record_per_fetch,
    )
    .await;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = Producer::connect(lead.addr.as_str(), producer_config())
        .await
        .unwrap();
    let load = {
        let (acked, stop) = (acked.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<_> = (0..100).map(|i| message(format!("b{i}"))).collect();
                let Ok(results) = producer.send_batch(batch).await else {
                    return;
                };
                let ok = results.iter().filter(|r| r.status == SendStatus::SendOk);
                acked.lock().unwrap().extend(ok.map(|r| r.message_id));
            }
        })
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (stdout, _) = text(&promote(&follow.addr, &["--dry-run"]).await);
        let behind = stdout
            .lines()
            .any(|l| l.starts_with("in sync:") && l.ends_with(" no"));
        if behind && stdout.contains("last contact with the leader") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never behind: {stdout}"
        );
    }
    // Freeze what the follower knows, then lose the leader.
    signal(&follow, "-STOP");
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    kill9(&mut lead).await;
    signal(&follow, "-CONT");

    let refused = promote(&follow.addr, &[]).await;
    let (_, stderr) = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("bytes of acknowledged records this node lacks"),
        "{stderr}"
    );
    assert!(stderr.contains("last contact with the leader"), "{stderr}");
    let forced = promote(&follow.addr, &["--force"]).await;
    let (stdout, stderr) = text(&forced);
    assert!(forced.status.success(), "{stderr}");
    assert!(
        stdout.contains(
            "forced: may be lost: the records the old leader acknowledged at log positions"
        ),
        "{stdout}"
    );
    let acked: HashSet<_> = acked.lock().unwrap().iter().copied().collect();
    let seen: HashSet<_> = consume_all(&follow.addr, &acked)
        .await
        .into_iter()
        .collect();
    let lost = acked.difference(&seen).count();
    eprintln!(
        "forced promotion: {lost} of {} acknowledged messages lost",
        acked.len()
    );
    assert!(lost > 0, "the follower was behind on acknowledged records");
}

/// Promotion needs the admin permission: a producer-only user is refused and nothing changes.
#[tokio::test]
async fn promote_needs_the_admin_permission() {
    let root = tempfile::tempdir().unwrap();
    let lead = leader(&root.path().join("a"), &free_port(), &[]).await;
    let password = root.path().join("password");
    std::fs::write(&password, "a-long-enough-password").unwrap();
    let config = root.path().join("follower.toml");
    std::fs::write(
        &config,
        format!("[[users]]\nname = \"app\"\npassword_file = {password:?}\nproduce = [\"*\"]\n"),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let args = [
        "--role",
        "follower",
        "--leader-address",
        &lead.addr,
        "--config",
        config,
    ];
    let follow = spawn(&root.path().join("b"), &free_port(), &args).await;
    let as_app = |command: &str| {
        let mut c = tokio::process::Command::new(BIN);
        c.args(["--addr", &follow.addr, command])
            .env("BROKER_LITE_USER", "app")
            .env("BROKER_LITE_PASSWORD_FILE", &password);
        c
    };
    let out = as_app("promote").output().await.unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("may not run the admin command promote"),
        "{stderr}"
    );
    let described = as_app("describe").output().await.unwrap();
    let (stdout, stderr) = text(&described);
    assert!(
        stdout.contains("follower (takes no sends until promoted)"),
        "{stdout}{stderr}"
    );
}
