//! Admin views: lag and trace report what happened; retention warns and reports losses.

mod broker_common;

use std::time::Duration;

use broker_common::Env;
use broker_lite::broker::{SendStatus, TraceKind};

#[tokio::test]
async fn lag_and_trace_report_what_happened() {
    let env = Env::with(|c| c.default_queues = 1).await;
    let b = &env.broker;
    let id = env.send("t", "a").await;
    env.send("t", "b").await;
    env.send("t", "c").await;
    env.join("g", "c1", "t").await;
    let lag = b.lag("g").unwrap();
    assert_eq!((lag[0].committed, lag[0].max, lag[0].lag), (0, 3, 3));
    let d = env.pull("g", "c1", "t", 2).await;
    assert_eq!(b.lag("g").unwrap()[0].unsettled, 2);
    let outcome = b.nack(&d[0].receipt, None).await.unwrap();
    assert!(matches!(
        outcome,
        broker_lite::broker::NackOutcome::Redeliver { .. }
    ));
    b.ack(&d[1].receipt).await.unwrap();
    let lag = b.lag("g").unwrap();
    assert_eq!((lag[0].committed, lag[0].lag, lag[0].unsettled), (0, 3, 1));
    env.advance(Duration::from_secs(10));
    let again = env.pull("g", "c1", "t", 1).await;
    assert_eq!(again[0].message_id, id);
    b.ack(&again[0].receipt).await.unwrap();
    let lag = b.lag("g").unwrap();
    assert_eq!((lag[0].committed, lag[0].lag), (2, 1));

    let kinds: Vec<TraceKind> = b.trace(id).into_iter().map(|e| e.kind).collect();
    assert!(
        matches!(&kinds[0], TraceKind::Stored { topic, queue_offset: 0, status: SendStatus::SendOk, .. } if topic == "t")
    );
    assert!(
        matches!(&kinds[1], TraceKind::Delivered { group, client_id, attempt: 1 } if group == "g" && client_id == "c1")
    );
    assert!(
        matches!(&kinds[2], TraceKind::Nacked { redeliver_after, .. } if *redeliver_after == Duration::from_secs(10))
    );
    assert!(matches!(&kinds[3], TraceKind::Delivered { attempt: 2, .. }));
    assert!(matches!(&kinds[4], TraceKind::Acked { .. }));
    assert_eq!(kinds.len(), 5);
    let groups = b.groups();
    assert_eq!(groups[0].group, "g");
    assert_eq!(groups[0].topics, ["t"]);
}

#[tokio::test]
async fn retention_warns_about_expiring_messages_and_reports_lost_ones() {
    let env = Env::with(|c| {
        c.default_queues = 1;
        c.store.segment_size = 8 * 1024;
        c.store.max_record_size = 4 * 1024;
        c.max_message_size = 2 * 1024;
        c.store.file_reserved_time = Duration::from_secs(72 * 3600);
        c.retention_warning_margin = Duration::from_secs(6 * 3600);
    })
    .await;
    let b = &env.broker;
    env.join("g", "c", "t").await;
    let body = "x".repeat(1500);
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(env.send("t", &body).await);
    }
    // 67 h later: inside the warning margin, nothing deleted yet.
    env.advance(Duration::from_secs(67 * 3600));
    let outcome = b.enforce_retention().await.unwrap();
    assert_eq!(outcome.expiring.len(), 1);
    assert_eq!(outcome.expiring[0].0, "g");
    assert!(outcome.report.removed_segments.is_empty());
    assert!(outcome.lost.is_empty());
    // Past 72 h: old segments go, and the group lost what it had not consumed.
    env.advance(Duration::from_secs(6 * 3600));
    let outcome = b.enforce_retention().await.unwrap();
    assert!(!outcome.report.removed_segments.is_empty());
    assert_eq!(outcome.lost.len(), 1);
    let lost = outcome.lost[0].count;
    assert!(lost > 0);
    let lag = b.lag("g").unwrap();
    assert_eq!(
        lag[0].committed, lost,
        "the cursor moved past the deleted messages"
    );
    let d = env.pull("g", "c", "t", 100).await;
    assert_eq!(d.len() as u64, 20 - lost);
    assert!(b.lookup(ids[0]).await.unwrap().is_none(), "deleted");
    assert!(b.lookup(ids[19]).await.unwrap().is_some(), "kept");
}
