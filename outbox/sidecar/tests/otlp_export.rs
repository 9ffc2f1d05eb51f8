//! `outbox-relay run --otlp-endpoint`: the relay's `outbox.publish` spans reach a real OTLP/gRPC
//! receiver (the collector's generated service, from opentelemetry-proto) as children of the
//! `traceparent` the row was enqueued with, and the broker's message carries the publish span as
//! its parent for the consumer.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use broker_lite::client::{Consumer, ConsumerConfig};
use broker_lite::embedded::{self, EmbeddedConfig};
use courier_outbox::{Message, Outbox};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use sqlx::{ConnectOptions, PgPool};
use tokio::sync::mpsc;

courier_test_support::postgres_for_tests!();

const RELAY: &str = env!("CARGO_BIN_EXE_outbox-relay");
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";
const PATIENCE: Duration = Duration::from_secs(30);

/// An OTLP trace receiver handing every export request to the test.
struct Receiver(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn terminate(mut child: Child) {
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(child.wait().unwrap().success());
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn publish_spans_are_exported_over_otlp_inside_the_enqueued_trace(pool: PgPool) {
    let (exported, mut exports) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Receiver(exported)))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let data = tempfile::tempdir().unwrap();
    let broker = embedded::start(data.path(), EmbeddedConfig::default())
        .await
        .unwrap();
    broker.broker().create_topic("orders", 1).await.unwrap();
    let addr = broker.addr().to_string();
    // The application's trace, as its own OpenTelemetry layer would have stamped the row.
    let message = Message::new("orders", "order 7")
        .with_header("traceparent", format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01"));
    Outbox::new().enqueue(&pool, &message).await.unwrap();

    let url = pool.connect_options().to_url_lossy().to_string();
    let child = Command::new(RELAY)
        .args([
            "--database-url",
            &url,
            "--broker",
            &addr,
            "--http-listen",
            "off",
        ])
        .args(["--otlp-endpoint", &collector, "run"])
        .env_remove("DATABASE_URL")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env("OTEL_SERVICE_NAME", "relay-under-test")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let consumer = Consumer::connect(addr.as_str(), ConsumerConfig::new("billing", "orders"))
        .await
        .unwrap();
    let delivered = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(d) = consumer
                .pull(1, Duration::from_millis(500))
                .await
                .unwrap()
                .pop()
            {
                return d;
            }
        }
    })
    .await
    .expect("the relay publishes the message");
    // SIGTERM: the relay exports what its batch exporter still holds before it exits.
    tokio::task::spawn_blocking(move || terminate(child))
        .await
        .unwrap();

    let span = tokio::time::timeout(PATIENCE, async {
        loop {
            let request = exports.recv().await.expect("the receiver runs");
            for resource in request.resource_spans {
                let service = resource
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| kv.value.as_ref()?.value.clone());
                for scope in resource.scope_spans {
                    for span in scope.spans {
                        if span.name == "outbox.publish" {
                            return (service, span);
                        }
                    }
                }
            }
        }
    })
    .await
    .expect("an outbox.publish span is exported");
    let (service, span) = span;
    assert_eq!(service, Some(Value::StringValue("relay-under-test".into())));
    assert_eq!(hex::encode(&span.trace_id), TRACE_ID);
    assert_eq!(hex::encode(&span.parent_span_id), PARENT_SPAN_ID);
    // The consumer's parent is the relay's publish span.
    let sent = &delivered.message.properties["traceparent"];
    assert_eq!(
        sent,
        &format!("00-{TRACE_ID}-{}-01", hex::encode(&span.span_id))
    );
    broker.shutdown().await.unwrap();
}
