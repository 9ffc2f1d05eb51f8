//! A `SYNC_MASTER` leader's commit position follows what its followers hold *durably*: the
//! durable position a fetch carries and the `ReplicaAck` a follower sends after each fsync, not
//! the written position it fetches from (a pipelined follower fetches the next records while the
//! previous ones are being fsynced). A raw connection plays the follower, so each report is
//! exactly what the test says.

use std::time::Duration;

use broker_lite::client::{Connection, Producer, ProducerConfig};
use broker_lite::embedded::{self, EmbeddedBroker, EmbeddedConfig};
use broker_lite::protocol::{
    DEFAULT_MAX_FRAME_SIZE, Message, ReplicaAck, ReplicaBatch, ReplicaFetch, Replication, Request,
    Response, SendStatus,
};

const TIMEOUT: Duration = Duration::from_secs(10);
const FOLLOWER: &str = "raw-follower";

async fn leader(dir: &std::path::Path) -> EmbeddedBroker {
    let mut config = EmbeddedConfig::default();
    config.broker.replication = Replication::SyncMaster {
        min_sync_replicas: 1,
        // Longer than the test: a send waits for the reports the test makes.
        slave_timeout: Duration::from_secs(30),
    };
    embedded::start(dir, config).await.unwrap()
}

async fn fetch(c: &Connection, epoch: u64, from: u64, durable: u64) -> ReplicaBatch {
    let fetch = ReplicaFetch {
        follower: FOLLOWER.into(),
        epoch,
        from_position: from,
        durable_position: durable,
        max_bytes: 1 << 20,
        max_wait_ms: 20,
        want_checkpoints: false,
    };
    match c.request(&Request::ReplicaFetch(fetch), TIMEOUT).await {
        Ok(Response::ReplicaBatch(b)) => b,
        other => panic!("fetch answered {other:?}"),
    }
}

async fn ack(c: &Connection, epoch: u64, durable: u64) -> Result<Response, String> {
    let ack = ReplicaAck {
        follower: FOLLOWER.into(),
        epoch,
        durable_position: durable,
    };
    c.request(&Request::ReplicaAck(ack), TIMEOUT)
        .await
        .map_err(|e| e.to_string())
}

/// A follower in sync at the log end: it fetched twice, the second time from where the first
/// answer ended. Returns its epoch and that position.
async fn join(c: &Connection) -> (u64, u64) {
    let first = fetch(c, 0, 0, 0).await;
    let epoch = first.epochs.last().unwrap().epoch;
    let end = first.next_position;
    let _ = fetch(c, epoch, end, end).await;
    (epoch, end)
}

/// A send in the background: it waits for the reports the test makes.
fn send_one(broker: &EmbeddedBroker) -> tokio::task::JoinHandle<SendStatus> {
    let addr = broker.addr();
    tokio::spawn(async move {
        let producer = Producer::connect(addr, ProducerConfig::default())
            .await
            .unwrap();
        producer
            .send(Message::new("orders", "one"))
            .await
            .unwrap()
            .status
    })
}

/// Fetches from `start` (reporting `start` durable) until the send's record comes.
async fn fetch_record(c: &Connection, epoch: u64, start: u64) -> ReplicaBatch {
    loop {
        let b = fetch(c, epoch, start, start).await;
        if !b.records.is_empty() {
            return b;
        }
    }
}

#[tokio::test]
async fn a_send_is_acknowledged_once_the_follower_reports_it_durable_not_once_written() {
    let dir = tempfile::tempdir().unwrap();
    let broker = leader(dir.path()).await;
    let follower = Connection::connect(&broker.addr().to_string(), TIMEOUT, DEFAULT_MAX_FRAME_SIZE)
        .await
        .unwrap();
    let (epoch, start) = join(&follower).await;

    let send = send_one(&broker);

    // The record reaches the follower, which writes it and fetches again at once, before its
    // fsync: the written position is past the record, the durable one is not.
    let batch = fetch_record(&follower, epoch, start).await;
    let written = batch.next_position;
    let _ = fetch(&follower, epoch, written, start).await;
    let leadership = broker.broker().replication().unwrap();
    assert!(
        leadership.commit_position() <= batch.records[0].log_position,
        "a record the follower only wrote must not be committed: commit {}, record at {}",
        leadership.commit_position(),
        batch.records[0].log_position
    );
    assert!(!send.is_finished(), "acknowledged before it was replicated");
    let status = &leadership.followers()[0];
    assert_eq!(status.acked_position, start, "{status:?}");

    // Its fsync done, it says so between fetches.
    assert_eq!(ack(&follower, epoch, written).await, Ok(Response::Done));
    assert_eq!(send.await.unwrap(), SendStatus::SendOk);
    assert!(leadership.commit_position() >= written);
    assert_eq!(leadership.followers()[0].acked_position, written);

    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn reports_of_an_older_epoch_or_an_earlier_position_move_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = leader(dir.path()).await;
    let follower = Connection::connect(&broker.addr().to_string(), TIMEOUT, DEFAULT_MAX_FRAME_SIZE)
        .await
        .unwrap();
    let (epoch, start) = join(&follower).await;
    let send = send_one(&broker);
    let written = fetch_record(&follower, epoch, start).await.next_position;
    let leadership = broker.broker().replication().unwrap();

    // A follower still on an older epoch may hold records this log does not: not counted.
    assert_eq!(ack(&follower, epoch - 1, written).await, Ok(Response::Done));
    assert_eq!(leadership.followers()[0].acked_position, start);
    assert!(!send.is_finished());

    // The report, then a fetch that was built before it and is taken after it: the fetch's
    // older durable position is no loss, and the follower stays in sync.
    assert_eq!(ack(&follower, epoch, written).await, Ok(Response::Done));
    assert_eq!(send.await.unwrap(), SendStatus::SendOk);
    let _ = fetch(&follower, epoch, written, start).await;
    let status = &leadership.followers()[0];
    assert_eq!(status.acked_position, written, "{status:?}");
    assert!(status.in_sync, "{status:?}");

    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_report_of_a_newer_epoch_fences_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let broker = leader(dir.path()).await;
    let follower = Connection::connect(&broker.addr().to_string(), TIMEOUT, DEFAULT_MAX_FRAME_SIZE)
        .await
        .unwrap();
    let (epoch, end) = join(&follower).await;

    let refused = ack(&follower, epoch + 1, end).await.unwrap_err();
    assert!(refused.contains("a newer leader exists"), "{refused}");
    let producer = Producer::connect(broker.addr(), ProducerConfig::default())
        .await
        .unwrap();
    let send = producer.send(Message::new("orders", "late")).await;
    let refused = format!("{send:?}");
    assert!(refused.contains("newer leader"), "{refused}");

    broker.shutdown().await.unwrap();
}
