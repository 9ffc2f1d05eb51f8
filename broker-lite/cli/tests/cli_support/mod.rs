//! What the `produce`/`consume` tests share: a real `broker-lite serve` on a free port and a way
//! to run the binary against it.

#![allow(dead_code, unreachable_pub)]

use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_broker-lite");
/// Waits longer than this fail the test instead of hanging it.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A `broker-lite serve` process on its own data directory; killed on drop.
pub struct Broker {
    pub child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

/// Starts `broker-lite serve` with sync flush on a free port, plus `extra` flags.
pub async fn serve(extra: &[&str]) -> Broker {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--flush", "sync"])
        .args(["--segment-bytes", "16777216"])
        .args(extra)
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
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
    Broker {
        child,
        addr,
        _dir: dir,
    }
}

/// Runs `broker-lite --addr ADDR ARGS...` with `stdin` fed to it, bounded by [`PATIENCE`].
pub async fn run(addr: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .arg("--addr")
        .arg(addr)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("broker-lite {args:?} did not finish"))
        .unwrap()
}

/// stdout, checking the exit status was 0.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        text(&out.stderr)
    );
    text(&out.stdout)
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The ids of `SEND_OK id=... ` lines.
pub fn sent_ids(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .map(|l| {
            assert!(l.starts_with("SEND_OK id="), "{l:?}");
            l["SEND_OK id=".len()..]
                .split(' ')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// Each `--json` line of `consume`, parsed.
pub fn deliveries(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}
