//! Authentication, permissions and receipts over TCP with a real broker (issue 16).

mod security_support;

use std::time::Duration;

use broker_lite::broker::Receipt;
use broker_lite::client::{
    Admin, AdminConfig, ClientError, Connection, Consumer, ConsumerConfig, Credentials, Producer,
    ProducerConfig, Security,
};
use broker_lite::protocol::{AckRequest, ErrorCode, Member, Message, Request};
use security_support::{PASSWORD, as_user, refusal, start};

const TIMEOUT: Duration = Duration::from_secs(5);

fn producer_config(security: Security) -> ProducerConfig {
    let mut config = ProducerConfig::default();
    config.security = security;
    config
}

fn consumer_config(group: &str, security: Security) -> ConsumerConfig {
    let mut config = ConsumerConfig::new(group, "orders");
    config.security = security;
    config
}

/// alice sends one message to `orders`.
async fn alice_sends_one(addr: std::net::SocketAddr) {
    let producer = Producer::connect(addr, producer_config(as_user("alice")))
        .await
        .unwrap();
    let sent = producer.send(Message::new("orders", "m")).await.unwrap();
    assert!(sent.is_ok(), "{sent:?}");
}

async fn root(env: &security_support::Env) -> Admin {
    let mut config = AdminConfig::default();
    config.security = as_user("root");
    Admin::connect(env.broker.addr(), config).await.unwrap()
}

#[tokio::test]
async fn missing_or_wrong_credentials_are_refused_and_nothing_is_stored() {
    let env = start(None).await;
    let addr = env.broker.addr();

    // Without credentials the connect itself is refused (its opening ping is), not a send after.
    let error = Producer::connect(addr, ProducerConfig::default())
        .await
        .unwrap_err();
    let reply = refusal(&error);
    assert_eq!(reply.code, ErrorCode::Unauthenticated);
    assert!(
        reply
            .message
            .contains("authentication required before ping"),
        "{reply}"
    );

    for (user, password) in [("alice", "wrong"), ("nobody", PASSWORD)] {
        let security = Security::default().with_credentials(Credentials::new(user, password));
        let error = Producer::connect(addr, producer_config(security))
            .await
            .unwrap_err();
        let reply = refusal(&error);
        assert_eq!(reply.code, ErrorCode::Unauthenticated);
        assert_eq!(
            reply.message,
            format!("authentication failed for user {user:?}: wrong user name or password"),
            "unknown users and wrong passwords read the same"
        );
    }
    let admin = root(&env).await;
    assert!(
        admin.topics().await.unwrap().is_empty(),
        "nothing was stored"
    );
    let described = admin.describe().await.unwrap();
    assert!(described.authentication && !described.tls);
}

#[tokio::test]
async fn a_principal_is_refused_what_it_may_not_do_and_nothing_changes() {
    let env = start(None).await;
    let addr = env.broker.addr();
    let alice = Producer::connect(addr, producer_config(as_user("alice")))
        .await
        .unwrap();
    assert!(
        alice
            .send(Message::new("orders", "mine"))
            .await
            .unwrap()
            .is_ok()
    );

    let error = alice
        .send(Message::new("payments", "not mine"))
        .await
        .unwrap_err();
    let reply = refusal(&error.error);
    assert_eq!(reply.code, ErrorCode::Forbidden);
    assert!(
        reply
            .message
            .contains("principal \"alice\" may not produce to topic \"payments\""),
        "{reply}"
    );

    let error = Consumer::connect(addr, consumer_config("shipping", as_user("alice")))
        .await
        .unwrap_err();
    assert!(
        refusal(&error)
            .message
            .contains("may not use consumer group \"shipping\"")
    );
    let error = Consumer::connect(addr, consumer_config("billing", as_user("bob")))
        .await
        .unwrap_err();
    assert_eq!(refusal(&error).code, ErrorCode::Forbidden);

    let mut config = AdminConfig::default();
    config.security = as_user("alice");
    let not_admin = Admin::connect(addr, config).await.unwrap();
    let error = not_admin.create_topic("audit", 4).await.unwrap_err();
    assert!(
        refusal(&error)
            .message
            .contains("may not run the admin command create_topic")
    );
    assert_eq!(
        refusal(&not_admin.groups().await.unwrap_err()).code,
        ErrorCode::Forbidden
    );

    let admin = root(&env).await;
    let topics: Vec<_> = admin
        .topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(
        topics,
        ["orders"],
        "no topic was created by a refused request"
    );
    assert!(
        admin.groups().await.unwrap().is_empty(),
        "no group was joined"
    );
}

