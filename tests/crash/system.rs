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
// `BrokerLite` is the product's name, not a repetition of the enum's.
#[allow(clippy::enum_variant_names)]
pub(crate) enum Broker {
    /// broker-lite (SYNC_FLUSH), embedded in a process of this test binary.
    BrokerLite,
    /// broker-lite replicated: a SYNC_MASTER leader and a follower, both processes of this test
    /// binary; a broker kill is a failover ([`System::kill_broker`]).
    Replicated,
    /// A nats-server of the test's own (`/usr/sbin/nats-server`, or `NATS_SERVER`) with JetStream,
    /// on a free port with its own store directory. The shared server on 4222 is never touched.
    Nats,
}

pub(crate) struct System {
    /// The broker, or the replicated broker's leader.
    pub(crate) broker: Process,
    pub(crate) relay: Process,
    pub(crate) consumer: Process,
    /// The replicated mode's follower.
    pub(crate) replica: Option<Replica>,
    _dir: tempfile::TempDir,
}

/// The follower of the replicated mode, and where each node listens and keeps its data.
pub(crate) struct Replica {
    follower: Process,
    /// (address, data directory) of the leader, then of the follower.
    nodes: [(String, String); 2],
    pub(crate) failovers: usize,
}

impl System {
    /// Creates the consumer's table and starts the three processes; `relay` is added to the
    /// relay's `[relay]` settings.
    pub(crate) async fn start(ledger: &Ledger, broker: Broker, relay: &str) -> Self {
        ledger.create_effects().await;
        let database = ledger.url();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut replica = None;
        let (broker_process, address) = match broker {
            Broker::Replicated => {
                let nodes = [("a", port), ("b", free_port())]
                    .map(|(name, port)| (format!("127.0.0.1:{port}"), data_dir(dir.path(), name)));
                let leader = Process::new("leader", node(&nodes[0], None));
                let follower = Process::new("follower", node(&nodes[1], Some(&nodes[0].0)));
                let addresses = format!("{};{}", nodes[0].0, nodes[1].0);
                replica = Some(Replica {
                    follower,
                    nodes,
                    failovers: 0,
                });
                (leader, addresses)
            }
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
            replica,
            _dir: dir,
        }
    }

    /// Kills of all three processes so far (a failover counts as a broker kill).
    pub(crate) fn kills(&self) -> usize {
        let failovers = self.replica.as_ref().map_or(0, |r| r.failovers);
        self.broker.kills + self.relay.kills + self.consumer.kills + failovers
    }

    /// Kills the broker with SIGKILL and restarts it; in the replicated mode fails over instead:
    /// the leader is killed, the follower promoted online, and the old leader restarted on its
    /// data as the new leader's follower.
    pub(crate) async fn kill_broker(&mut self) {
        let Some(replica) = &mut self.replica else {
            self.broker.kill_and_restart();
            return;
        };
        let [old, new] = replica.nodes.clone();
        // The runbook's precondition: the follower to promote has heard from this leader.
        promote_request(&new.0, true).await;
        self.broker.kill();
        let killed = std::time::Instant::now();
        promote_request(&new.0, false).await;
        println!(
            "failover {}: leader {} killed, {} promoted {:.1?} later",
            replica.failovers + 1,
            old.0,
            new.0,
            killed.elapsed()
        );
        let rejoined = Process::new("follower", node(&old, Some(&new.0)));
        let promoted = std::mem::replace(&mut replica.follower, rejoined);
        self.broker = promoted;
        replica.nodes = [new, old];
        replica.failovers += 1;
    }
}

fn data_dir(root: &Path, name: &str) -> String {
    root.join(name).display().to_string()
}

/// A replicated node on `(address, data directory)`, following `leader` if given.
fn node(at: &(String, String), leader: Option<&str>) -> impl Fn() -> Command + Send + use<> {
    let mut envs = vec![("CRASH_DATA", at.1.clone()), ("CRASH_BROKER", at.0.clone())];
    if let Some(leader) = leader {
        envs.push(("CRASH_LEADER", leader.to_owned()));
    }
    role("node", envs)
}

/// Promotes the follower at `address` (the admin call of `broker-lite promote`), retrying while
/// it is not reachable yet or not in sync; with `dry_run` only waits until it is in sync.
async fn promote_request(address: &str, dry_run: bool) {
    use broker_lite::client::{Admin, AdminConfig};
    use broker_lite::protocol::PromoteRequest;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        match Admin::connect(address, AdminConfig::default()).await {
            Ok(admin) => match admin
                .promote(PromoteRequest {
                    force: false,
                    dry_run,
                })
                .await
            {
                Ok(p) if p.promoted || (dry_run && p.in_sync) => return,
                Ok(p) => last = format!("not promoted: {p:?}"),
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the follower at {address} was not promoted: {last}");
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
