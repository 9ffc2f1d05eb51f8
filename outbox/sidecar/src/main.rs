//! `outbox-relay`: the relay as a sidecar process. It drains an application's outbox table to
//! broker-lite, serves `/healthz`, `/readyz` and `/metrics`, and manages the failure table.
//!
//! ```sh
//! outbox-relay --database-url postgres://postgres@127.0.0.1:5432/app migrate
//! outbox-relay --database-url postgres://postgres@127.0.0.1:5432/app --broker 127.0.0.1:9876 check
//! outbox-relay --config relay.toml run
//! outbox-relay --config relay.toml failures list --topic payments
//! outbox-relay --config relay.toml failures replay --error "connection refused"
//! outbox-relay --config relay.toml --http-listen 127.0.0.1:9400 console   # the web console alone
//! outbox-relay --broker nats://127.0.0.1:4222 topology apply --topic ORDER_CREATED --group payment-service=ORDER_CREATED
//! ```
//!
//! Settings come from the TOML file (`--config`), then the environment, then flags; see
//! `config.rs` for every key. Exit status: 0 on success, 1 on a runtime error (database or
//! broker unreachable, missing migrations), 2 on invalid configuration.

mod check;
mod config;
mod console;
mod database;
mod failures;
mod http;
mod migrate;
mod nats_check;
mod publisher;
mod rabbitmq_check;
mod run;
mod telemetry;
mod topology;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use config::Config;
use failures::FailuresCommand;

#[derive(Debug, Parser)]
#[command(
    name = "outbox-relay",
    version,
    about = "Drains a transactional outbox to broker-lite, NATS JetStream or RabbitMQ."
)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "OUTBOX_RELAY_CONFIG")]
    config: Option<PathBuf>,
    /// The application's database, postgres:// or mysql:// / mariadb:// (overrides
    /// `database_url` in the file).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// The broker: `nats://host:port` for NATS JetStream, `amqp://user:password@host:port/vhost` for RabbitMQ, broker-lite addresses `host:port;host:port` otherwise (overrides `broker.addresses`).
    #[arg(long, env = "OUTBOX_RELAY_BROKER")]
    broker: Option<String>,
    /// Address for /healthz, /readyz and /metrics, or "off" (overrides `http.listen`).
    #[arg(long, env = "OUTBOX_RELAY_HTTP")]
    http_listen: Option<String>,
    /// Export spans to this OTLP/gRPC collector, e.g. `http://127.0.0.1:4317` (overrides
    /// `telemetry.otlp_endpoint`; default: no export).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// The `service.name` of exported spans (overrides `telemetry.service_name`).
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    otel_service_name: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or upgrade the outbox tables.
    Migrate,
    /// Relay messages until SIGTERM or SIGINT.
    Run,
    /// Inspect, replay or purge the failure table.
    #[command(subcommand)]
    Failures(FailuresCommand),
    /// Validate the configuration, reach the database and the broker, print the durability profile.
    Check,
    /// Provision (`apply`) or audit (`check`) the streams, exchanges and queues of the topics.
    #[command(subcommand)]
    Topology(topology::TopologyCommand),
    /// Serve the web console only, without relaying: for an application that runs the relay in
    /// its own process. Listens on `http.listen` (`--http-listen`).
    Console,
}

/// The log filter unless `RUST_LOG` says otherwise: sqlx's Postgres notices ("relation ...
/// already exists, skipping" on every start) are not news.
const DEFAULT_LOG_FILTER: &str = "info,sqlx::postgres::notice=warn";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match settings(&cli) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {}", report(&error));
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // The OTLP/gRPC exporter is built inside the runtime it sends with.
    let telemetry = match runtime.block_on(async {
        telemetry::init(&config.telemetry, DEFAULT_LOG_FILTER, colours_wanted())
    }) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("error: {}", report(&error));
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(execute(cli.command, config));
    telemetry.shutdown(&runtime);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", report(&error));
            exit_code(&error)
        }
    }
}

/// Colours in the log only for a person: stderr is a terminal and `NO_COLOR` is unset or empty
/// (<https://no-color.org>); a log redirected to a file gets no escape codes.
fn colours_wanted() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// `error` and its causes, `: `-separated, each said once: some errors (sqlx's among them) put
/// their source's text in their own message as well as in the chain.
fn report(error: &anyhow::Error) -> String {
    let mut said = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if said.ends_with(&text) {
            continue;
        }
        if !said.is_empty() {
            said.push_str(": ");
        }
        said.push_str(&text);
    }
    said
}

/// 2 for a setting the library refused (`settings` catches most of them before any connection;
/// this catches whatever it missed), 1 for everything else.
fn exit_code(error: &anyhow::Error) -> ExitCode {
    let invalid_configuration = error
        .chain()
        .any(|cause| matches!(cause.downcast_ref(), Some(courier_outbox::Error::Config(_))));
    if invalid_configuration {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}

fn settings(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(url) = &cli.database_url {
        config.database_url = Some(url.clone());
    }
    if let Some(broker) = &cli.broker {
        config.broker.addresses = broker.clone();
    }
    if let Some(listen) = &cli.http_listen {
        config.http.listen = listen.clone();
    }
    if let Some(endpoint) = &cli.otlp_endpoint {
        config.telemetry.otlp_endpoint = Some(endpoint.clone()).filter(|e| !e.is_empty());
    }
    if let Some(name) = &cli.otel_service_name {
        config.telemetry.service_name = name.clone();
    }
    config.validate()?;
    Ok(config)
}

async fn execute(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Migrate => {
            let database = database::connect(&config).await?;
            match &database {
                database::Database::Postgres(pool) => {
                    migrate::run(pool, &courier_outbox::MIGRATOR).await
                }
                database::Database::MySql(pool) => {
                    migrate::run(pool, &courier_outbox::MYSQL_MIGRATOR).await
                }
            }
        }
        Command::Run => {
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            run::run(&config, shutdown).await
        }
        Command::Failures(command) => {
            let database = database::connect(&config).await?;
            database::ensure_migrated(&database).await?;
            database::with_pool!(&database, |pool| failures::run(pool, command).await)
        }
        Command::Check => check::run(&config).await,
        Command::Topology(command) => topology::run(&config, command).await,
        Command::Console => {
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            console::serve_only(&config, shutdown).await
        }
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn stop_on_signal(shutdown: CancellationToken) {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let term = async {
        match terminate.as_mut() {
            Some(signal) => {
                signal.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: finishing the batch in hand"),
        _ = term => tracing::info!("SIGTERM: finishing the batch in hand"),
    }
    shutdown.cancel();
}

#[cfg(test)]
mod tests {
    use super::report;

    /// Like `sqlx::Error::Database`: its message repeats its source's.
    #[derive(Debug)]
    struct EchoesItsSource(std::io::Error);

    impl std::fmt::Display for EchoesItsSource {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "error returned from database: {}", self.0)
        }
    }

    impl std::error::Error for EchoesItsSource {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_already_in_its_parents_message_is_said_once() {
        let error = anyhow::Error::new(EchoesItsSource(std::io::Error::other(
            "database \"app\" does not exist",
        )))
        .context("cannot connect to the database at postgres://127.0.0.1/app");
        assert_eq!(
            report(&error),
            "cannot connect to the database at postgres://127.0.0.1/app: error returned from \
             database: database \"app\" does not exist"
        );
    }

    #[test]
    fn distinct_causes_are_all_said() {
        let error = anyhow::anyhow!("connection refused").context("cannot reach broker-lite");
        assert_eq!(
            report(&error),
            "cannot reach broker-lite: connection refused"
        );
    }
}
