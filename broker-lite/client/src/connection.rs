//! One multiplexed connection shared by the producer, consumer and admin clients.
//!
//! Requests get increasing ids and are written by a writer task; a reader task matches answers
//! to the waiting callers through a map of pending ids to oneshot senders. Answers may come in
//! any order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use tokio::io::{AsyncRead, AsyncWrite};

use super::error::{ClientError, Result};
use super::security::Security;
use crate::protocol::{
    CONNECTION_REQUEST_ID, DecodeError, ErrorCode, ErrorReply, Frame, FrameKind, FrameReader,
    FrameWriter, ReadError, Request, Response,
};

type Answer = std::result::Result<Frame, ClientError>;

/// A connection to one broker, cheap to clone; requests on it may run concurrently.
#[derive(Debug, Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    addr: String,
    tx: mpsc::Sender<Frame>,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU64,
    tasks: [JoinHandle<()>; 2],
}

#[derive(Debug, Default)]
struct Pending {
    waiting: HashMap<u64, oneshot::Sender<Answer>>,
    /// Set once the connection is unusable; new requests fail with it.
    closed: Option<String>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Removes a pending entry when the caller stops waiting (timeout, cancellation).
struct PendingGuard<'a> {
    pending: &'a Mutex<Pending>,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.pending.lock().unwrap().waiting.remove(&self.id);
    }
}

impl Connection {
    /// Connects to `addr` (`host:port`) within `timeout`, in plain text and without
    /// credentials.
    ///
    /// # Errors
    ///
    /// [`ClientError::Connect`] when the address cannot be reached in time.
    pub async fn connect(addr: &str, timeout: Duration, max_frame_size: u32) -> Result<Connection> {
        Connection::connect_with(addr, timeout, max_frame_size, &Security::default()).await
    }

    /// Connects to `addr` within `timeout` with `security`: TLS first when set, then
    /// authentication when credentials are set, else a ping that completes an open broker's
    /// handshake, all within `timeout`. A broker that wants TLS or credentials the client does
    /// not offer refuses here, not at the first request.
    ///
    /// # Errors
    ///
    /// [`ClientError::Connect`] when the address cannot be reached in time,
    /// [`ClientError::Security`] when TLS fails or the broker cannot prove it holds the user's
    /// keys, [`ClientError::Server`] with
    /// [`ErrorCode::Unauthenticated`](crate::protocol::ErrorCode::Unauthenticated) for wrong
    /// credentials or a broker that wants some.
    pub async fn connect_with(
        addr: &str,
        timeout: Duration,
        max_frame_size: u32,
        security: &Security,
    ) -> Result<Connection> {
        let connect_error = |source| ClientError::Connect {
            addr: addr.to_string(),
            source,
        };
        let setup = async {
            let stream = TcpStream::connect(addr).await.map_err(connect_error)?;
            let _ = stream.set_nodelay(true);
            match &security.tls {
                None => {
                    let (rd, wr) = stream.into_split();
                    start(addr, rd, wr, max_frame_size, security).await
                }
                Some(tls) => {
                    let name = tls.name_for(addr)?;
                    let stream = tls.connector().connect(name, stream).await.map_err(|e| {
                        ClientError::Security {
                            addr: addr.to_string(),
                            reason: format!(
                                "TLS handshake failed: {e} (does the broker listen with TLS, and \
                                 is its certificate signed by the CA given and valid for the \
                                 name connected to?)"
                            ),
                        }
                    })?;
                    let (rd, wr) = tokio::io::split(stream);
                    start(addr, rd, wr, max_frame_size, security).await
                }
            }
        };
        match tokio::time::timeout(timeout, setup).await {
            Ok(result) => result,
            Err(_) => Err(connect_error(std::io::ErrorKind::TimedOut.into())),
        }
    }

    /// The address this connection goes to.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// Whether `self` and `other` are the same connection.
    pub fn same(&self, other: &Connection) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Whether the connection has failed or been closed by the broker.
    pub fn is_closed(&self) -> bool {
        self.inner.pending.lock().unwrap().closed.is_some()
    }

    /// Sends `request` and waits up to `timeout` for its answer.
    ///
    /// # Errors
    ///
    /// [`ClientError::Elapsed`] on timeout, [`ClientError::ConnectionLost`] when the connection
    /// fails, [`ClientError::Server`] when the broker answers with an error.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future forgets the request; the broker may still carry it out.
    pub async fn request(&self, request: &Request, timeout: Duration) -> Result<Response> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer_tx, answer_rx) = oneshot::channel();
        {
            let mut pending = self.inner.pending.lock().unwrap();
            if let Some(reason) = &pending.closed {
                return Err(self.lost(reason.clone()));
            }
            pending.waiting.insert(id, answer_tx);
        }
        let _guard = PendingGuard {
            pending: &self.inner.pending,
            id,
        };
        let code = request.code();
        let frame = Frame {
            kind: FrameKind::Request,
            request_id: id,
            code: code as u16,
            body: request.encode_body(),
        };
        let exchange = async {
            self.inner
                .tx
                .send(frame)
                .await
                .map_err(|_| self.lost("the connection is closed".into()))?;
            answer_rx
                .await
                .map_err(|_| self.lost("the connection is closed".into()))?
        };
        let frame = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Elapsed(timeout))??;
        match frame.kind {
            FrameKind::Response => Ok(Response::decode(code as u16, frame.body)?),
            FrameKind::Error => Err(ClientError::Server(ErrorReply::decode(frame.body)?)),
            _ => Err(ClientError::UnexpectedResponse(code.name())),
        }
    }

    /// Sends `request` as a one-way frame: no answer, no confirmation that it arrived.
    ///
    /// # Errors
    ///
    /// [`ClientError::ConnectionLost`] when the connection is known to be closed.
    pub async fn send_oneway(&self, request: &Request) -> Result<()> {
        if let Some(reason) = &self.inner.pending.lock().unwrap().closed {
            return Err(self.lost(reason.clone()));
        }
        let frame = Frame {
            kind: FrameKind::Oneway,
            request_id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            code: request.code() as u16,
            body: request.encode_body(),
        };
        self.inner
            .tx
            .send(frame)
            .await
            .map_err(|_| self.lost("the connection is closed".into()))
    }

    fn lost(&self, reason: String) -> ClientError {
        ClientError::ConnectionLost {
            addr: self.inner.addr.clone(),
            reason,
        }
    }
}

