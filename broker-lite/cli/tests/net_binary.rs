//! The real `broker-lite` binary: configuration errors, graceful SIGTERM, and kill -9 under load.

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker_lite_client::protocol::Message;
use broker_lite_client::{Admin, AdminConfig, Producer, ProducerConfig};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

const BIN: &str = env!("CARGO_BIN_EXE_broker-lite");
/// An upper bound for the whole test, so a hang fails instead of blocking CI.
const BOUND: Duration = Duration::from_secs(120);

/// Starts `broker-lite serve` with sync flush on `dir` and returns it with its address.
async fn spawn_broker(dir: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--flush",
            "sync",
            "--segment-bytes",
            "16777216",
        ])
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the broker binary starts");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).await.unwrap();
    let addr = line
        .trim()
        .strip_prefix("broker-lite listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (child, addr)
}

#[tokio::test]
async fn invalid_configuration_exits_non_zero_with_a_clear_error() {
    let out = Command::new(BIN).arg("serve").output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no data directory"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broker.toml");
    std::fs::write(&file, "data_dir = \"/tmp/x\"\nflush = \"sometimes\"\n").unwrap();
    let out = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&file)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid config file") && stderr.contains("flush"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_config_file_configures_serve_and_admin_subcommands_reach_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broker.toml");
    let data = dir.path().join("data");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {data:?}\nflush = \"async\"\nflush_interval_ms = 100\nsegment_bytes = 16777216\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .await
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("broker-lite listening on ")
        .unwrap()
        .to_string();
    assert!(data.is_dir(), "the data directory comes from the file");

    let admin = |args: &[&str]| {
        let mut command = Command::new(BIN);
        command.arg("--addr").arg(&addr).args(args);
        command
    };
    let created = admin(&["topics", "create", "orders", "--queues", "3"])
        .output()
        .await
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let listed = admin(&["topics", "list"]).output().await.unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("orders") && l.ends_with('3')),
        "{listed}"
    );
    let missing = admin(&["lookup", "--id", "0190c6f2-0000-7000-8000-000000000000"])
        .output()
        .await
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no such message"));
    let described = admin(&["describe"]).output().await.unwrap();
    assert!(described.status.success());
    let described = String::from_utf8_lossy(&described.stdout);
    assert!(
        described
            .lines()
            .any(|l| l.starts_with("flush mode:") && l.contains("ASYNC_FLUSH; fsync every 100 ms")),
        "the flush mode comes from the file: {described}"
    );
    assert!(
        described.contains("retention:           72 h"),
        "{described}"
    );

    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

#[tokio::test]
async fn sigterm_shuts_down_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn_broker(dir.path()).await;
    let admin = Admin::connect(addr.as_str(), AdminConfig::default())
        .await
        .unwrap();
    admin.create_topic("orders", 2).await.unwrap();
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(BOUND, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_send_ok_message_survives_kill_9_under_load() {
    tokio::time::timeout(BOUND, kill_9_under_load())
        .await
        .expect("bounded in time");
}

async fn kill_9_under_load() {
    const N: usize = 2000;
    const PRODUCERS: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn_broker(dir.path()).await;

    let mut config = ProducerConfig::default();
    config.retries = 0;
    config.send_timeout = Duration::from_secs(5);
    config.connect_timeout = Duration::from_secs(1);
    let producer = Producer::connect(addr.as_str(), config).await.unwrap();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let enough = Arc::new(Notify::new());
    let tasks: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (producer, acked, count, enough) = (
                producer.clone(),
                acked.clone(),
                count.clone(),
                enough.clone(),
            );
            tokio::spawn(async move {
                for i in 0..N / PRODUCERS {
                    let message = Message::new("load", format!("producer {p} message {i}"))
                        .with_key(format!("k{p}"));
                    match producer.send(message).await {
                        Ok(result) if result.is_ok() => {
                            acked.lock().unwrap().push(result.message_id);
                            if count.fetch_add(1, Ordering::SeqCst) + 1 == N / 4 {
                                enough.notify_one();
                            }
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();

    // Kill -9 while the producers are still sending.
    enough.notified().await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    for task in tasks {
        task.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= N / 4);
    eprintln!(
        "{} of {N} sends answered SEND_OK before the kill",
        acked.len()
    );

    let (mut restarted, addr) = spawn_broker(dir.path()).await;
    let admin = Admin::connect(addr.as_str(), AdminConfig::default())
        .await
        .unwrap();
    let mut missing = Vec::new();
    for id in &acked {
        if admin.lookup_by_id(*id).await.unwrap().is_none() {
            missing.push(*id);
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} SEND_OK messages lost: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    restarted.start_kill().unwrap();
    restarted.wait().await.unwrap();
}
