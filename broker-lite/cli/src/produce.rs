//! `broker-lite produce`: send messages from the command line, a file or stdin, the way
//! `nats pub` and `kafka-console-producer` are used to poke a broker in an incident.
//!
//! Every send waits for the broker's answer by default and prints it (`SEND_OK id=... queue=...
//! offset=...`), so the operator sees the id to trace and whether the message is durable. The
//! topic must exist (see [`crate::target`]); bodies larger than the broker's limit are refused
//! before anything is sent.

use std::collections::VecDeque;
use std::path::PathBuf;

use anyhow::{Context, Result};
use broker_lite_client::protocol::{ErrorCode, Message, SendResult, SendStatus};
use broker_lite_client::{ClientError, Producer, ProducerConfig, SendError, SendHandle};
use clap::Args;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use uuid::Uuid;

use crate::exit::Exit;
use crate::target;

/// How many `--async` sends may wait for their answers at once.
const IN_FLIGHT: usize = 256;

/// `produce` flags.
#[derive(Debug, Args)]
pub(crate) struct ProduceArgs {
    /// Topic to send to; it must exist (see --create-topic).
    topic: String,
    /// Message bodies, one message each. Without any (and without --file) stdin is read.
    #[arg(conflicts_with = "file")]
    messages: Vec<String>,
    /// Read the body from this file; `-` is stdin. The whole file is one message unless --lines.
    #[arg(long, short)]
    file: Option<PathBuf>,
    /// One message per line of the file or stdin (sent as each line arrives; empty lines are
    /// skipped) instead of one message for the whole input.
    #[arg(long)]
    lines: bool,
    /// Message key (ordering within a queue, lookup by key).
    #[arg(long, short)]
    key: Option<String>,
    /// Message tag (consumers can filter on it).
    #[arg(long, short)]
    tag: Option<String>,
    /// A header (message property) `name=value`; repeatable.
    #[arg(long = "header", short = 'H', value_name = "NAME=VALUE", value_parser = header)]
    headers: Vec<(String, String)>,
    /// The message id, for a single message: resending with the id of an earlier message lets
    /// idempotent consumers recognise the duplicate. Default: a fresh UUIDv7.
    #[arg(long)]
    id: Option<Uuid>,
    /// Do not wait for each answer before sending the next: up to 256 sends in flight. Every
    /// answer is still awaited and printed, in input order, but the broker may store them in
    /// another order, so it is refused with --key (whose point is the order).
    #[arg(long = "async", conflicts_with = "key")]
    pipelined: bool,
    /// Create the topic with this many queues when it does not exist (by default an unknown topic
    /// is refused, so that a typo does not create one).
    #[arg(long, value_name = "QUEUES", num_args = 0..=1, default_missing_value = "4")]
    create_topic: Option<u32>,
}

fn header(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!(
            "{text:?} is not NAME=VALUE (for example -H trace=abc)"
        )),
    }
}

/// Where the bodies come from.
enum Source {
    Arguments(Vec<String>),
    Whole(Box<dyn AsyncRead + Unpin + Send>),
    Lines(Box<dyn AsyncRead + Unpin + Send>),
}

/// Runs `produce` against the brokers at `addresses`.
pub(crate) async fn run(addresses: &str, args: ProduceArgs) -> Result<()> {
    if args.id.is_some() && (args.lines || args.messages.len() > 1) {
        return Err(Exit::input("--id names one message; give one body without --lines").into());
    }
    let source = source(&args).await?;
    let admin = target::connect(addresses).await?;
    target::existing_topic(&admin, &args.topic, args.create_topic).await?;
    let limit = admin
        .describe()
        .await
        .context("cannot read the broker's message size limit")?
        .max_message_size;
    let producer = Producer::connect(addresses, ProducerConfig::default())
        .await
        .with_context(|| format!("cannot reach a broker at {addresses}"))?;
    let mut sender = Sender {
        producer,
        args: &args,
        limit,
        pending: VecDeque::new(),
        tally: Tally::default(),
    };
    let outcome = feed(&mut sender, source).await;
    // Answers already on their way are awaited and printed even when the input failed, so
    // every message that left is accounted for.
    let drained = sender.drain().await;
    outcome.and(drained)?;
    sender.tally.finish()
}

async fn source(args: &ProduceArgs) -> Result<Source> {
    if !args.messages.is_empty() {
        return Ok(Source::Arguments(args.messages.clone()));
    }
    let input: Box<dyn AsyncRead + Unpin + Send> = match args.file.as_deref() {
        Some(path) if path.as_os_str() != "-" => Box::new(
            tokio::fs::File::open(path)
                .await
                .map_err(|e| Exit::input(format!("cannot read {}: {e}", path.display())))?,
        ),
        _ => {
            use std::io::IsTerminal;
            if std::io::stdin().is_terminal() {
                eprintln!(
                    "reading {} from stdin; end with Ctrl-D",
                    if args.lines {
                        "one message per line"
                    } else {
                        "the message"
                    }
                );
            }
            Box::new(tokio::io::stdin())
        }
    };
    Ok(if args.lines {
        Source::Lines(input)
    } else {
        Source::Whole(input)
    })
}

