//! Consumer groups over TCP. A consumer whose connection closes (killed process, cut network)
//! leaves its group at once: its queues and in-flight messages go to the other members without
//! waiting for the heartbeat timeout or the consume timeout. A subscription whose tag filter
//! disagrees with its group's gets an error frame that says why and what to do.
//!
//! The broker runs on a [`ManualClock`] that these tests never move, with its background tasks
//! off: heartbeat expiry and consume timeouts cannot happen, so every redelivery seen here is
//! the work of the connection-close hook.

use std::sync::Arc;
use std::time::Duration;

use broker_lite::broker::{ManualClock, Receipt, SendRequest};
use broker_lite::client::{ClientError, Connection};
use broker_lite::embedded::{self, EmbeddedBroker, EmbeddedConfig};
use broker_lite::protocol::{
    AckRequest, ConsumeModel, DEFAULT_MAX_FRAME_SIZE, Delivery, ErrorCode, PullRequest, Request,
    Response, Subscription,
};

const TIMEOUT: Duration = Duration::from_secs(5);
/// Long enough never to end a test's long poll by itself; the poll returns on the wake-up.
const LONG_POLL: Duration = Duration::from_secs(60);

struct Env {
    _dir: tempfile::TempDir,
    /// Never moved: no heartbeat or consume timeout can expire.
    _clock: ManualClock,
    broker: EmbeddedBroker,
}

async fn start() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let mut config = EmbeddedConfig::default();
    config.broker.store.segment_size = 256 * 1024;
    config.broker.store.max_record_size = 64 * 1024;
    config.broker.max_message_size = 32 * 1024;
    config.broker.max_long_poll = LONG_POLL;
    config.broker.clock = Arc::new(clock.clone());
    config.broker.background_tasks = false;
    config.server.max_long_poll = LONG_POLL;
    let broker = embedded::start(dir.path(), config).await.unwrap();
    Env {
        _dir: dir,
        _clock: clock,
        broker,
    }
}

impl Env {
    /// Sends one message to each of `queues` of topic `orders`.
    async fn send_to(&self, queues: &[u32]) {
        for &q in queues {
            let r = self
                .broker
                .broker()
                .send(SendRequest::new("orders", format!("q{q}")).with_queue(q))
                .await
                .unwrap();
            assert!(r.status.is_ok());
        }
    }

    /// A member `id` of group `g` subscribed to `orders` over its own TCP connection.
    async fn member(&self, id: &str, ordered: bool) -> Member {
        let conn = Connection::connect(
            &self.broker.addr().to_string(),
            TIMEOUT,
            DEFAULT_MAX_FRAME_SIZE,
        )
        .await
        .unwrap();
        let member = Member {
            id: id.to_string(),
            conn,
        };
        member.subscribe(ordered).await;
        member
    }

    fn members(&self) -> Vec<String> {
        self.broker
            .broker()
            .groups()
            .into_iter()
            .find(|g| g.group == "g")
            .map(|g| g.members.into_iter().map(|m| m.client_id).collect())
            .unwrap_or_default()
    }

    /// Waits (bounded) until the group's members are `expected`.
    async fn wait_for_members(&self, expected: &[&str]) {
        for _ in 0..2000 {
            if self.members() == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("members are {:?}, expected {expected:?}", self.members());
    }
}

struct Member {
    id: String,
    conn: Connection,
}

impl Member {
    async fn subscribe(&self, ordered: bool) {
        self.subscribe_with(ordered, &[]).await.unwrap();
    }

    async fn subscribe_with(&self, ordered: bool, tags: &[&str]) -> Result<Response, ClientError> {
        let request = Request::Subscribe(Subscription {
            group: "g".into(),
            topic: "orders".into(),
            consumer_id: self.id.clone(),
            model: ConsumeModel::Clustering,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ordered,
        });
        self.conn.request(&request, TIMEOUT).await
    }

    async fn pull(&self, max: u32, long_poll: Duration) -> Vec<Delivery> {
        let request = Request::Pull(PullRequest {
            group: "g".into(),
            consumer_id: self.id.clone(),
            topic: "orders".into(),
            max_messages: max,
            long_poll_ms: long_poll.as_millis() as u64,
        });
        match self.conn.request(&request, long_poll + TIMEOUT).await {
            Ok(Response::Pull(d)) => d,
            other => panic!("pull by {}: {other:?}", self.id),
        }
    }

