//! A pull's byte budget (issue 12, item 4) at the broker: it reserves only what fits, always at
//! least one message, and a message it reserved but could not carry is given back undelivered.

mod broker_common;

use broker_common::Env;
use broker_lite::broker::{ConsumerSpec, PullRequest, SendRequest};
use broker_lite::storage::NewRecord;

const GROUP: &str = "billing";
const CLIENT: &str = "billing-1";
const TOPIC: &str = "orders";

/// A message with `props` properties: each costs two bytes more in a pull answer than in the
/// log, which the broker learns only once it read the record.
fn request(body: &str, props: usize) -> SendRequest {
    let mut r = SendRequest::new(TOPIC, body.to_string()).with_queue(0);
    for i in 0..props {
        r = r.with_property(format!("p{i:04}"), "v");
    }
    r
}

/// The log frame of `request` (what the store's index knows of it).
fn frame_len(r: &SendRequest) -> usize {
    let mut record = NewRecord::new(TOPIC, 0, r.body.clone());
    record.properties = r.properties.clone();
    record.encoded_len()
}

fn pull(max: usize, max_bytes: usize) -> PullRequest {
    PullRequest::new(GROUP, CLIENT, TOPIC)
        .with_max_messages(max)
        .with_max_bytes(max_bytes)
}

async fn env() -> Env {
    let env = Env::new().await;
    env.broker.create_topic(TOPIC, 1).await.unwrap();
    env.broker
        .subscribe(ConsumerSpec::new(GROUP, CLIENT, TOPIC))
        .await
        .unwrap();
    env
}

#[tokio::test]
async fn a_pull_takes_what_fits_and_always_one() {
    let env = env().await;
    for i in 0..3 {
        let sent = env
            .broker
            .send(request(&format!("{i}{}", "x".repeat(999)), 0));
        assert!(sent.await.unwrap().status.is_ok());
    }
    // A budget smaller than one message still returns one.
    let one = env.broker.pull(pull(3, 1)).await.unwrap();
    assert_eq!(one.len(), 1);
    // About 1 160 bytes each with the overhead: 3 000 bytes hold two, not three.
    let two = env.broker.pull(pull(3, 3000)).await.unwrap();
    assert_eq!(two.len(), 2);
    assert_eq!(
        [&one[..], &two[..]]
            .concat()
            .iter()
            .map(|d| d.queue_offset)
            .collect::<Vec<_>>(),
        [0, 1, 2]
    );
}

#[tokio::test]
async fn a_reserved_message_that_does_not_fit_once_read_is_given_back_undelivered() {
    let env = env().await;
    let props = 1000;
    let requests = [request("first", props), request("second", props)];
    let frames: usize = requests.iter().map(frame_len).sum();
    let receipt = GROUP.len() + CLIENT.len() + TOPIC.len();
    // Both fit by their log frames (assuming a per-delivery overhead under 564 bytes), but not
    // with the 2 extra bytes of each of their 2 000 properties; one alone does.
    let budget = frames + 2 * receipt + 2 * 564;
    assert!(budget < frames + 2 * receipt + 4 * props);
    for r in requests {
        assert!(env.broker.send(r).await.unwrap().status.is_ok());
    }
    let first = env.broker.pull(pull(2, budget)).await.unwrap();
    assert_eq!(
        first.len(),
        1,
        "only one fits once the properties are counted"
    );
    assert_eq!(first[0].queue_offset, 0);
    // The second was reserved, then given back: due at once, as if it had never been taken.
    let second = env.broker.pull(pull(2, budget)).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].queue_offset, 1);
    assert_eq!(second[0].receipt.attempt(), 1);
    assert_eq!(second[0].reconsume_times, 0);
    env.broker.ack(&first[0].receipt).await.unwrap();
    env.broker.ack(&second[0].receipt).await.unwrap();
    let lag = env.broker.lag(GROUP).unwrap();
    assert!(
        lag.iter().all(|l| l.lag == 0 && l.unsettled == 0),
        "{lag:?}"
    );
}