async fn feed(sender: &mut Sender<'_>, source: Source) -> Result<()> {
    match source {
        Source::Arguments(bodies) => {
            for body in bodies {
                sender.send(body.into_bytes()).await?;
            }
        }
        Source::Whole(mut input) => {
            let mut body = Vec::new();
            input
                .read_to_end(&mut body)
                .await
                .context("cannot read the input")?;
            sender.send(body).await?;
        }
        Source::Lines(input) => {
            let mut lines = BufReader::new(input).lines();
            while let Some(line) = lines.next_line().await.with_context(|| {
                format!("cannot read line {} of the input", sender.tally.sent + 1)
            })? {
                if !line.is_empty() {
                    sender.send(line.into_bytes()).await?;
                }
            }
        }
    }
    Ok(())
}

/// Sends one message at a time (or a window of them with `--async`) and prints each answer.
struct Sender<'a> {
    producer: Producer,
    args: &'a ProduceArgs,
    limit: u64,
    pending: VecDeque<SendHandle>,
    tally: Tally,
}

impl Sender<'_> {
    async fn send(&mut self, body: Vec<u8>) -> Result<()> {
        let number = self.tally.sent + self.pending.len() as u64 + 1;
        if body.len() as u64 > self.limit {
            return Err(Exit::input(format!(
                "message {number} is {} bytes; the broker accepts at most {} (its \
                 --max-message-bytes); nothing of it was sent{}",
                body.len(),
                self.limit,
                self.tally.sent_before(number)
            ))
            .into());
        }
        let message = self.message(body);
        if self.args.pipelined {
            if self.pending.len() >= IN_FLIGHT {
                self.settle_oldest().await?;
            }
            self.pending.push_back(self.producer.send_async(message));
            Ok(())
        } else {
            let answer = self.producer.send(message).await;
            self.print(answer)
        }
    }

    fn message(&self, body: Vec<u8>) -> Message {
        let mut message = Message::new(self.args.topic.as_str(), body);
        if let Some(key) = &self.args.key {
            message = message.with_key(key.as_str());
        }
        if let Some(tag) = &self.args.tag {
            message = message.with_tag(tag.as_str());
        }
        for (name, value) in &self.args.headers {
            message = message.with_property(name.as_str(), value.as_str());
        }
        if let Some(id) = self.args.id {
            message = message.with_message_id(id);
        }
        message
    }

    async fn settle_oldest(&mut self) -> Result<()> {
        match self.pending.pop_front() {
            Some(handle) => {
                let answer = handle.await;
                self.print(answer)
            }
            None => Ok(()),
        }
    }

    async fn drain(&mut self) -> Result<()> {
        let mut first_error = None;
        while !self.pending.is_empty() {
            if let Err(e) = self.settle_oldest().await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn print(&mut self, answer: Result<SendResult, SendError>) -> Result<()> {
        let number = self.tally.sent + self.tally.failed + 1;
        match answer {
            Ok(result) => {
                println!(
                    "{} id={} topic={} queue={} offset={}",
                    status_name(result.status),
                    result.message_id,
                    self.args.topic,
                    result.queue_id,
                    result.queue_offset
                );
                self.tally.sent += 1;
                if !result.is_ok() {
                    self.tally.not_durable += 1;
                }
                Ok(())
            }
            Err(SendError { message, error }) => {
                self.tally.failed += 1;
                let id = message
                    .message_id
                    .map_or_else(|| "-".to_owned(), |id| id.to_string());
                let text = format!(
                    "message {number} (id {id}) was not sent{}",
                    self.tally.sent_before(number)
                );
                Err(match refusal(&error) {
                    Some(reason) => Exit::input(format!("{text}: {reason}")).into(),
                    None => anyhow::Error::new(error).context(text),
                })
            }
        }
    }
}

/// The broker's refusal of the message itself, which sending again cannot fix.
fn refusal(error: &ClientError) -> Option<String> {
    match error {
        ClientError::Server(reply)
            if matches!(reply.code, ErrorCode::InvalidRequest | ErrorCode::NotFound) =>
        {
            Some(reply.message.clone())
        }
        _ => None,
    }
}

/// RocketMQ's names, which the broker's docs and logs use.
fn status_name(status: SendStatus) -> String {
    match status {
        SendStatus::SendOk => "SEND_OK".to_owned(),
        SendStatus::FlushDiskTimeout => "FLUSH_DISK_TIMEOUT".to_owned(),
        SendStatus::FlushSlaveTimeout => "FLUSH_SLAVE_TIMEOUT".to_owned(),
        SendStatus::SlaveNotAvailable => "SLAVE_NOT_AVAILABLE".to_owned(),
        other => format!("{other:?}"),
    }
}

#[derive(Debug, Default)]
struct Tally {
    sent: u64,
    failed: u64,
    not_durable: u64,
}

impl Tally {
    fn sent_before(&self, number: u64) -> String {
        match self.sent {
            0 if number == 1 => String::new(),
            sent => format!(" ({sent} sent before it, printed above)"),
        }
    }

    fn finish(&self) -> Result<()> {
        if self.not_durable > 0 {
            return Err(Exit::not_durable(format!(
                "{} of {} messages were stored but not as durably as the broker is configured \
                 (status other than SEND_OK): a broker crash may lose them; check the broker's \
                 disk, then resend them with --id to keep consumers idempotent",
                self.not_durable, self.sent
            ))
            .into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::header;

    #[test]
    fn headers_split_at_the_first_equals_sign() {
        assert_eq!(
            header("traceparent=00-ab=cd"),
            Ok(("traceparent".to_owned(), "00-ab=cd".to_owned()))
        );
        assert_eq!(header("empty="), Ok(("empty".to_owned(), String::new())));
        assert!(header("=value").unwrap_err().contains("NAME=VALUE"));
        assert!(header("novalue").is_err());
    }
}
