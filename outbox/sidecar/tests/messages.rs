//! What `outbox-relay` tells a new user, and its exit codes: `run` started before the service's
//! migrations, `check` on a failover list, `migrate`, `failures purge`, and errors said once.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

use broker_lite::embedded::{self, EmbeddedConfig};
use sqlx::{ConnectOptions, PgPool};

courier_test_support::postgres_for_tests!();

const RELAY: &str = env!("CARGO_BIN_EXE_outbox-relay");

fn database_url(pool: &PgPool) -> String {
    pool.connect_options().to_url_lossy().to_string()
}

fn relay(args: &[&str]) -> Output {
    Command::new(RELAY)
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .output()
        .expect("the outbox-relay binary runs")
}

/// `relay(args)` on a blocking thread, so an embedded broker keeps answering on the test's runtime.
async fn relay_async(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        relay(&args)
    })
    .await
    .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Kills the relay if the test fails before it stops it.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads `lines` until one contains `wanted`; every line read, that one last. Fails at the end of
/// the stream (the process exited).
fn read_until(lines: &mut impl BufRead, wanted: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let mut line = String::new();
        let read = lines.read_line(&mut line).unwrap();
        assert!(read > 0, "the output ended before {wanted:?}: {seen:#?}");
        let found = line.contains(wanted);
        seen.push(line);
        if found {
            return seen;
        }
    }
}

#[sqlx::test]
async fn run_started_before_the_services_migrations_waits_for_them(pool: PgPool) {
    let data = tempfile::tempdir().unwrap();
    let broker = embedded::start(data.path(), EmbeddedConfig::default())
        .await
        .unwrap();
    let url = database_url(&pool);
    let child = Command::new(RELAY)
        .args([
            "--database-url",
            &url,
            "--broker",
            &broker.addr().to_string(),
        ])
        .args(["--http-listen", "127.0.0.1:0", "run"])
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let mut stderr = BufReader::new(child.0.stderr.take().unwrap());
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());

    let logged = tokio::task::spawn_blocking(move || {
        let logged = read_until(&mut stderr, "waiting for the outbox tables");
        (logged, stderr)
    });
    let (logged, mut stderr) = logged.await.unwrap();
    let waiting = logged.last().unwrap();
    assert!(
        waiting.contains("the service creates them when it starts, or run `outbox-relay migrate`"),
        "{waiting}"
    );
    assert!(
        !logged.iter().any(|l| l.contains('\u{1b}')),
        "ANSI escape codes in a log that is not a terminal: {logged:?}"
    );

    // The service starts and runs its migrations: the relay goes on by itself.
    courier_outbox::MIGRATOR.run(&pool).await.unwrap();
    // The pipes stay open until the relay has exited: it logs its shutdown.
    let (started, stdout, stderr) = tokio::task::spawn_blocking(move || {
        let started = read_until(&mut stdout, "outbox-relay http on ");
        read_until(&mut stderr, "outbox relay running");
        (started, stdout, stderr)
    })
    .await
    .unwrap();
    assert!(started.last().unwrap().starts_with("outbox-relay http on "));
    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exited = child.0.wait().unwrap();
    drop((stdout, stderr));
    assert!(
        exited.success(),
        "outbox-relay exited with {exited} after SIGTERM"
    );
    broker.shutdown().await.unwrap();
}

#[sqlx::test]
async fn run_gives_up_after_its_bound_and_names_both_fixes(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    std::fs::write(&file, "[relay]\nmigrations_wait_ms = 0\n").unwrap();
    let url = database_url(&pool);
    let file = file.to_str().unwrap().to_owned();
    let output = relay_async(&[
        "--config",
        &file,
        "--database-url",
        &url,
        "--http-listen",
        "off",
        "run",
    ])
    .await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the outbox tables did not appear within 0 s (relay.migrations_wait_ms): start the service, which creates them when it starts, or create them with `outbox-relay migrate`"),
        "{stderr}"
    );
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn check_reports_each_failover_address_on_its_own(pool: PgPool) {
    let data = tempfile::tempdir().unwrap();
    let broker = embedded::start(data.path(), EmbeddedConfig::default())
        .await
        .unwrap();
    let addr = broker.addr().to_string();
    let list = format!("{addr};127.0.0.1:1");
    let url = database_url(&pool);
    let output = relay_async(&["--database-url", &url, "--broker", &list, "check"]).await;
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        text(&output.stderr)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l == format!("broker: {addr} reachable")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("broker: 127.0.0.1:1 unreachable: could not connect")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("WARNING: failover address 127.0.0.1:1 is unreachable")),
        "{stdout}"
    );
    assert!(
        stdout.contains("one-way topics:      none (P3)"),
        "{stdout}"
    );
    assert!(!stdout.contains("{}"), "{stdout}");
    broker.shutdown().await.unwrap();
}

