//! Per-principal topic and group counts (issue 16): a principal that reached its limit is
//! refused with a clear error frame, nothing is created, and other principals are not held back.

mod security_support;

use std::sync::Arc;

use broker_lite::client::{Admin, AdminConfig, Consumer, ConsumerConfig, Producer, ProducerConfig};
use broker_lite::protocol::{ErrorCode, Message};
use security_support::{as_user, refusal, start_with, unrestricted_users};

async fn producer(env: &security_support::Env, user: &str) -> Producer {
    let mut config = ProducerConfig::default();
    config.security = as_user(user);
    Producer::connect(env.broker.addr(), config).await.unwrap()
}

async fn consumer(
    env: &security_support::Env,
    user: &str,
    group: &str,
    topic: &str,
) -> Result<Consumer, broker_lite::client::ClientError> {
    let mut config = ConsumerConfig::new(group, topic);
    config.security = as_user(user);
    Consumer::connect(env.broker.addr(), config).await
}

async fn topic_names(env: &security_support::Env) -> Vec<String> {
    let mut config = AdminConfig::default();
    config.security = as_user("root");
    let admin = Admin::connect(env.broker.addr(), config).await.unwrap();
    admin
        .topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect()
}

async fn limited() -> security_support::Env {
    start_with(|config| {
        config.server.users = Some(Arc::new(unrestricted_users()));
        config.server.max_topics_per_principal = 2;
        config.server.max_groups_per_principal = 1;
    })
    .await
}

#[tokio::test]
async fn a_principal_at_its_topic_limit_is_refused_and_others_still_create_theirs() {
    let env = limited().await;
    let alice = producer(&env, "alice").await;
    for topic in ["a-1", "a-2"] {
        assert!(alice.send(Message::new(topic, "x")).await.unwrap().is_ok());
    }
    let error = alice.send(Message::new("a-3", "x")).await.unwrap_err();
    let reply = refusal(&error.error);
    assert_eq!(reply.code, ErrorCode::LimitExceeded);
    assert!(
        reply.message.contains(
            "principal \"alice\" has created 2 topics, the most it may (max_topics_per_principal)"
        ),
        "{reply}"
    );
    assert!(reply.message.contains("nothing was created"), "{reply}");
    // Topics that exist are not new: alice keeps sending to hers, and to bob's.
    assert!(alice.send(Message::new("a-1", "y")).await.unwrap().is_ok());

    let bob = producer(&env, "bob").await;
    for topic in ["b-1", "b-2"] {
        assert!(bob.send(Message::new(topic, "x")).await.unwrap().is_ok());
    }
    assert!(alice.send(Message::new("b-1", "y")).await.unwrap().is_ok());
    assert_eq!(topic_names(&env).await, ["a-1", "a-2", "b-1", "b-2"]);
}

#[tokio::test]
async fn a_principal_at_its_group_limit_is_refused_and_others_still_join() {
    let env = limited().await;
    let _first = consumer(&env, "alice", "alice-g1", "orders").await.unwrap();
    let error = consumer(&env, "alice", "alice-g2", "orders")
        .await
        .unwrap_err();
    let reply = refusal(&error);
    assert_eq!(reply.code, ErrorCode::LimitExceeded);
    assert!(
        reply.message.contains(
            "principal \"alice\" has created 1 consumer groups, the most it may (max_groups_per_principal)"
        ),
        "{reply}"
    );
    // bob creates his own group, and alice may join it: it exists.
    let _bob = consumer(&env, "bob", "bob-g1", "orders").await.unwrap();
    let _joined = consumer(&env, "alice", "bob-g1", "orders").await.unwrap();

    let mut config = AdminConfig::default();
    config.security = as_user("root");
    let admin = Admin::connect(env.broker.addr(), config).await.unwrap();
    let mut groups: Vec<_> = admin
        .groups()
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.name)
        .collect();
    groups.sort();
    assert_eq!(
        groups,
        ["alice-g1", "bob-g1"],
        "the refused group was not created"
    );
}

#[tokio::test]
async fn a_batch_naming_one_topic_too_many_is_refused_whole() {
    let env = limited().await;
    let alice = producer(&env, "alice").await;
    for topic in ["a-1", "a-2"] {
        assert!(alice.send(Message::new(topic, "x")).await.unwrap().is_ok());
    }
    let error = alice
        .send_batch(vec![Message::new("a-1", "x"), Message::new("a-3", "x")])
        .await
        .unwrap_err();
    assert_eq!(refusal(&error).code, ErrorCode::LimitExceeded);
    assert_eq!(topic_names(&env).await, ["a-1", "a-2"]);
}
