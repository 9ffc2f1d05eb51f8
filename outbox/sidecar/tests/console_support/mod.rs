//! What the console's HTTP tests share: the `outbox-relay` binary started on a free loopback port
//! (killed when the test ends, passed or not) and plain HTTP/1.1 requests to it.

#![allow(dead_code)] // each test binary uses its own part

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use broker_lite::embedded::{self, EmbeddedBroker, EmbeddedConfig};
use tempfile::TempDir;

/// The console token the tests configure.
pub(crate) const TOKEN: &str = "console-shared-test-token";

/// A running `outbox-relay`, killed on drop.
pub(crate) struct Relay {
    child: Child,
    /// `host:port` of its HTTP listener.
    pub(crate) addr: String,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Relay {
    /// Starts `outbox-relay --database-url <database> --broker <broker> --http-listen <listen>
    /// <command>` (`run` or `console`) with `token` as its console token, and waits for the
    /// line that names its listener.
    pub(crate) fn start(
        database: &str,
        broker: &str,
        listen: &str,
        command: &str,
        token: Option<&str>,
    ) -> Self {
        let mut relay = Command::new(env!("CARGO_BIN_EXE_outbox-relay"));
        relay
            .args(["--database-url", database, "--broker", broker])
            .args(["--http-listen", listen, command])
            .env_remove("DATABASE_URL")
            .env_remove("OUTBOX_RELAY_CONSOLE_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(token) = token {
            relay.env("OUTBOX_RELAY_CONSOLE_TOKEN", token);
        }
        let mut child = relay.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let bound = line
            .trim()
            .rsplit_once(" on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .1;
        // A wildcard listener is reached on loopback.
        let port = bound.rsplit_once(':').unwrap().1;
        Self {
            child,
            addr: format!("127.0.0.1:{port}"),
        }
    }

    /// `http://host:port`, the `Origin` of the console's own pages.
    pub(crate) fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `GET path`: the status and the whole response.
    pub(crate) fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        http(&self.addr, "GET", path, headers, "")
    }

    /// `POST path` with a form body, from the console's own origin.
    pub(crate) fn post(&self, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
        let origin = self.origin();
        let mut all = vec![("Origin", origin.as_str())];
        all.extend_from_slice(headers);
        http(&self.addr, "POST", path, &all, body)
    }
}

/// An embedded broker-lite on a free loopback port, served by a runtime of its own.
///
/// The tests talk to the relay with blocking HTTP calls and `sqlx::test` runs them on a
/// single-threaded runtime; a broker served by that runtime could not answer the relay (its
/// opening ping, a replay's publish) while the test waits for the relay's answer. On its own
/// runtime it always can.
pub(crate) struct TestBroker {
    broker: Option<EmbeddedBroker>,
    runtime: Option<tokio::runtime::Runtime>,
    _data: TempDir,
}

impl TestBroker {
    /// The address the broker listens on.
    pub(crate) fn addr(&self) -> std::net::SocketAddr {
        self.embedded().addr()
    }

    /// The in-process broker handle.
    pub(crate) fn broker(&self) -> &broker_lite::Broker {
        self.embedded().broker()
    }

    /// Stops the server and closes the broker (offsets saved, log flushed).
    pub(crate) async fn shutdown(mut self) -> Result<(), broker_lite::embedded::EmbeddedError> {
        let broker = self.broker.take().expect("shut down once");
        let closed = self
            .runtime
            .as_ref()
            .expect("the broker's runtime lives as long as the broker")
            .spawn(broker.shutdown());
        closed.await.expect("the broker's shutdown task")
    }

    fn embedded(&self) -> &EmbeddedBroker {
        self.broker.as_ref().expect("not shut down")
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        drop(self.broker.take());
        // Dropping a runtime may block, which a test's async context does not allow.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Starts a [`TestBroker`] with the default configuration.
pub(crate) async fn start_broker() -> TestBroker {
    start_broker_with(EmbeddedConfig::default()).await
}

/// Starts a [`TestBroker`] with `config`.
pub(crate) async fn start_broker_with(config: EmbeddedConfig) -> TestBroker {
    let data = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("test-broker")
        .enable_all()
        .build()
        .unwrap();
    let started = runtime.spawn(embedded::start(data.path().to_owned(), config));
    let broker = started.await.unwrap().unwrap();
    TestBroker {
        broker: Some(broker),
        runtime: Some(runtime),
        _data: data,
    }
}

/// One HTTP/1.1 request; the status and the whole response (headers and body).
pub(crate) fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Content-Type: application/x-www-form-urlencoded\r\n\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    (response[9..12].parse().unwrap(), response)
}

/// The value of response header `name` (lower case, as axum writes it).
pub(crate) fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let prefix = format!("{name}: ");
    response
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map(str::trim)
}

/// The progress page of a write that started a background job: its answer must be a 303 to
/// `/console/jobs/<id>`; `what` says what was expected, for the failure message.
pub(crate) fn job_location(what: &str, (status, response): (u16, String)) -> String {
    assert_eq!(status, 303, "{what}: {response}");
    let location = header(&response, "location")
        .unwrap_or_else(|| panic!("no location: {response}"))
        .to_owned();
    assert!(location.starts_with("/console/jobs/"), "{location}");
    location
}

/// Follows a background job's page (`location`) until it shows its result, polling with a
/// bounded deadline; the result page. Every page before it must show the progress bar.
pub(crate) fn await_job(relay: &Relay, location: &str, headers: &[(&str, &str)]) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (status, body) = relay.get(location, headers);
        assert_eq!(status, 200, "{body}");
        if body.contains("id=\"result\"") {
            return body;
        }
        assert!(body.contains("<progress id=\"progress\""), "{body}");
        assert!(
            std::time::Instant::now() < deadline,
            "the job never finished: {body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
