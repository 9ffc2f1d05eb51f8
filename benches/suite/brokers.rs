//! Scenario 4, publish throughput and acknowledgement latency: broker-lite (SYNC_FLUSH,
//! ASYNC_FLUSH) against NATS JetStream (file storage) and RabbitMQ (quorum queue, publisher
//! confirms), 1 KiB messages, 1, 16 and 64 producers each on its own connection with one message
//! in flight, in the same run.

use std::time::{Duration, Instant};

use anyhow::bail;
use broker_lite::storage::FlushMode;
use bytes::Bytes;
use courier::broker::protocol::{Message, SendStatus};
use courier::broker::{Producer, ProducerConfig};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ConnectionProperties};

use crate::nats::Nats;
use crate::relay::start_broker;
use crate::report::{Report, quantile};
use crate::{NATS_ADDR, Params, RABBIT_URL};

pub(crate) const SCENARIO: &str = "4. Publish throughput and ack latency (1 KiB, one in flight per producer, own connection each)";

/// The NATS stream, its subject and the RabbitMQ queue of this suite run: named after
/// `BENCH_DATABASE` (as the scratch database is), so that two suites running at once with
/// different databases do not delete or fill each other's stream and queue (a fixed name made
/// the second run's `STREAM.DELETE` remove the first run's stream in the middle of its
/// measurement, and two streams cannot share a subject).
struct Names {
    stream: String,
    subject: String,
    queue: String,
}

impl Names {
    fn of_this_run() -> Names {
        let database = std::env::var("BENCH_DATABASE").unwrap_or_else(|_| "courier_bench".into());
        // Stream names may not hold '.', '*', '>' or whitespace; subjects and queues take '_'.
        let tag: String = database
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        Names {
            stream: format!("COURIER_BENCH_{}", tag.to_ascii_uppercase()),
            subject: format!("courier.bench.{tag}"),
            queue: format!("courier.bench.{tag}"),
        }
    }
}

/// Which of the other brokers answered (broker-lite always runs, embedded).
pub(crate) struct Systems {
    pub(crate) nats: bool,
    pub(crate) rabbit: bool,
}

enum Client {
    BrokerLite(Producer),
    Nats(Box<Nats>),
    Rabbit(Box<(Channel, lapin::Connection)>),
}

