//! What the `broker-lite` admin subcommands print and how they exit, as a user sees them: the
//! trace of a message found by id or key, the lag of a clustering group, an address that is not
//! a broker's, and logs without colour codes when they go to a file.

use std::process::{Output, Stdio};
use std::time::Duration;

use broker_lite_client::protocol::{Message, SendStatus};
use broker_lite_client::{Consumer, ConsumerConfig, Producer, ProducerConfig};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_broker-lite");
/// Waits longer than this fail the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(30);

/// `broker-lite serve` on a free port in `dir`, its stderr piped; with its address.
async fn serve(dir: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--flush", "sync"])
        .args(["--segment-bytes", "16777216", "--data-dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the broker binary starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .await
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("broker-lite listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (child, addr)
}

async fn admin(addr: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--addr")
        .arg(addr)
        .args(args)
        .output()
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn trace_finds_a_message_by_id_or_key_prints_readable_times_and_fails_when_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, addr) = serve(dir.path()).await;
    let producer = Producer::connect(addr.as_str(), ProducerConfig::default())
        .await
        .unwrap();
    let sent = producer
        .send(Message::new("orders", "order 7").with_key("order-7"))
        .await
        .unwrap();
    let id = sent.message_id.to_string();

    for args in [
        vec!["trace", id.as_str()],
        vec!["trace", "--key", "order-7", "--topic", "orders"],
    ] {
        let out = admin(&addr, &args).await;
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert!(stdout.contains(&format!("message {id}")), "{stdout}");
        let stored = stdout
            .lines()
            .find(|l| l.contains("stored"))
            .unwrap_or_else(|| panic!("no stored event: {stdout}"));
        // `  2026-12-02 01:05:48.123 UTC  stored ...`: a date, not epoch milliseconds.
        let at = stored.trim_start().get(..27).unwrap_or_default();
        assert!(
            at.ends_with(" UTC") && at.as_bytes()[4] == b'-' && at.as_bytes()[10] == b' ',
            "{stored}"
        );
    }

    let unknown = admin(&addr, &["trace", "0190c6f2-0000-7000-8000-000000000000"]).await;
    assert_eq!(unknown.status.code(), Some(1), "{}", text(&unknown.stdout));
    assert!(
        text(&unknown.stderr).contains("no trace for 0190c6f2-0000-7000-8000-000000000000"),
        "{}",
        text(&unknown.stderr)
    );
    let no_key = admin(&addr, &["trace", "--key", "nobody", "--topic", "orders"]).await;
    assert_eq!(no_key.status.code(), Some(1));
    assert!(
        text(&no_key.stderr).contains("no message with key \"nobody\" in topic orders"),
        "{}",
        text(&no_key.stderr)
    );
    broker.start_kill().unwrap();
    broker.wait().await.unwrap();
}

#[tokio::test]
async fn lag_of_a_clustering_group_names_its_members_instead_of_a_column_of_dashes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, addr) = serve(dir.path()).await;
    let producer = Producer::connect(addr.as_str(), ProducerConfig::default())
        .await
        .unwrap();
    let sent = producer
        .send(Message::new("orders", "order 1"))
        .await
        .unwrap();
    assert_eq!(sent.status, SendStatus::SendOk);
    let consumer = Consumer::connect(addr.as_str(), ConsumerConfig::new("billing", "orders"))
        .await
        .unwrap();
    let member = consumer.config().consumer_id.clone();
    let deliveries = tokio::time::timeout(PATIENCE, async {
        loop {
            let got = consumer.pull(8, Duration::from_millis(500)).await.unwrap();
            if !got.is_empty() {
                return got;
            }
        }
    })
    .await
    .expect("the message is delivered");
    for delivery in &deliveries {
        consumer.ack(delivery).await.unwrap();
    }

    let out = admin(&addr, &["lag", "billing"]).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!stdout.contains("MEMBER\n"), "{stdout}");
    assert!(
        !stdout.lines().any(|l| l.trim_end().ends_with(" -")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "members (clustering: the queues are shared out among them): {member}"
        )),
        "{stdout}"
    );
    broker.start_kill().unwrap();
    broker.wait().await.unwrap();
}

#[tokio::test]
async fn an_address_that_is_not_a_broker_is_named_as_such() {
    // The database port is the likely mistake; Postgres runs beside the tests.
    let database = std::env::var("DATABASE_URL")
        .ok()
        .and_then(|url| {
            let rest = url.split_once("://")?.1;
            let host_port = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            Some(host_port.split('/').next()?.to_owned())
        })
        .filter(|host_port| host_port.contains(':'))
        .unwrap_or_else(|| "127.0.0.1:5432".to_owned());
    let out = admin(&database, &["topics", "list"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("this is not a broker-lite server (did you give the database port?)"),
        "{stderr}"
    );
    assert_eq!(text(&out.stdout), "", "no table header before the error");
}

#[tokio::test]
async fn logs_written_to_a_pipe_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, _addr) = serve(dir.path()).await;
    let mut stderr = BufReader::new(broker.stderr.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(PATIENCE, stderr.read_line(&mut line))
        .await
        .expect("a log line")
        .unwrap();
    assert!(line.contains(" INFO "), "a log line: {line:?}");
    assert!(!line.contains('\u{1b}'), "ANSI escape codes in {line:?}");
    broker.start_kill().unwrap();
    broker.wait().await.unwrap();
}

#[tokio::test]
async fn a_segment_too_small_names_the_flag_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--segment-bytes", "1000", "--data-dir"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.matches("--segment-bytes").count(), 1, "{stderr}");
    assert_eq!(stderr.matches("invalid").count(), 1, "{stderr}");
}
