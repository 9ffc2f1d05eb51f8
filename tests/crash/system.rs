//! The system under test: a broker, the relay sidecar and the idempotent consumer, each a process
//! of its own, on the test's database.

use std::path::{Path, PathBuf};
use std::process::Command;

use courier_middleware::nats::StreamSpec;

use crate::ledger::Ledger;
use crate::process::{Process, free_port, role};
use crate::{STREAM, TOPIC};

/// Which broker the system runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Broker {
    /// broker-lite (SYNC_FLUSH), embedded in a process of this test binary.
    BrokerLite,
    /// A nats-server of the test's own (`/usr/sbin/nats-server`, or `NATS_SERVER`) with JetStream,
    /// on a free port with its own store directory. The shared server on 4222 is never touched.
    Nats,
}

pub(crate) struct System {
    pub(crate) broker: Process,
    pub(crate) relay: Process,
    pub(crate) consumer: Process,
    _dir: tempfile::TempDir,
}

impl System {
    /// Creates the consumer's table and starts the three processes; `relay` is added to the
    /// relay's `[relay]` settings.
    pub(crate) async fn start(ledger: &Ledger, broker: Broker, relay: &str) -> Self {
        ledger.create_effects().await;
        let database = ledger.url();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let (broker_process, address) = match broker {
            Broker::BrokerLite => {
                let address = format!("127.0.0.1:{port}");
                let data = dir.path().join("broker").display().to_string();
                let envs = vec![("CRASH_DATA", data), ("CRASH_BROKER", address.clone())];
                (Process::new("broker", role("broker", envs)), address)
            }
            Broker::Nats => {
                let process = Process::new("nats-server", nats_server(port, dir.path()));
                let address = format!("nats://127.0.0.1:{port}");
                create_stream(&address).await;
                (process, address)
            }
        };
        let config = write_relay_config(dir.path(), &database, &address, relay);
        let relay = Process::new("relay", move || {
            let mut command = Command::new(relay_binary());
            command
                .args(["--config", config.to_str().unwrap(), "run"])
                .env_remove("DATABASE_URL");
            command
        });
        let consumer = Process::new(
            "consumer",
            role(
                "consumer",
                vec![("CRASH_DATABASE", database), ("CRASH_BROKER", address)],
            ),
        );
        Self {
            broker: broker_process,
            relay,
            consumer,
            _dir: dir,
        }
    }

    /// Kills of all three processes so far.
    pub(crate) fn kills(&self) -> usize {
        self.broker.kills + self.relay.kills + self.consumer.kills
    }
}

/// The sidecar, a package of its own.
fn relay_binary() -> PathBuf {
    courier_test_support::workspace_binary("outbox-relay", "outbox-relay")
}

/// The relay's settings: the table `[relay]` of its TOML file, added to the common ones.
fn write_relay_config(dir: &Path, database: &str, broker: &str, relay: &str) -> PathBuf {
    let file = dir.join("relay.toml");
    std::fs::write(
        &file,
        format!(
            "database_url = {database:?}\n\
             [broker]\naddresses = {broker:?}\nsend_timeout_ms = 2000\n\
             [relay]\nbatch_size = 50\npoll_interval_ms = 500\n{relay}\
             [http]\nlisten = \"off\"\n"
        ),
    )
    .unwrap();
    file
}

/// nats-server with JetStream on `port`, its store under `dir` (kept across kills).
fn nats_server(port: u16, dir: &Path) -> impl Fn() -> Command + Send + use<> {
    let store = dir.join("nats");
    move || {
        let binary =
            std::env::var("NATS_SERVER").unwrap_or_else(|_| "/usr/sbin/nats-server".to_owned());
        let mut command = Command::new(binary);
        command
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&store);
        command
    }
}

/// The orders' stream, file-backed (the durable default), once the new server answers.
async fn create_stream(address: &str) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let client = loop {
        match async_nats::connect(address).await {
            Ok(client) => break client,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(error) => panic!("nats-server on {address} did not start: {error}"),
        }
    };
    let jetstream = async_nats::jetstream::new(client);
    StreamSpec::new(STREAM, [TOPIC])
        .ensure(&jetstream)
        .await
        .unwrap_or_else(|error| panic!("cannot create the stream {STREAM}: {error}"));
}