#[test]
fn check_says_valid_only_once_the_database_url_is_understood() {
    let output = relay(&["--database-url", "http://127.0.0.1/app", "check"]);
    assert_ne!(output.status.code(), Some(0));
    assert!(
        !text(&output.stdout).contains("configuration: valid"),
        "{}",
        text(&output.stdout)
    );
}

#[test]
fn a_broker_address_without_a_port_is_invalid_configuration_with_the_cause() {
    let output = relay(&[
        "--database-url",
        "postgres://nobody@127.0.0.1:1/x",
        "--broker",
        "127.0.0.1",
        "check",
    ]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("broker address \"127.0.0.1\" is not host:port: add the port, for example 127.0.0.1:9876"),
        "{stderr}"
    );
    assert!(!stderr.contains("start it"), "{stderr}");
}

#[sqlx::test]
async fn a_missing_database_is_said_once(pool: PgPool) {
    let url = database_url(&pool);
    let (base, _) = url.rsplit_once('/').unwrap();
    let missing = format!("{base}/courier_no_such_database");
    let output = relay_async(&["--database-url", &missing, "migrate"]).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr
            .matches("database \"courier_no_such_database\" does not exist")
            .count(),
        1,
        "{stderr}"
    );
}

#[sqlx::test]
async fn migrate_says_what_it_applied_and_restarts_are_quiet(pool: PgPool) {
    let url = database_url(&pool);
    let first = relay_async(&["--database-url", &url, "migrate"]).await;
    let stdout = text(&first.stdout);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let applied = courier_outbox::MIGRATOR.iter().count();
    assert!(
        stdout.contains(&format!(
            "outbox tables created or upgraded: {applied} migration(s) applied"
        )),
        "{stdout}"
    );
    for migration in courier_outbox::MIGRATOR.iter() {
        assert!(
            stdout.contains(&format!(
                "applied {} {}",
                migration.version, migration.description
            )),
            "{stdout}"
        );
    }

    let again = relay_async(&["--database-url", &url, "migrate"]).await;
    let stdout = text(&again.stdout);
    assert!(again.status.success());
    assert!(
        stdout.contains(&format!(
            "outbox tables are up to date: all {applied} migration(s) were already applied"
        )),
        "{stdout}"
    );
    let stderr = text(&again.stderr);
    assert!(!stderr.contains("already exists"), "{stderr}");
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn purge_names_rfc_3339_and_purge_all_needs_a_yes_without_a_terminal(pool: PgPool) {
    sqlx::query(
        "INSERT INTO outbox.failures
             (id, seq, topic, key, tag, headers, payload, created_at, attempts, last_error,
              failed_at)
         VALUES (gen_random_uuid(), 1, 'orders', NULL, NULL, '{}', '\\x00', now(), 16,
                 'Connection refused', now())",
    )
    .execute(&pool)
    .await
    .unwrap();
    let url = database_url(&pool);
    let count = || sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox.failures");

    let output = relay_async(&[
        "--database-url",
        &url,
        "failures",
        "purge",
        "--until",
        "yesterday",
    ])
    .await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr
            .contains("\"yesterday\" is not an RFC 3339 time: write it like 2026-11-30T08:00:00Z"),
        "{stderr}"
    );

    let output = relay_async(&["--database-url", &url, "failures", "purge", "--all"]).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("add --yes to confirm"), "{stderr}");
    assert_eq!(count().fetch_one(&pool).await.unwrap(), 1, "nothing purged");

    let output = relay_async(&[
        "--database-url",
        &url,
        "failures",
        "purge",
        "--all",
        "--yes",
    ])
    .await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("purged 1 failed message(s)"));
    assert_eq!(count().fetch_one(&pool).await.unwrap(), 0);
}
