//! `broker-lite consume`: print what a topic delivers, as a member of a consumer group or as a
//! tail, the way `nats sub` and `kafka-console-consumer` are used in an incident.
//!
//! **Acking.** With `--group` nothing is acked unless `--ack` is given: the group belongs to a
//! service, and a command that acked would take messages away from it for good. Unacked
//! deliveries go back to the group's other members as soon as this command leaves (exit,
//! Ctrl-C, SIGTERM), or after the broker's consume timeout if it is killed without a word.
//! `--tail` consumes in a private broadcasting group that nothing else reads, so it acks
//! everything it shows (that only moves its own offsets); its history is skipped unless
//! `--from-beginning`.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use broker_lite_client::protocol::{ConsumeModel, Delivery};
use broker_lite_client::{Admin, Consumer, ConsumerConfig};
use clap::Args;
use uuid::Uuid;

use crate::{show, target};

/// The longest single long poll; shorter when `--idle-exit` is nearer.
const LONG_POLL: Duration = Duration::from_secs(2);
/// Deliveries asked for per pull.
const PULL: u64 = 256;

/// `consume` flags.
#[derive(Debug, Args)]
pub(crate) struct ConsumeArgs {
    /// Topic to consume; it must exist.
    topic: String,
    /// Join this consumer group (clustering: the group's queues are shared with its other
    /// members while this runs). Deliveries are not acked unless --ack.
    #[arg(long, short, conflicts_with = "tail", required_unless_present = "tail")]
    group: Option<String>,
    /// Follow the topic in a private group of its own, seeing every new message without
    /// touching any other group; acks what it shows (only its own offsets move).
    #[arg(long)]
    tail: bool,
    /// With --tail: start at the oldest retained message instead of the newest.
    #[arg(long, requires = "tail")]
    from_beginning: bool,
    /// With --group: ack each delivery once it is printed, removing it from the group's
    /// backlog. Default off, so the service that owns the group still gets every message.
    #[arg(long, conflicts_with = "tail")]
    ack: bool,
    /// Only messages with this tag; repeatable.
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Exit after printing this many deliveries.
    #[arg(long, short = 'n')]
    max: Option<u64>,
    /// Exit after this many seconds without a delivery (default: run until Ctrl-C).
    #[arg(long, value_name = "SECONDS")]
    idle_exit: Option<u64>,
    /// One JSON object per delivery and line instead of the text form.
    #[arg(long)]
    json: bool,
}

/// Runs `consume` against the brokers at `addresses`.
pub(crate) async fn run(addresses: &str, args: ConsumeArgs) -> Result<()> {
    let admin = target::connect(addresses).await?;
    target::existing_topic(&admin, &args.topic, None).await?;
    let mut config = match &args.group {
        Some(group) => {
            let known = admin.groups().await.context("cannot list the groups")?;
            if !known.iter().any(|g| &g.name == group) {
                eprintln!(
                    "note: group {group} is new: it starts at the oldest retained message and \
                     stays on the broker after this command"
                );
            }
            ConsumerConfig::new(group.as_str(), args.topic.as_str())
        }
        None => {
            let mut config = ConsumerConfig::new(
                format!("broker-lite-tail-{}", Uuid::now_v7()),
                args.topic.as_str(),
            );
            config.model = ConsumeModel::Broadcasting;
            config
        }
    };
    config.tags = args.tags.clone();
    let consumer = Consumer::connect(addresses, config)
        .await
        .with_context(|| format!("cannot subscribe to topic {}", args.topic))?;
    let mut history = if args.tail && !args.from_beginning {
        History::now(&admin, &consumer).await?
    } else {
        History::default()
    };
    let group = consumer.config().group.clone();
    if args.tail {
        eprintln!(
            "tailing topic {} in private group {group} ({}); Ctrl-C to stop",
            args.topic,
            if args.from_beginning {
                "from the oldest retained message".to_owned()
            } else {
                format!("{} earlier messages skipped", history.left)
            }
        );
    } else {
        eprintln!(
            "consuming topic {} in group {group} as member {}, {}; Ctrl-C to stop",
            args.topic,
            consumer.config().consumer_id,
            if args.ack {
                "acking each delivery once printed"
            } else {
                "not acking: the deliveries go back to the group when this command exits (--ack \
                 to settle them)"
            }
        );
    }
    let mut shown = 0;
    let outcome = tokio::select! {
        result = receive(&consumer, &args, &mut history, &mut shown) => result,
        signal = crate::shutdown_signal() => signal,
    };
    let left = consumer.close().await.context(
        "cannot leave the group: its unacked deliveries go back after the broker's consume timeout",
    );
    let settled = if args.ack || args.tail {
        "acked"
    } else {
        "not acked, back with the group"
    };
    eprintln!("{shown} deliveries shown, {settled}");
    outcome.and(left)
}