#[tokio::test]
async fn receipts_of_another_principal_or_forged_ones_are_refused() {
    let env = start(None).await;
    let addr = env.broker.addr();
    alice_sends_one(addr).await;
    let alice = Consumer::connect(addr, consumer_config("billing", as_user("alice")))
        .await
        .unwrap();
    let delivery = alice.pull(1, Duration::ZERO).await.unwrap().remove(0);

    // carol may use the group, but the receipt was issued to alice.
    let carol = Connection::connect_with(&addr.to_string(), TIMEOUT, 8 << 20, &as_user("carol"))
        .await
        .unwrap();
    let ack = |receipt: Vec<u8>| {
        Request::Ack(AckRequest {
            group: "billing".into(),
            receipt: receipt.into(),
        })
    };
    let refused = |result: Result<_, ClientError>| refusal(&result.unwrap_err()).clone();
    let reply = refused(
        carol
            .request(&ack(delivery.receipt.to_vec()), TIMEOUT)
            .await,
    );
    assert_eq!(reply.code, ErrorCode::Forbidden);
    assert!(
        reply
            .message
            .contains("issued to principal \"alice\", not \"carol\""),
        "{reply}"
    );

    // The same receipt with the name swapped, or assembled from its plain fields as admin
    // output would allow, fails the signature.
    let mut swapped = delivery.receipt.to_vec();
    swapped[2..7].copy_from_slice(b"carol");
    let plain = Receipt::peek(&delivery.receipt).unwrap().to_bytes();
    for forged in [swapped, plain] {
        let reply = refused(carol.request(&ack(forged), TIMEOUT).await);
        assert_eq!(reply.code, ErrorCode::Forbidden, "{reply}");
    }

    // Nothing was settled: the delivery is still in flight, and alice's own ack settles it.
    let admin = root(&env).await;
    let unsettled =
        |lag: Vec<broker_lite::protocol::QueueLag>| lag.iter().map(|q| q.unsettled).sum::<u64>();
    assert_eq!(unsettled(admin.lag("billing").await.unwrap()), 1);
    alice.ack(&delivery).await.unwrap();
    assert_eq!(unsettled(admin.lag("billing").await.unwrap()), 0);
}

#[tokio::test]
async fn a_receipt_settles_only_for_the_member_it_was_delivered_to() {
    let env = start(None).await;
    let addr = env.broker.addr();
    // Both members join before the message is sent, so no rebalance moves it afterwards.
    let mut members = Vec::new();
    for id in ["alice-1", "alice-2"] {
        let mut config = consumer_config("billing", as_user("alice"));
        config.consumer_id = id.into();
        members.push(Consumer::connect(addr, config).await.unwrap());
    }
    alice_sends_one(addr).await;
    let mut delivered = None;
    for (i, member) in members.iter().enumerate() {
        if let Some(d) = member.pull(1, Duration::ZERO).await.unwrap().pop() {
            delivered = Some((i, d));
        }
    }
    let (owner, delivery) = delivered.expect("one member owns the message's queue");
    let (owner, other) = (&members[owner], &members[1 - owner]);
    let owner_id = owner.config().consumer_id.clone();

    // Same principal, same group, but another member: ack, nack and dead-letter are refused.
    let reply = refusal(&other.ack(&delivery).await.unwrap_err()).clone();
    assert_eq!(reply.code, ErrorCode::Forbidden);
    assert!(
        reply
            .message
            .contains(&format!("delivered to member {owner_id:?}")),
        "{reply}"
    );
    assert_eq!(
        refusal(&other.nack(&delivery, None).await.unwrap_err()).code,
        ErrorCode::Forbidden
    );
    assert_eq!(
        refusal(&other.dead_letter(&delivery, None).await.unwrap_err()).code,
        ErrorCode::Forbidden
    );

    // Nothing changed: still in flight, no dead letter; the owner's own ack settles it.
    let admin = root(&env).await;
    let unsettled =
        |lag: Vec<broker_lite::protocol::QueueLag>| lag.iter().map(|q| q.unsettled).sum::<u64>();
    assert_eq!(unsettled(admin.lag("billing").await.unwrap()), 1);
    assert!(admin.dead_letters("billing", 10).await.unwrap().is_empty());
    owner.ack(&delivery).await.unwrap();
    assert_eq!(unsettled(admin.lag("billing").await.unwrap()), 0);
}

#[tokio::test]
async fn a_live_member_is_unsubscribed_only_over_its_own_connection() {
    let env = start(None).await;
    let addr = env.broker.addr();
    let mut config = consumer_config("billing", as_user("alice"));
    config.consumer_id = "alice-1".into();
    let member = Consumer::connect(addr, config).await.unwrap();

    // Same principal, another connection: it may not make alice-1 leave.
    let other = Connection::connect_with(&addr.to_string(), TIMEOUT, 8 << 20, &as_user("alice"))
        .await
        .unwrap();
    let leave = Request::Unsubscribe(Member {
        group: "billing".into(),
        consumer_id: "alice-1".into(),
    });
    let reply = refusal(&other.request(&leave, TIMEOUT).await.unwrap_err()).clone();
    assert_eq!(reply.code, ErrorCode::Forbidden);
    assert!(
        reply
            .message
            .contains("member \"alice-1\" consumes over another connection"),
        "{reply}"
    );
    let admin = root(&env).await;
    let members = |groups: Vec<broker_lite::protocol::GroupInfo>| {
        groups
            .into_iter()
            .flat_map(|g| g.members)
            .collect::<Vec<_>>()
    };
    assert_eq!(members(admin.groups().await.unwrap()), ["alice-1"]);
    // Its own connection may.
    member.close().await.unwrap();
    assert!(members(admin.groups().await.unwrap()).is_empty());
}
