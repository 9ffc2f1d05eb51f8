//! The RabbitMQ publisher and topology against the broker on AMQP_URL: confirms, mandatory,
//! persistence, message id and headers, error classes, conflicting topology.

mod rabbitmq_support;

use std::collections::BTreeSet;

use courier_core::{Message, Unavailable};
use courier_middleware::lapin::options::QueueDeclareOptions;
use courier_middleware::lapin::types::{AMQPValue, FieldTable};
use courier_middleware::{
    AuditFinding, QueueSpec, RabbitMqError, RabbitMqPublisher, RabbitMqSourceConfig,
    RabbitMqTopology,
};
use futures::future::join_all;
use rabbitmq_support::{Admin, amqp_url, refused_url, unique};
use tower::{BoxError, ServiceExt};

/// An exchange with one queue bound for everything.
async fn bound(admin: &Admin, name: &str) -> (String, String) {
    let exchange = unique(&format!("{name}-x"));
    let queue = unique(&format!("{name}-q"));
    admin.owns_exchange(&exchange);
    admin.owns_queue(&queue);
    RabbitMqTopology::new()
        .exchange(&exchange)
        .queue(QueueSpec::new(&queue))
        .bind(&queue, &exchange, "#")
        .declare_on(admin.connection())
        .await
        .unwrap();
    (exchange, queue)
}

fn rabbit_error(error: &BoxError) -> &RabbitMqError {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    while let Some(error) = next {
        if let Some(found) = error.downcast_ref::<RabbitMqError>() {
            return found;
        }
        next = error.source();
    }
    panic!("not a RabbitMqError: {error}")
}

#[tokio::test]
async fn a_confirmed_message_is_persistent_with_the_envelope_id_and_headers() {
    let admin = Admin::connect().await;
    let (exchange, queue) = bound(&admin, "confirmed").await;
    let publisher = RabbitMqPublisher::connect(amqp_url()).await.unwrap();
    let message = Message::new(&exchange, r#"{"id":7}"#)
        .with_key("order-7")
        .with_tag("created")
        .with_header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
    publisher.clone().oneshot(message.clone()).await.unwrap();

    let got = admin.drain_at_least(&queue, 1).await;
    assert_eq!(got.len(), 1);
    let delivery = &got[0];
    assert_eq!(delivery.properties.delivery_mode(), &Some(2), "persistent");
    assert_eq!(
        delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string()),
        Some(message.id.to_string())
    );
    assert_eq!(delivery.routing_key.as_str(), "created", "the tag routes");
    let headers = delivery.properties.headers().as_ref().unwrap().inner();
    assert_eq!(
        headers.get("traceparent"),
        Some(&AMQPValue::LongString(
            message.headers["traceparent"].as_str().into()
        ))
    );
    assert_eq!(
        headers.get("courier-key"),
        Some(&AMQPValue::LongString("order-7".into()))
    );
    assert_eq!(delivery.data, message.payload.as_ref());
    admin.cleanup().await;
}

#[tokio::test]
async fn an_unroutable_message_fails_although_the_broker_acks_it() {
    let admin = Admin::connect().await;
    let exchange = unique("unbound-x");
    admin.owns_exchange(&exchange);
    RabbitMqTopology::new()
        .exchange(&exchange)
        .declare_on(admin.connection())
        .await
        .unwrap();
    let publisher = RabbitMqPublisher::connect(amqp_url()).await.unwrap();
    let message = Message::new(&exchange, "lost?");
    let error = publisher
        .clone()
        .oneshot(message.clone())
        .await
        .unwrap_err();
    match rabbit_error(&error) {
        RabbitMqError::Unroutable {
            message_id,
            reply_code,
            ..
        } => {
            assert_eq!(*message_id, message.id);
            assert_eq!(*reply_code, 312);
        }
        other => panic!("expected Unroutable, got {other}"),
    }
    assert!(
        !Unavailable::is_unavailable(error.as_ref()),
        "retryable: {error}"
    );
    admin.cleanup().await;
}

