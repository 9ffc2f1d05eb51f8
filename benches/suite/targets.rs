//! What the suite's report checks (the issues' targets, each against one metric) and the notes
//! printed under it.

use crate::Params;
use crate::report::{Report, Target, size_label};

/// The targets the report checks, with the backlog sizes of this run in their metrics' names.
pub(crate) fn targets(params: &Params) -> Vec<Target> {
    let backlog = size_label(params.big_backlog.map_or(params.backlog, |(n, _)| n));
    let drain = format!("relay → broker-lite SYNC_FLUSH, 1 relay, {backlog} backlog");
    let mut targets = vec![
        Target {
            text: format!(
                "relay batch publish >= 70k msg/s ({backlog} backlog, SYNC_FLUSH, 1 relay)"
            ),
            metric: format!(
                "relay → broker-lite SYNC_FLUSH, batch publish, 1 relay, {backlog} backlog"
            ),
            at_least: true,
            bound: 70_000.0,
        },
        Target {
            text: format!("relay drain >= 0.7x raw SQL drain ({backlog} backlog)"),
            metric: format!("{drain} / raw"),
            at_least: true,
            bound: 0.7,
        },
        Target {
            text: format!(
                "relay batch publish >= 0.7x raw SQL drain ({backlog} backlog, SYNC_FLUSH, 1 relay)"
            ),
            metric: format!(
                "relay → broker-lite SYNC_FLUSH, batch publish, 1 relay, {backlog} backlog / raw"
            ),
            at_least: true,
            bound: 0.7,
        },
        Target {
            text: format!(
                "claim per batch at {backlog} within 1.2x of {} (SYNC_FLUSH, 1 relay)",
                size_label(params.backlog)
            ),
            metric: format!(
                "claim per batch, broker-lite SYNC_FLUSH, {backlog} / {}",
                size_label(params.backlog)
            ),
            at_least: false,
            bound: 1.2,
        },
        Target {
            text: format!(
                "relay → in-memory sink >= 0.85x raw SQL drain ({} backlog)",
                size_label(params.backlog)
            ),
            metric: format!(
                "relay → in-memory sink, 1 relay, {} backlog / raw",
                size_label(params.backlog)
            ),
            at_least: true,
            bound: 0.85,
        },
        Target {
            text: "commit → handler p99 <= 5 ms at 1k msg/s".into(),
            metric: "1000 msg/s: commit → handler p99".into(),
            at_least: false,
            bound: 5.0,
        },
        Target {
            text: "commit → handler p50 <= 2 ms at 1k msg/s".into(),
            metric: "1000 msg/s: commit → handler p50".into(),
            at_least: false,
            bound: 2.0,
        },
        Target {
            text: "enqueue <= 1.05x hand-written INSERT".into(),
            metric: "enqueue / hand INSERT (tx time ratio)".into(),
            at_least: false,
            bound: 1.05,
        },
    ];
    for producers in [1, 16, 64] {
        targets.push(Target {
            text: format!("broker-lite SYNC_FLUSH >= 2x RabbitMQ quorum ({producers} producers)"),
            metric: format!(
                "ratio broker-lite SYNC_FLUSH / RabbitMQ quorum, {producers} producers"
            ),
            at_least: true,
            bound: 2.0,
        });
        targets.push(Target {
            text: format!(
                "broker-lite ASYNC_FLUSH >= 1x NATS JetStream default ({producers} producers; both ack before fsync)"
            ),
            metric: format!(
                "ratio broker-lite ASYNC_FLUSH / NATS JetStream default, {producers} producers"
            ),
            at_least: true,
            bound: 1.0,
        });
        targets.push(Target {
            text: format!(
                "broker-lite SYNC_FLUSH >= 1x NATS JetStream default ({producers} producers)"
            ),
            metric: format!(
                "ratio broker-lite SYNC_FLUSH / NATS JetStream default, {producers} producers"
            ),
            at_least: true,
            bound: 1.0,
        });
    }
    targets.push(Target {
        text: "SYNC_MASTER >= 0.7x single-node SYNC_FLUSH throughput (16 producers)".into(),
        metric: "ratio SYNC_MASTER / single node throughput, 16 producers".into(),
        at_least: true,
        bound: 0.7,
    });
    targets.push(Target {
        text: "SYNC_MASTER ack p99 <= 2x single-node SYNC_FLUSH (16 producers)".into(),
        metric: "ratio SYNC_MASTER / single node ack p99, 16 producers".into(),
        at_least: false,
        bound: 2.0,
    });
    targets.push(Target {
        text: "MySQL enqueue <= 1.05x hand-written INSERT".into(),
        metric: "MySQL enqueue / hand INSERT (tx time ratio)".into(),
        at_least: false,
        bound: 1.05,
    });
    targets.push(Target {
        text: "MySQL relay drain >= 0.7x raw SQL drain".into(),
        metric: format!(
            "MySQL relay → in-memory sink, 1 relay, {}k backlog / raw",
            params.backlog / 1000
        ),
        at_least: true,
        bound: 0.7,
    });
    targets.push(Target {
        text: format!(
            "relay → RabbitMQ >= 0.7x hand-written lapin loop ({} backlog)",
            size_label(params.backlog)
        ),
        metric: format!(
            "relay → RabbitMQ, 1 relay, {}k backlog / hand-written loop",
            params.backlog / 1000
        ),
        at_least: true,
        bound: 0.7,
    });
    targets.push(Target {
        text: format!(
            "relay batch publish → RabbitMQ >= 0.7x hand-written lapin loop ({} backlog)",
            size_label(params.backlog)
        ),
        metric: format!(
            "relay → RabbitMQ, batch publish, 1 relay, {}k backlog / hand-written loop",
            params.backlog / 1000
        ),
        at_least: true,
        bound: 0.7,
    });
    targets.push(Target {
        text: format!(
            "relay batch publish → NATS JetStream >= 0.7x hand-written async-nats loop ({} backlog)",
            size_label(params.backlog)
        ),
        metric: format!(
            "relay → NATS JetStream, batch publish, 1 relay, {}k backlog / hand-written loop",
            params.backlog / 1000
        ),
        at_least: true,
        bound: 0.7,
    });
    targets.push(Target {
        text: "idempotent consumer >= 10k/s (batched layer)".into(),
        metric: "idempotency layer, batched 128 x 2 workers".into(),
        at_least: true,
        bound: 10_000.0,
    });
    targets.push(Target {
        text: "idempotency layer unbatched >= 0.85x the handler alone".into(),
        metric: "idempotency unbatched / without".into(),
        at_least: true,
        bound: 0.85,
    });
    targets.push(Target {
        text: "idempotent consumer >= 10k/s (unbatched layer)".into(),
        metric: "idempotency layer, unbatched".into(),
        at_least: true,
        bound: 10_000.0,
    });
    targets
}

