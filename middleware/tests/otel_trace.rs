//! One OpenTelemetry trace from the business transaction to the handler: the application's span,
//! `outbox.enqueue`, the relay's `outbox.publish`, the producer's `courier.publish` and the
//! idempotent consumer's `courier.consume`, captured in-process by the SDK's in-memory exporter,
//! over a real Postgres outbox, relay and embedded broker-lite. The `traceparent` stored with the
//! outbox row and with the broker's message are the links.

mod broker_lite_support;

use std::time::Duration;

use broker_lite::client::ConsumerConfig;
use broker_lite_support::{PATIENCE, eventually, start_broker};
use courier_middleware::{
    Consumer, IdempotencyLayer, TraceLayer, TraceParent, TracePublishLayer, TxDelivery,
};
use courier_outbox::{Message, Outbox, Relay};
use opentelemetry::trace::TracerProvider;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tower::{BoxError, ServiceBuilder};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

courier_test_support::postgres_for_tests!();

/// The one span called `name`, once the exporter has it.
fn span<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    let found: Vec<&SpanData> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name} span: {found:#?}");
    found[0]
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn enqueue_relay_publish_and_the_handler_are_one_trace_linked_parent_to_child(pool: PgPool) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("otel_trace")));
    // Global: the relay, the broker and the consumer run in tasks of their own.
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let env = start_broker(|_| {}).await;
    let message = Message::new("orders", "order 7").with_key("order-7");
    async {
        let mut tx = pool.begin().await.unwrap();
        Outbox::new().enqueue(&mut *tx, &message).await.unwrap();
        tx.commit().await.unwrap();
    }
    .instrument(tracing::info_span!("checkout"))
    .await;
    let stored: String =
        sqlx::query_scalar("SELECT headers->>'traceparent' FROM outbox.messages WHERE id = $1")
            .bind(message.id)
            .fetch_one(&pool)
            .await
            .unwrap();
    let stored = TraceParent::parse(&stored).expect("the row carries a traceparent");

    let shutdown = CancellationToken::new();
    let publisher = ServiceBuilder::new()
        .layer(TracePublishLayer::new())
        .service(env.publisher().await);
    let relay = Relay::builder(pool.clone(), publisher).build().unwrap();
    let relaying = tokio::spawn(relay.run(shutdown.clone()));
    let source = env.source(ConsumerConfig::new("billing", "orders")).await;
    let handler = ServiceBuilder::new()
        .layer(TraceLayer::new())
        .layer(IdempotencyLayer::new(pool.clone()))
        .service_fn(|_: TxDelivery| async { Ok::<_, BoxError>(()) });
    let consumer = Consumer::builder(source, handler)
        .group("billing")
        .poll_wait(Duration::from_millis(200))
        .build();
    let consuming = tokio::spawn(consumer.run(shutdown.clone()));

    eventually("the handler's span is exported", || async {
        exporter
            .get_finished_spans()
            .unwrap()
            .iter()
            .any(|s| s.name == "courier.consume")
    })
    .await;
    shutdown.cancel();
    tokio::time::timeout(PATIENCE, consuming)
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(PATIENCE, relaying)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let checkout = span(&spans, "checkout");
    let enqueue = span(&spans, "outbox.enqueue");
    let relayed = span(&spans, "outbox.publish");
    let sent = span(&spans, "courier.publish");
    let handled = span(&spans, "courier.consume");
    let trace = checkout.span_context.trace_id();
    for s in [enqueue, relayed, sent, handled] {
        assert_eq!(s.span_context.trace_id(), trace, "{} in the trace", s.name);
    }
    assert_eq!(enqueue.parent_span_id, checkout.span_context.span_id());
    assert_eq!(relayed.parent_span_id, enqueue.span_context.span_id());
    assert_eq!(sent.parent_span_id, relayed.span_context.span_id());
    assert_eq!(handled.parent_span_id, sent.span_context.span_id());
    // The links are the headers: the row holds the enqueue span, the broker's message the send.
    assert_eq!(stored.trace_id(), trace.to_string());
    assert_eq!(stored.span_id(), enqueue.span_context.span_id().to_string());
    let on_broker = env
        .broker
        .broker()
        .lookup(message.id)
        .await
        .unwrap()
        .unwrap();
    let on_broker = TraceParent::parse(&on_broker.properties["traceparent"]).unwrap();
    assert_eq!(on_broker.span_id(), sent.span_context.span_id().to_string());
    env.broker.shutdown().await.unwrap();
}