#[tokio::test]
async fn concurrent_publishes_each_get_their_own_confirm_and_return() {
    // Half of the messages are unroutable. On one pipelined channel RabbitMQ may confirm several
    // at once and lapin hands a returned message to whichever confirmation comes next; each
    // publish must still learn its own fate.
    let admin = Admin::connect().await;
    let (good, queue) = bound(&admin, "mixed").await;
    let bad = unique("mixed-unbound");
    admin.owns_exchange(&bad);
    RabbitMqTopology::new()
        .exchange(&bad)
        .declare_on(admin.connection())
        .await
        .unwrap();
    let publisher = RabbitMqPublisher::connect(amqp_url()).await.unwrap();
    let messages: Vec<Message> = (0..200)
        .map(|n| Message::new(if n % 2 == 0 { &good } else { &bad }, format!("{n}")))
        .collect();
    let results = join_all(
        messages
            .iter()
            .cloned()
            .map(|message| publisher.clone().oneshot(message)),
    )
    .await;
    let mut confirmed = BTreeSet::new();
    for (message, result) in messages.iter().zip(&results) {
        let routable = message.topic == good;
        assert_eq!(
            result.is_ok(),
            routable,
            "message {}: {result:?}",
            message.payload.escape_ascii()
        );
        if routable {
            confirmed.insert(message.id.to_string());
        }
    }
    let stored: BTreeSet<String> = admin
        .drain_at_least(&queue, 100)
        .await
        .iter()
        .map(|d| d.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(stored, confirmed);
    admin.cleanup().await;
}

#[tokio::test]
async fn a_missing_exchange_fails_the_publish_and_the_next_one_passes() {
    let admin = Admin::connect().await;
    let (exchange, queue) = bound(&admin, "recover").await;
    let publisher = RabbitMqPublisher::connect(amqp_url()).await.unwrap();
    // 404 NOT_FOUND closes the channel: the publisher must not reuse it.
    let error = publisher
        .clone()
        .oneshot(Message::new(unique("no-such-exchange"), "x"))
        .await
        .unwrap_err();
    assert!(!Unavailable::is_unavailable(error.as_ref()), "{error}");
    assert!(
        error.to_string().contains("NOT_FOUND") || format!("{error:?}").contains("NOTFOUND"),
        "{error:?}"
    );
    publisher
        .clone()
        .oneshot(Message::new(&exchange, "after"))
        .await
        .unwrap();
    assert_eq!(admin.drain_at_least(&queue, 1).await.len(), 1);
    admin.cleanup().await;
}

#[tokio::test]
async fn a_refused_connection_is_unavailable() {
    let publisher = RabbitMqPublisher::new(refused_url().await);
    let error = publisher
        .oneshot(Message::new("orders", "x"))
        .await
        .unwrap_err();
    assert!(Unavailable::is_unavailable(error.as_ref()), "{error}");
    assert!(matches!(
        rabbit_error(&error),
        RabbitMqError::Connect { .. }
    ));
    let error = RabbitMqPublisher::connect(refused_url().await)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("could not connect"), "{error}");
}

#[tokio::test]
async fn declaring_is_idempotent_and_an_existing_classic_queue_is_a_clear_conflict() {
    let admin = Admin::connect().await;
    let config = RabbitMqSourceConfig::new(unique("conflict")).bind(unique("conflict-x"), "#");
    admin.owns(&config);
    config
        .topology()
        .declare_on(admin.connection())
        .await
        .unwrap();
    config
        .topology()
        .declare_on(admin.connection())
        .await
        .expect("declaring the same topology again changes nothing");
    let queue_type = |name: &str| {
        let name = name.to_owned();
        let admin = &admin;
        async move {
            // Redeclaring as quorum passes only if the queue is a quorum queue.
            let mut arguments = FieldTable::default();
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
            let options = QueueDeclareOptions {
                passive: false,
                durable: true,
                ..Default::default()
            };
            admin
                .channel()
                .await
                .queue_declare(&name, options, arguments)
                .await
        }
    };
    assert!(
        queue_type(&config.dead_letter_queue()).await.is_ok(),
        "the DLQ is a quorum queue"
    );

    // Someone created the queue as a classic queue before.
    let classic = unique("classic");
    admin.owns_queue(&classic);
    admin
        .channel()
        .await
        .queue_declare(
            &classic,
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let error = RabbitMqTopology::new()
        .queue(QueueSpec::new(&classic))
        .declare_on(admin.connection())
        .await
        .unwrap_err();
    match &error {
        RabbitMqError::TopologyConflict {
            kind,
            name,
            argument,
            expected,
            ..
        } => {
            assert_eq!((*kind, name.as_str()), ("queue", classic.as_str()));
            assert_eq!(argument, "x-queue-type");
            assert_eq!(expected, "quorum");
        }
        other => panic!("expected a topology conflict, got {other}"),
    }
    let text = error.to_string();
    assert!(
        text.contains("delete") && text.contains("x-queue-type"),
        "{text}"
    );

    // The audit for `outbox-relay check` sees the same, and changes nothing.
    let missing = unique("missing");
    let findings = RabbitMqTopology::new()
        .queue(QueueSpec::new(&classic))
        .queue(QueueSpec::new(&missing))
        .audit_on(admin.connection())
        .await
        .unwrap();
    assert_eq!(
        findings,
        [
            AuditFinding::Differs {
                kind: "queue",
                name: classic.clone(),
                argument: "x-queue-type".into(),
                expected: "quorum".into(),
            },
            AuditFinding::Missing {
                kind: "queue",
                name: missing.clone(),
            },
        ]
    );
    let audited = config
        .topology()
        .audit_on(admin.connection())
        .await
        .unwrap();
    assert!(
        audited
            .iter()
            .all(|f| matches!(f, AuditFinding::Matches { .. })),
        "{audited:?}"
    );
    let options = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let absent = admin
        .channel()
        .await
        .queue_declare(&missing, options, FieldTable::default())
        .await;
    assert!(absent.is_err(), "the audit declared nothing");
    admin.cleanup().await;
}