fn fail_all(pending: &Mutex<Pending>, addr: &str, reason: String) {
    let mut pending = pending.lock().unwrap();
    for (_, tx) in pending.waiting.drain() {
        let _ = tx.send(Err(ClientError::ConnectionLost {
            addr: addr.to_string(),
            reason: reason.clone(),
        }));
    }
    pending.closed.get_or_insert(reason);
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut reader: FrameReader<R>,
    pending: Arc<Mutex<Pending>>,
    addr: String,
) {
    // Whether the peer has sent one valid frame: until then, bytes that are no frame at all mean
    // the address is some other server's (Postgres answers a broker-lite request with an error
    // message whose first bytes read as a frame of about 1 GiB).
    let mut framed = false;
    let reason = loop {
        let read = reader.read_frame().await;
        framed |= matches!(read, Ok(Some(_)));
        match read {
            Ok(Some(frame))
                if frame.request_id == CONNECTION_REQUEST_ID && frame.kind == FrameKind::Error =>
            {
                // An error about the whole connection: every waiting request gets it.
                let reply = match ErrorReply::decode(frame.body) {
                    Ok(reply) => reply,
                    Err(e) => break format!("undecodable error frame: {e}"),
                };
                let mut p = pending.lock().unwrap();
                // An idle connection closed by the broker's idle timeout costs nothing: the
                // clients reconnect on their next request. Anything else is worth a warning.
                if p.waiting.is_empty() && reply.code == ErrorCode::Timeout {
                    tracing::debug!(error = %reply, "the broker closed an idle connection");
                } else {
                    tracing::warn!(error = %reply, "the broker closed the connection");
                }
                p.closed.get_or_insert(reply.to_string());
                for (_, tx) in p.waiting.drain() {
                    let _ = tx.send(Err(ClientError::Server(reply.clone())));
                }
                continue;
            }
            Ok(Some(frame)) => {
                let tx = pending.lock().unwrap().waiting.remove(&frame.request_id);
                if let Some(tx) = tx {
                    let _ = tx.send(Ok(frame));
                }
            }
            Ok(None) => break "closed by the broker".to_string(),
            Err(ReadError::Decode(e)) if !framed => break not_a_broker(&e),
            Err(e) => break e.to_string(),
        }
    };
    fail_all(&pending, &addr, reason);
}

/// Why a connection whose first answer is not a frame failed: the address is not broker-lite's.
pub(crate) fn not_a_broker(error: &DecodeError) -> String {
    format!(
        "this is not a broker-lite server (did you give the database port?): its answer is not \
         a broker-lite frame ({error})"
    )
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: FrameWriter<W>,
    mut rx: mpsc::Receiver<Frame>,
    pending: Arc<Mutex<Pending>>,
    addr: String,
) {
    while let Some(frame) = rx.recv().await {
        let written = async {
            writer.write_frame(&frame).await?;
            if rx.is_empty() {
                writer.flush().await?;
            }
            std::io::Result::Ok(())
        };
        if let Err(e) = written.await {
            let reason = format!("write failed: {e}");
            fail_all(&pending, &addr, reason);
            return;
        }
    }
}

/// Authenticates when `security` has credentials, then starts the reader and writer tasks.
async fn start<R, W>(
    addr: &str,
    rd: R,
    wr: W,
    max_frame_size: u32,
    security: &Security,
) -> Result<Connection>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut reader = FrameReader::new(rd, max_frame_size);
    let mut writer = FrameWriter::new(wr);
    let next_id = match &security.credentials {
        Some(credentials) => {
            super::login::login(addr, &mut reader, &mut writer, credentials).await?;
            3
        }
        None => {
            super::handshake::hello(addr, &mut reader, &mut writer).await?;
            super::handshake::HELLO_REQUEST_ID + 1
        }
    };
    let (tx, rx) = mpsc::channel::<Frame>(1024);
    let pending = Arc::new(Mutex::new(Pending::default()));
    let writer = tokio::spawn(write_loop(writer, rx, pending.clone(), addr.to_string()));
    let reader = tokio::spawn(read_loop(reader, pending.clone(), addr.to_string()));
    Ok(Connection {
        inner: Arc::new(Inner {
            addr: addr.to_string(),
            tx,
            pending,
            next_id: AtomicU64::new(next_id),
            tasks: [writer, reader],
        }),
    })
}