    async fn ack(&self, d: &Delivery) {
        let request = Request::Ack(AckRequest {
            group: "g".into(),
            receipt: d.receipt.clone(),
        });
        self.conn.request(&request, TIMEOUT).await.unwrap();
    }

    /// Closes the connection as a killed process's kernel would.
    fn kill(self) {
        drop(self.conn);
    }
}

fn bodies(deliveries: &[Delivery]) -> Vec<String> {
    let mut b: Vec<String> = deliveries
        .iter()
        .map(|d| String::from_utf8_lossy(&d.message.body).into_owned())
        .collect();
    b.sort();
    b
}

fn attempt(d: &Delivery) -> u32 {
    Receipt::peek(&d.receipt).unwrap().attempt()
}

#[tokio::test]
async fn a_killed_consumers_queues_and_messages_go_to_the_survivor_at_once() {
    let env = start().await;
    env.send_to(&[0, 1, 2, 3]).await;
    let a = env.member("a", false).await;
    let b = env.member("b", false).await;
    // a owns queues 0 and 1, b owns 2 and 3 ("allocate averagely", members sorted by id).
    let own = a.pull(10, Duration::ZERO).await;
    assert_eq!(bodies(&own), ["q0", "q1"]);
    for d in &own {
        a.ack(d).await;
    }
    let held = b.pull(10, Duration::ZERO).await;
    assert_eq!(bodies(&held), ["q2", "q3"]);

    b.kill();
    // The survivor's long poll is woken by the rebalance and gets b's in-flight messages.
    let moved = a.pull(10, LONG_POLL).await;
    assert_eq!(bodies(&moved), ["q2", "q3"]);
    assert!(moved.iter().all(|d| attempt(d) == 2), "{moved:?}");
    assert_eq!(env.members(), ["a"]);
    // And it owns b's queues for new messages too.
    env.send_to(&[3]).await;
    assert_eq!(bodies(&a.pull(10, LONG_POLL).await), ["q3"]);
}

#[tokio::test]
async fn a_killed_ordered_consumer_hands_over_the_message_it_was_running() {
    let env = start().await;
    env.send_to(&[2, 2]).await;
    let a = env.member("a", true).await;
    let b = env.member("b", true).await;
    let running = b.pull(10, Duration::ZERO).await;
    assert_eq!(running.len(), 1, "ordered: one message per queue in flight");
    assert_eq!(running[0].message.queue_offset, 0);

    b.kill();
    // Its connection is gone, so nobody can still be running the message: the new owner gets
    // the same message (not the next one) at once.
    let moved = a.pull(10, LONG_POLL).await;
    assert_eq!(moved.len(), 1);
    assert_eq!(
        (moved[0].message.queue_id, moved[0].message.queue_offset),
        (2, 0)
    );
    a.ack(&moved[0]).await;
    let next = a.pull(10, LONG_POLL).await;
    assert_eq!(next[0].message.queue_offset, 1);
}

#[tokio::test]
async fn closing_an_old_connection_spares_a_member_that_subscribed_again_elsewhere() {
    let env = start().await;
    let old = env.member("b", false).await;
    let marker = Member {
        id: "c".into(),
        conn: old.conn.clone(),
    };
    marker.subscribe(false).await;
    // b reconnects (say after a network blip) and subscribes over the new connection.
    let new = env.member("b", false).await;
    env.wait_for_members(&["b", "c"]).await;

    drop(marker);
    old.kill();
    // c, still on the old connection, leaves; b stays.
    env.wait_for_members(&["b"]).await;
    env.send_to(&[0]).await;
    assert_eq!(bodies(&new.pull(10, LONG_POLL).await), ["q0"]);
}

#[tokio::test]
async fn a_subscription_with_another_tag_filter_gets_an_error_frame_saying_what_to_do() {
    let env = start().await;
    let old = env.member("old", false).await;
    let new = Member {
        id: "new".into(),
        conn: old.conn.clone(),
    };
    let Err(ClientError::Server(reply)) = new.subscribe_with(false, &["paid"]).await else {
        panic!("a subscription with another filter must be refused");
    };
    assert_eq!(reply.code, ErrorCode::InvalidRequest);
    for part in [
        "\"g\"",
        "\"orders\"",
        "every tag",
        "[\"paid\"]",
        "new consumer group",
    ] {
        assert!(
            reply.message.contains(part),
            "{part} missing from: {}",
            reply.message
        );
    }
    assert_eq!(env.members(), ["old"]);
}
