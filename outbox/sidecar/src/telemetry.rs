//! The log and, when configured, the OpenTelemetry export of the relay's spans: every
//! `outbox.publish` span continues the `traceparent` its row was enqueued with, so a collector
//! shows the relay's attempts inside the application's trace.

use anyhow::Context;
use opentelemetry::trace::TracerProvider;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::TelemetrySettings;

/// The installed exporter, flushed by [`Telemetry::shutdown`].
pub(crate) struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Installs the global subscriber: the log on stderr (`RUST_LOG`, else `default_filter`) and,
/// with `settings.otlp_endpoint`, a batch OTLP/gRPC exporter of the same spans. Call inside a
/// Tokio runtime (the gRPC channel needs one).
pub(crate) fn init(
    settings: &TelemetrySettings,
    default_filter: &str,
    ansi: bool,
) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into());
    let log = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let provider = match &settings.otlp_endpoint {
        None => None,
        Some(endpoint) => {
            let exporter = SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.as_str())
                .build()
                .with_context(|| {
                    format!(
                        "telemetry.otlp_endpoint {endpoint:?} is not a usable OTLP/gRPC endpoint"
                    )
                })?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        Resource::builder()
                            .with_service_name(settings.service_name.clone())
                            .build(),
                    )
                    .build(),
            )
        }
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("outbox-relay")));
    tracing_subscriber::registry()
        .with(filter)
        .with(log)
        .with(otel)
        .try_init()
        .context("cannot install the log subscriber")?;
    if let Some(endpoint) = &settings.otlp_endpoint {
        tracing::info!(%endpoint, service = %settings.service_name, "exporting spans over OTLP/gRPC");
    }
    Ok(Telemetry { provider })
}

impl Telemetry {
    /// Exports the spans still buffered; a collector that is gone is logged, not fatal.
    pub(crate) fn shutdown(self, runtime: &tokio::runtime::Runtime) {
        if let Some(provider) = self.provider {
            let _inside = runtime.enter();
            if let Err(error) = provider.shutdown() {
                eprintln!("warning: the last spans were not exported: {error}");
            }
        }
    }
}
