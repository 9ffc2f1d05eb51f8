//! A nats-server of the test's own (`/usr/sbin/nats-server`, or `NATS_SERVER`) on a free port
//! with its own store directory, so that a test can kill it with SIGKILL and restart it on the
//! same port and data. The shared server on 4222 is never touched.
// Shared by two test binaries.
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream;

/// How long to wait for the server to come up before failing.
const PATIENCE: Duration = Duration::from_secs(30);

/// A nats-server child process; killed when dropped.
pub(crate) struct NatsServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server with JetStream on a free port and a fresh store directory.
    pub(crate) fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Self {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        server.spawn();
        server
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let binary =
            std::env::var("NATS_SERVER").unwrap_or_else(|_| "/usr/sbin/nats-server".to_owned());
        let child = Command::new(&binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {binary} failed: {e}"));
        self.child = Some(child);
    }

    /// SIGKILL, and wait for the process to be gone.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Starts the server again on the same port and store.
    pub(crate) async fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is still running");
        self.spawn();
        self.ready().await;
    }

    /// Waits until the server accepts connections and JetStream answers.
    pub(crate) async fn ready(&self) -> jetstream::Context {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Ok(client) = async_nats::connect(self.url()).await {
                let jetstream = jetstream::new(client);
                // JetStream answers (a missing stream is an answer).
                match jetstream.get_stream("READINESS_PROBE").await {
                    Err(error)
                        if !matches!(
                            error.kind(),
                            jetstream::context::GetStreamErrorKind::JetStream(_)
                        ) => {}
                    _ => return jetstream,
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server on {} did not come up",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