/// The notes under the report's tables: how the figures were made.
pub(crate) fn notes(report: &mut Report) {
    report.note("figures are min / median / max over the repeats; every ratio is computed inside one repeat, then summarised");
    report.note("NATS JetStream 'sync always' was not run: nats-server has no per-stream fsync setting; the only one is the server-wide `jetstream { sync_interval: always }`, which the 2.9.10 server of the development machine refuses (`nats-server -t`: unknown field \"sync_interval\"). JetStream's default fsyncs on a timer (2 min in current docs), so its acks are not durable-on-ack like SYNC_FLUSH");
    report.note("NATS is driven by the suite's own minimal client (benches/suite/nats.rs: PUB with a reply subject, one ack awaited per producer), RabbitMQ by lapin; every producer has its own connection and one message in flight");
    report.note("scenario 3 stops the clock when the consumer's pull returns the delivery; `p50` / `p99` start it just before the application transaction begins (INSERT order row, enqueue, commit inside the figure), `commit → handler` just before the application sends its COMMIT (the commit's round trip and fsync inside the figure)");
    report
        .note("scenario 5 hands deliveries to the tower service directly (no broker in the loop)");
    report.note("relay batch phases come from the relay's `outbox.batch` span: 'begin+claim' is the gap between batches, 'publish' the span's first enter to the return of the batch's last publish, 'record+commit' from there to the span's close when the batch function returns");
}