async fn receive(
    consumer: &Consumer,
    args: &ConsumeArgs,
    history: &mut History,
    shown: &mut u64,
) -> Result<()> {
    let idle_limit = args.idle_exit.map(Duration::from_secs);
    let mut last_delivery = Instant::now();
    let mut out = std::io::stdout();
    loop {
        let wanted = match args.max {
            Some(max) if *shown >= max => return Ok(()),
            // While skipping history every pull may be old messages, so take full batches.
            Some(max) if history.left == 0 => (max - *shown).min(PULL),
            _ => PULL,
        };
        let mut poll = LONG_POLL;
        if let Some(limit) = idle_limit {
            let idle = last_delivery.elapsed();
            if idle >= limit {
                return Ok(());
            }
            poll = poll.min(limit - idle);
        }
        let deliveries = consumer
            .pull(u32::try_from(wanted).unwrap_or(u32::MAX), poll)
            .await
            .context("pull failed")?;
        if deliveries.is_empty() {
            continue;
        }
        last_delivery = Instant::now();
        let mut settle = Vec::new();
        for delivery in deliveries {
            if history.skips(&delivery) {
                settle.push(delivery);
                continue;
            }
            let shown_as = if args.json {
                show::json(&delivery) + "\n"
            } else {
                show::text(&delivery)
            };
            // Acked only once written: a closed pipe (`| head`) stops here, and what was not
            // printed stays with the group.
            out.write_all(shown_as.as_bytes())
                .and_then(|()| out.flush())
                .context("cannot write to stdout")?;
            *shown += 1;
            if args.ack || args.tail {
                settle.push(delivery);
            }
        }
        futures::future::try_join_all(settle.iter().map(|d| consumer.ack(d)))
            .await
            .context("ack failed; the deliveries will be redelivered")?;
    }
}

/// Where a tail starts: per queue, the offsets stored before it subscribed, which it acks
/// without showing. Messages stored between the subscription and the snapshot (milliseconds)
/// count as history.
#[derive(Debug, Default)]
struct History {
    /// Queue id to one past the newest offset at the start.
    ends: HashMap<u32, u64>,
    /// How many are still to be skipped.
    left: u64,
}

impl History {
    async fn now(admin: &Admin, consumer: &Consumer) -> Result<History> {
        let member = &consumer.config().consumer_id;
        let lags = admin
            .lag(&consumer.config().group)
            .await
            .context("cannot read where the topic ends")?;
        let mine: Vec<_> = lags
            .into_iter()
            .filter(|l| l.consumer_id.as_ref().is_none_or(|m| m == member))
            .collect();
        Ok(History {
            left: mine.iter().map(|l| l.lag).sum(),
            ends: mine.into_iter().map(|l| (l.queue_id, l.max)).collect(),
        })
    }

    fn skips(&mut self, delivery: &Delivery) -> bool {
        let m = &delivery.message;
        let old = self
            .ends
            .get(&m.queue_id)
            .is_some_and(|&end| m.queue_offset < end);
        if old {
            self.left = self.left.saturating_sub(1);
        }
        old
    }
}
