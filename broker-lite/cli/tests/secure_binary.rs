//! The real binary with users from its config file (issue 16): `describe` reports
//! authentication and TLS, admin commands authenticate from the environment, and a password
//! never appears in the output.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_broker-lite");

#[tokio::test]
async fn describe_reports_authentication_and_admin_commands_authenticate_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("root.pw");
    std::fs::write(&secret, "hunter2-but-longer\n").unwrap();
    let file = dir.path().join("broker.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n[[users]]\nname = \"root\"\npassword_file = {:?}\nadmin = true\nproduce = [\"*\"]\n",
            dir.path().join("data").display().to_string(),
            secret.display().to_string()
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
    let describe = |with_credentials: bool| {
        let mut command = Command::new(BIN);
        command.args(["--addr", &addr, "describe"]);
        if with_credentials {
            command
                .env("BROKER_LITE_USER", "root")
                .env("BROKER_LITE_PASSWORD_FILE", &secret);
        }
        command.output()
    };

    let refused = describe(false).await.unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("authentication required"), "{stderr}");

    let out = describe(true).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("authentication:      on (SCRAM-SHA-256"),
        "{stdout}"
    );
    assert!(stdout.contains("tls:                 off"), "{stdout}");
    assert!(
        !stdout.contains("warning:"),
        "loopback is not exposed: {stdout}"
    );
    assert!(!stdout.contains("hunter2") && !stderr.contains("hunter2"));
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}
