//! What `produce` and `consume` check before touching a topic: that a broker answers at the
//! address and that the topic exists. The broker creates unknown topics on first use, so without
//! this check a typo in an incident would quietly create `ordrs` and send the message nowhere
//! anyone reads.

use anyhow::{Context, Result};
use broker_lite_client::{Admin, AdminConfig};

use crate::exit::Exit;

/// An admin connection to the first reachable address of `addresses`.
pub(crate) async fn connect(addresses: &str) -> Result<Admin> {
    Admin::connect(addresses, AdminConfig::default())
        .await
        .with_context(|| format!("cannot reach a broker at {addresses}"))
}

/// Refuses `topic` when the broker does not have it, unless `create` (then it is created with
/// `queues`, and a note goes to stderr).
pub(crate) async fn existing_topic(admin: &Admin, topic: &str, create: Option<u32>) -> Result<()> {
    let topics = admin.topics().await.context("cannot list the topics")?;
    if topics.iter().any(|t| t.name == topic) {
        return Ok(());
    }
    let Some(queues) = create else {
        let known: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
        return Err(Exit::input(format!(
            "unknown topic {topic:?} (the broker has: {}); check the name, or create it with \
             `broker-lite topics create {topic}` or pass --create-topic",
            if known.is_empty() {
                "no topics".to_owned()
            } else {
                known.join(", ")
            }
        ))
        .into());
    };
    admin
        .create_topic(topic, queues)
        .await
        .with_context(|| format!("cannot create topic {topic}"))?;
    eprintln!("created topic {topic} with {queues} queues");
    Ok(())
}
