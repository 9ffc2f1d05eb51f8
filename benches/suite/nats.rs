//! A minimal NATS client: enough protocol for JetStream publishing with acknowledgements and for
//! the stream API (request/reply), one request in flight per connection. Written here rather than
//! pulling in a full client (and its TLS stack) for one benchmark.

use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

pub(crate) struct Nats {
    reader: BufReader<OwnedReadHalf>,
    writer: BufWriter<OwnedWriteHalf>,
    inbox: String,
    pub(crate) info: serde_json::Value,
    line: String,
}

const TIMEOUT: Duration = Duration::from_secs(5);

impl Nats {
    pub(crate) async fn connect(addr: &str) -> anyhow::Result<Nats> {
        let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
            .await
            .context("connect timed out")??;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        let mut nats = Nats {
            reader: BufReader::new(read),
            writer: BufWriter::new(write),
            inbox: format!("_INBOX.{}", uuid::Uuid::now_v7().simple()),
            info: serde_json::Value::Null,
            line: String::new(),
        };
        nats.read_line().await?;
        let info = nats
            .line
            .strip_prefix("INFO ")
            .context("nats server did not start with INFO")?;
        nats.info = serde_json::from_str(info.trim())?;
        let hello = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":false,\"protocol\":1,\"name\":\"courier-bench\"}}\r\nSUB {}.* 1\r\nPING\r\n",
            nats.inbox
        );
        nats.writer.write_all(hello.as_bytes()).await?;
        nats.writer.flush().await?;
        loop {
            nats.read_line().await?;
            match nats.line.trim_end() {
                "PONG" => return Ok(nats),
                "+OK" => {}
                other if other.starts_with("-ERR") => bail!("nats refused the connection: {other}"),
                _ => {}
            }
        }
    }

    async fn read_line(&mut self) -> anyhow::Result<()> {
        self.line.clear();
        let n = tokio::time::timeout(TIMEOUT, self.reader.read_line(&mut self.line))
            .await
            .context("nats server did not answer within 5 s")??;
        anyhow::ensure!(n > 0, "nats server closed the connection");
        Ok(())
    }

    /// Publishes `payload` on `subject` with a reply subject and returns the reply's payload.
    pub(crate) async fn request(
        &mut self,
        subject: &str,
        payload: &[u8],
    ) -> anyhow::Result<Vec<u8>> {
        let head = format!("PUB {subject} {}.r {}\r\n", self.inbox, payload.len());
        self.writer.write_all(head.as_bytes()).await?;
        self.writer.write_all(payload).await?;
        self.writer.write_all(b"\r\n").await?;
        self.writer.flush().await?;
        loop {
            self.read_line().await?;
            let line = self.line.trim_end().to_owned();
            if line == "PING" {
                self.writer.write_all(b"PONG\r\n").await?;
                self.writer.flush().await?;
            } else if line.starts_with("-ERR") {
                bail!("nats error: {line}");
            } else if let Some(rest) = line.strip_prefix("MSG ") {
                let len: usize = rest
                    .rsplit(' ')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .context("malformed MSG line")?;
                let mut body = vec![0; len + 2];
                self.reader.read_exact(&mut body).await?;
                body.truncate(len);
                return Ok(body);
            }
        }
    }

    /// A JetStream API call; fails on an `error` in the answer.
    pub(crate) async fn api(
        &mut self,
        subject: &str,
        body: &str,
    ) -> anyhow::Result<serde_json::Value> {
        let reply = self.request(subject, body.as_bytes()).await?;
        let value: serde_json::Value = serde_json::from_slice(&reply)?;
        if let Some(error) = value.get("error") {
            bail!("{subject}: {error}");
        }
        Ok(value)
    }

    /// Publishes to a stream's subject and waits for JetStream's acknowledgement.
    pub(crate) async fn publish(&mut self, subject: &str, payload: &[u8]) -> anyhow::Result<()> {
        let reply = self.request(subject, payload).await?;
        if reply.windows(7).any(|w| w == b"\"error\"") {
            bail!("jetstream refused: {}", String::from_utf8_lossy(&reply));
        }
        Ok(())
    }
}
