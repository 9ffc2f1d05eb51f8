//! Bad input to `produce` and `consume` gets a clear error and its own exit code (2: fix the
//! command; 1: the broker is not there), and nothing is sent or created by mistake.

mod cli_support;

use cli_support::{deliveries, ok, run, sent_ids, serve, text};

#[tokio::test]
async fn an_unknown_topic_is_refused_and_not_created() {
    let broker = serve(&[]).await;
    let addr = broker.addr.as_str();
    ok(&run(addr, &["topics", "create", "orders"], b"").await);
    for args in [
        &["produce", "ordrs", "hello"][..],
        &["consume", "ordrs", "--group", "billing"][..],
        &["consume", "ordrs", "--tail"][..],
    ] {
        let out = run(addr, args, b"").await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("unknown topic \"ordrs\" (the broker has: orders)")
                && stderr.contains("broker-lite topics create ordrs"),
            "{stderr}"
        );
        assert_eq!(text(&out.stdout), "");
    }
    let topics = ok(&run(addr, &["topics", "list"], b"").await);
    assert!(!topics.contains("ordrs"), "{topics}");
}

#[tokio::test]
async fn an_oversized_message_is_refused_with_the_limit_and_what_was_sent_before_it() {
    let broker = serve(&["--max-message-bytes", "1024"]).await;
    let addr = broker.addr.as_str();
    let big = "x".repeat(1025);
    let input = format!("small\n{big}\nafter\n");
    let out = run(
        addr,
        &["produce", "orders", "--create-topic", "--lines"],
        input.as_bytes(),
    )
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("message 2 is 1025 bytes; the broker accepts at most 1024")
            && stderr.contains("(1 sent before it, printed above)"),
        "{stderr}"
    );
    // The first line went and was printed; nothing after the refused one was sent.
    assert_eq!(sent_ids(&text(&out.stdout)).len(), 1);
    let got = deliveries(&ok(&run(
        addr,
        &[
            "consume",
            "orders",
            "--tail",
            "--from-beginning",
            "--idle-exit",
            "1",
            "--json",
        ],
        b"",
    )
    .await));
    let bodies: Vec<&str> = got.iter().map(|d| d["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, ["small"]);
}

#[tokio::test]
async fn an_unreachable_broker_is_a_runtime_failure_naming_the_address() {
    // A port that was free a moment ago: nothing listens on it.
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    for args in [
        &["produce", "orders", "hello"][..],
        &["consume", "orders", "--tail"][..],
    ] {
        let out = run(&addr, args, b"").await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("cannot reach a broker at {addr}")),
            "{stderr}"
        );
        assert_eq!(text(&out.stdout), "");
    }
}

#[tokio::test]
async fn malformed_flags_exit_2_before_connecting() {
    // No broker at all: these fail on the command line, before any connection.
    let nowhere = "127.0.0.1:1";
    for (args, says) in [
        (
            &["produce", "orders", "x", "-H", "no-equals-sign"][..],
            "is not NAME=VALUE",
        ),
        (
            &[
                "produce",
                "orders",
                "a",
                "b",
                "--id",
                "0190c6f2-0000-7000-8000-000000000000",
            ][..],
            "--id names one message",
        ),
        (
            &["produce", "orders", "--file", "/nonexistent/body.json"][..],
            "cannot read /nonexistent/body.json",
        ),
        (
            &["produce", "orders", "x", "--async", "--key", "k"][..],
            "cannot be used with",
        ),
        (&["consume", "orders"][..], "--group"),
        (
            &["consume", "orders", "--tail", "--ack"][..],
            "cannot be used with",
        ),
    ] {
        let out = run(nowhere, args, b"").await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn resending_with_an_id_keeps_the_id() {
    let broker = serve(&[]).await;
    let addr = broker.addr.as_str();
    let id = "0190c6f2-0000-7000-8000-000000000001";
    let stdout = ok(&run(
        addr,
        &["produce", "orders", "again", "--create-topic", "--id", id],
        b"",
    )
    .await);
    assert_eq!(sent_ids(&stdout), [id]);
}