impl Client {
    async fn publish(&mut self, payload: &Bytes, names: &Names) -> anyhow::Result<()> {
        match self {
            Client::BrokerLite(producer) => {
                let result = producer
                    .send(Message::new("publish", payload.clone()))
                    .await?;
                if result.status != SendStatus::SendOk {
                    bail!("broker-lite answered {:?}", result.status);
                }
            }
            Client::Nats(nats) => nats.publish(&names.subject, payload).await?,
            Client::Rabbit(rabbit) => {
                let channel = &rabbit.0;
                let confirm = channel
                    .basic_publish(
                        "",
                        &names.queue,
                        BasicPublishOptions::default(),
                        payload,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?
                    .await?;
                if !matches!(confirm, Confirmation::Ack(_)) {
                    bail!("rabbitmq did not confirm: {confirm:?}");
                }
            }
        }
        Ok(())
    }

    async fn close(self) {
        if let Client::Rabbit(rabbit) = self {
            let (_channel, connection) = *rabbit;
            let _ = connection.close(200, "bye").await;
        }
    }
}

pub(crate) async fn run(
    params: &Params,
    systems: &Systems,
    report: &mut Report,
) -> anyhow::Result<()> {
    for &producers in &[1usize, 16, 64] {
        let mut rates = Vec::new();
        for system in [
            "broker-lite SYNC_FLUSH",
            "broker-lite ASYNC_FLUSH",
            "NATS JetStream file, default sync",
            "RabbitMQ quorum queue, confirms",
        ] {
            if system.starts_with("NATS") && !systems.nats
                || system.starts_with("RabbitMQ") && !systems.rabbit
            {
                continue;
            }
            let (rate, mut latencies) = measure(system, producers, params.publish_duration).await?;
            latencies.sort_by(f64::total_cmp);
            let label = format!(
                "{system}, {producers} producer{}",
                if producers > 1 { "s" } else { "" }
            );
            report.add(SCENARIO, &format!("{label}: throughput"), "msg/s", rate);
            report.add(
                SCENARIO,
                &format!("{label}: ack p50"),
                "ms",
                quantile(&latencies, 0.5),
            );
            report.add(
                SCENARIO,
                &format!("{label}: ack p99"),
                "ms",
                quantile(&latencies, 0.99),
            );
            rates.push((system, rate));
        }
        let rate = |prefix: &str| {
            rates
                .iter()
                .find(|(s, _)| s.starts_with(prefix))
                .map(|r| r.1)
        };
        for (lite, lite_label) in [
            ("broker-lite SYNC", "SYNC_FLUSH"),
            ("broker-lite ASYNC", "ASYNC_FLUSH"),
        ] {
            for (other, other_label) in [
                ("RabbitMQ", "RabbitMQ quorum"),
                ("NATS", "NATS JetStream default"),
            ] {
                if let (Some(a), Some(b)) = (rate(lite), rate(other)) {
                    report.add(
                        SCENARIO,
                        &format!(
                            "ratio broker-lite {lite_label} / {other_label}, {producers} producers"
                        ),
                        "x",
                        a / b,
                    );
                }
            }
        }
    }
    Ok(())
}

/// Runs `producers` clients of `system` for `duration`; returns msg/s and every ack latency in ms.
async fn measure(
    system: &str,
    producers: usize,
    duration: Duration,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let names = std::sync::Arc::new(Names::of_this_run());
    let (stream, subject, queue) = (&names.stream, &names.subject, &names.queue);
    let mut broker = None;
    let mut clients = Vec::new();
    if system.starts_with("broker-lite") {
        let flush = if system.contains("ASYNC") {
            FlushMode::ASYNC_DEFAULT
        } else {
            FlushMode::Sync
        };
        let (b, dir) = start_broker(flush).await?;
        for _ in 0..producers {
            clients.push(Client::BrokerLite(
                Producer::connect(b.addr(), ProducerConfig::default()).await?,
            ));
        }
        broker = Some((b, dir));
    } else if system.starts_with("NATS") {
        let mut admin = Nats::connect(NATS_ADDR).await?;
        let _ = admin
            .api(&format!("$JS.API.STREAM.DELETE.{stream}"), "")
            .await;
        let config = serde_json::json!({
            "name": stream, "subjects": [subject], "storage": "file", "retention": "limits",
            "num_replicas": 1, "max_bytes": 2_000_000_000i64, "discard": "old"
        });
        admin
            .api(
                &format!("$JS.API.STREAM.CREATE.{stream}"),
                &config.to_string(),
            )
            .await?;
        for _ in 0..producers {
            clients.push(Client::Nats(Box::new(Nats::connect(NATS_ADDR).await?)));
        }
    } else {
        let connection =
            lapin::Connection::connect(RABBIT_URL, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        let _ = channel
            .queue_delete(queue, QueueDeleteOptions::default())
            .await;
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        channel
            .queue_declare(
                queue,
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                arguments,
            )
            .await?;
        let _ = connection.close(200, "bye").await;
        for _ in 0..producers {
            let connection =
                lapin::Connection::connect(RABBIT_URL, ConnectionProperties::default()).await?;
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            clients.push(Client::Rabbit(Box::new((channel, connection))));
        }
    }
    let payload = Bytes::from(vec![b'x'; 1024]);
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let payload = payload.clone();
            let names = names.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    client.publish(&payload, &names).await?;
                    latencies.push(sent.elapsed().as_secs_f64() * 1e3);
                }
                client.close().await;
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let took = started.elapsed().as_secs_f64();
    if let Some((broker, _dir)) = broker {
        broker.shutdown().await?;
    } else if system.starts_with("NATS") {
        let mut admin = Nats::connect(NATS_ADDR).await?;
        let _ = admin
            .api(&format!("$JS.API.STREAM.DELETE.{stream}"), "")
            .await;
    } else {
        let connection =
            lapin::Connection::connect(RABBIT_URL, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        let _ = channel
            .queue_delete(queue, QueueDeleteOptions::default())
            .await;
        let _ = connection.close(200, "bye").await;
    }
    Ok((all.len() as f64 / took, all))
}
