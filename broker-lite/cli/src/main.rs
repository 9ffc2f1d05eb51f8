//! `broker-lite`: run the broker (`serve`) or administer a running one.
//!
//! ```text
//! broker-lite serve --data-dir /var/lib/broker-lite --listen 0.0.0.0:9876 --flush sync
//! broker-lite serve --config /etc/broker-lite.toml
//! broker-lite --addr "10.0.0.1:9876;10.0.0.2:9876" topics create orders --queues 8
//! broker-lite describe
//! broker-lite lag billing
//! broker-lite lookup --id 0190c6f2-...
//! broker-lite dlq redrive billing
//! broker-lite produce orders 'order 7 created' --key order-7 -H source=ops
//! broker-lite consume orders --tail
//! broker-lite --addr 10.0.0.2:9876 promote --dry-run
//! ```
//!
//! Exit codes: 0 success, 1 runtime failure, 2 invalid command line, configuration or input
//! (unknown topic, message too large), 3 a message stored but not as durably as configured.

mod admin;
mod consume;
mod exit;
mod produce;
mod promote;
mod redrive;
mod role;
mod settings;
mod show;
mod target;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use admin::AdminCommand;
use settings::Settings;

#[derive(Debug, Parser)]
#[command(
    name = "broker-lite",
    version,
    about = "A durable single-node message broker with RocketMQ's reliability semantics"
)]
struct Cli {
    /// Broker addresses for admin commands, `;`-separated; the first reachable one is used.
    #[arg(
        long,
        global = true,
        env = "BROKER_LITE_ADDR",
        default_value = "127.0.0.1:9876"
    )]
    addr: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
// Parsed once per process: the size of the `serve` settings does not matter.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Run the broker until SIGTERM or SIGINT, then shut down gracefully.
    Serve {
        /// A TOML file with the same settings as the flags (flags win).
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: Settings,
    },
    /// Send messages (from arguments, a file or stdin) and print each send status and id.
    Produce(produce::ProduceArgs),
    /// Print a topic's deliveries, in a consumer group (no ack unless --ack) or as a tail.
    Consume(consume::ConsumeArgs),
    /// Make the running follower at --addr the leader (refused unless in sync, or --force).
    Promote(promote::PromoteArgs),
    #[command(flatten)]
    Admin(AdminCommand),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(colours_wanted())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Command::Serve { config, settings } => {
            let built = config
                .as_deref()
                .map(Settings::from_file)
                .transpose()
                .and_then(|file| {
                    let settings = settings.over(file.unwrap_or_default());
                    let role = settings.role()?;
                    let (dir, mut config) = settings.build()?;
                    if let role::Role::Broker(replication) = &role {
                        config.broker.replication = *replication;
                    }
                    Ok((dir, config, role))
                });
            let (dir, config, role) = match built {
                Ok(built) => built,
                Err(e) => {
                    eprintln!("error: invalid configuration: {e:#}");
                    return ExitCode::from(2);
                }
            };
            report(runtime.block_on(serve(dir, config, role)))
        }
        Command::Produce(args) => report(runtime.block_on(produce::run(&cli.addr, args))),
        Command::Consume(args) => report(runtime.block_on(consume::run(&cli.addr, args))),
        Command::Promote(args) => report(runtime.block_on(promote::run(&cli.addr, args))),
        Command::Admin(command) => report(runtime.block_on(admin::run(&cli.addr, command))),
    }
}

/// Colours in the log only for a person: stderr is a terminal and `NO_COLOR` is unset or empty
/// (<https://no-color.org>); a log redirected to a file gets no escape codes.
fn colours_wanted() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn report(result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit::Exit::code_of(&e))
        }
    }
}

async fn serve(
    dir: PathBuf,
    config: broker_lite::embedded::EmbeddedConfig,
    role: role::Role,
) -> Result<()> {
    if let role::Role::Follower(follower) = role {
        let node = broker_lite::replication::start_follower(&dir, config, *follower).await?;
        println!("broker-lite listening on {}", node.addr());
        tracing::info!(addr = %node.addr(), dir = %dir.display(), "broker-lite follower started");
        shutdown_signal().await?;
        node.shutdown().await?;
        return Ok(());
    }
    let broker = broker_lite::embedded::start(&dir, config).await?;
    // Scripts and tests read the bound address (useful with port 0) from this line.
    println!("broker-lite listening on {}", broker.addr());
    tracing::info!(addr = %broker.addr(), dir = %dir.display(), "broker-lite started");
    shutdown_signal().await?;
    tracing::info!("signal received; shutting down");
    broker.shutdown().await?;
    Ok(())
}

async fn shutdown_signal() -> Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}
