//! `broker-lite produce` and `consume` round trips against a real `broker-lite serve`: bodies
//! from arguments, a file and stdin with key, tag and headers; a group that is not acked gives
//! its deliveries back; `--ack` settles them; a tail shows only what arrives after it started.

mod cli_support;

use std::process::Stdio;

use cli_support::{BIN, PATIENCE, deliveries, ok, run, sent_ids, serve};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test]
async fn arguments_with_key_tag_and_headers_arrive_as_sent_and_ack_settles_them() {
    let broker = serve(&[]).await;
    let addr = broker.addr.as_str();
    ok(&run(addr, &["topics", "create", "orders", "--queues", "2"], b"").await);
    let stdout = ok(&run(
        addr,
        &[
            "produce",
            "orders",
            "order 7 created",
            "order 7 paid",
            "--key",
            "order-7",
            "--tag",
            "billing",
            "-H",
            "source=ops",
            "-H",
            "ticket=INC-1=2",
        ],
        b"",
    )
    .await);
    let ids = sent_ids(&stdout);
    assert_eq!(ids.len(), 2, "{stdout}");
    // One key, one queue, in order.
    assert!(
        stdout.lines().all(|l| l.contains("topic=orders")),
        "{stdout}"
    );

    let args = [
        "consume", "orders", "--group", "billing", "--ack", "--max", "2", "--json",
    ];
    let got = deliveries(&ok(&run(addr, &args, b"").await));
    let bodies: Vec<&str> = got.iter().map(|d| d["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, ["order 7 created", "order 7 paid"]);
    for (d, id) in got.iter().zip(&ids) {
        assert_eq!(d["id"], id.as_str());
        assert_eq!(d["key"], "order-7");
        assert_eq!(d["tag"], "billing");
        assert_eq!(d["headers"]["source"], "ops");
        assert_eq!(d["headers"]["ticket"], "INC-1=2");
        assert_eq!(d["redelivered"], 0);
    }
    // Acked: the group has nothing left.
    let lag = ok(&run(addr, &["lag", "billing"], b"").await);
    assert!(lag.contains("total lag: 0"), "{lag}");
}

#[tokio::test]
async fn a_group_that_is_not_acked_gives_its_deliveries_back_when_the_command_exits() {
    let broker = serve(&[]).await;
    let addr = broker.addr.as_str();
    let sent = sent_ids(&ok(&run(
        addr,
        &["produce", "orders", "order 8", "--create-topic", "1"],
        b"",
    )
    .await));
    let first = run(
        addr,
        &["consume", "orders", "-g", "billing", "-n", "1"],
        b"",
    )
    .await;
    let shown = ok(&first);
    assert!(shown.starts_with("orders:0@0 id="), "{shown}");
    assert!(
        shown.contains(&sent[0]) && shown.contains("\n  order 8\n"),
        "{shown}"
    );
    let stderr = cli_support::text(&first.stderr);
    assert!(stderr.contains("not acking"), "{stderr}");
    assert!(stderr.contains("1 deliveries shown, not acked"), "{stderr}");

    // The same message again, at once (not after the consume timeout). A member leaving is not
    // the handler's failure, so it does not count as a reconsume.
    let again = run(
        addr,
        &[
            "consume", "orders", "-g", "billing", "-n", "1", "--ack", "--json",
        ],
        b"",
    )
    .await;
    let got = deliveries(&ok(&again));
    assert_eq!(got[0]["id"], sent[0].as_str());
    assert_eq!(got[0]["redelivered"], 0);
}

#[tokio::test]
async fn a_terminated_consumer_gives_back_what_it_printed_and_did_not_ack() {
    let broker = serve(&[]).await;
    let addr = broker.addr.as_str();
    let sent = sent_ids(&ok(&run(
        addr,
        &["produce", "orders", "order 9", "--create-topic"],
        b"",
    )
    .await));
    let mut consumer = Command::new(BIN)
        .args(["--addr", addr, "consume", "orders", "--group", "billing"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(consumer.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(PATIENCE, stdout.read_line(&mut line))
        .await
        .expect("a delivery is printed")
        .unwrap();
    assert!(line.contains(&sent[0]), "{line}");
    let pid = consumer.id().unwrap().to_string();
    let kill = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(kill.success());
    let out = tokio::time::timeout(PATIENCE, consumer.wait_with_output())
        .await
        .expect("SIGTERM ends consume")
        .unwrap();
    assert!(out.status.success(), "{}", cli_support::text(&out.stderr));
    let got = deliveries(&ok(&run(
        addr,
        &["consume", "orders", "-g", "billing", "-n", "1", "--json"],
        b"",
    )
    .await));
    assert_eq!(got[0]["id"], sent[0].as_str());
}

#[tokio::test]
async fn a_file_is_one_message_and_stdin_lines_are_one_each_also_pipelined() {
    let broker = serve(&[]).await;
    let addr = broker.addr.as_str();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("order.json");
    std::fs::write(&file, "{\"order\": 7,\n \"state\": \"paid\"}\n").unwrap();
    let path = file.to_str().unwrap();
    let from_file = sent_ids(&ok(&run(
        addr,
        &["produce", "orders", "--create-topic", "--file", path],
        b"",
    )
    .await));
    assert_eq!(from_file.len(), 1);

    let lines: String = (0..300).map(|i| format!("line {i}\n\n")).collect();
    let from_stdin = ok(&run(
        addr,
        &["produce", "orders", "--lines", "--async", "-t", "bulk"],
        lines.as_bytes(),
    )
    .await);
    let ids = sent_ids(&from_stdin);
    assert_eq!(ids.len(), 300, "empty lines are skipped: {from_stdin}");

    let got = deliveries(&ok(&run(
        addr,
        &[
            "consume", "orders", "-g", "audit", "--ack", "-n", "301", "--json",
        ],
        b"",
    )
    .await));
    let file_body = got
        .iter()
        .find(|d| d["id"] == from_file[0].as_str())
        .unwrap();
    assert_eq!(file_body["body"], "{\"order\": 7,\n \"state\": \"paid\"}\n");
    // Every answer printed is the message of its line: the ids printed in input order.
    let body_of: std::collections::HashMap<&str, &str> = got
        .iter()
        .map(|d| (d["id"].as_str().unwrap(), d["body"].as_str().unwrap()))
        .collect();
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(body_of[id.as_str()], format!("line {n}"));
    }
}

#[tokio::test]
async fn a_tail_shows_only_messages_stored_after_it_started_and_leaves_groups_alone() {
    let broker = serve(&[]).await;
    let addr = broker.addr.as_str();
    ok(&run(
        addr,
        &["produce", "orders", "--create-topic", "2", "old 1", "old 2"],
        b"",
    )
    .await);
    let mut tail = Command::new(BIN)
        .args([
            "--addr", addr, "consume", "orders", "--tail", "--max", "2", "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(tail.stderr.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(PATIENCE, stderr.read_line(&mut line))
        .await
        .expect("the tail says it is ready")
        .unwrap();
    assert!(
        line.starts_with("tailing topic orders in private group broker-lite-tail-"),
        "{line}"
    );
    assert!(line.contains("2 earlier messages skipped"), "{line}");
    let new = sent_ids(&ok(&run(
        addr,
        &["produce", "orders", "new 1", "new 2"],
        b"",
    )
    .await));
    let out = tokio::time::timeout(PATIENCE, tail.wait_with_output())
        .await
        .expect("the tail stops after --max")
        .unwrap();
    let got = deliveries(&ok(&out));
    let mut ids: Vec<&str> = got.iter().map(|d| d["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    let mut expected: Vec<&str> = new.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(ids, expected);

    // From the beginning: the history too.
    let all = deliveries(&ok(&run(
        addr,
        &[
            "consume",
            "orders",
            "--tail",
            "--from-beginning",
            "-n",
            "4",
            "--json",
        ],
        b"",
    )
    .await));
    assert_eq!(all.len(), 4);
}
