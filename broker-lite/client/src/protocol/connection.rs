//! Framing over a byte stream: a buffered reader and a buffered writer of [`Frame`]s.
//!
//! Modelled on mini-redis' `connection.rs`, split in two halves so that one task can read while
//! another writes (the server and the clients both answer out of order).

use std::io;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};

use super::error::DecodeError;
use super::frame::Frame;

/// Reading a frame failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The socket failed.
    #[error("connection i/o failed: {0}")]
    Io(#[from] io::Error),
    /// The peer sent bytes that are not a valid frame.
    #[error("malformed frame: {0}")]
    Decode(#[from] DecodeError),
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed by peer in the middle of a frame")]
    Truncated,
}

/// Reads frames from a byte stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    reader: R,
    buffer: BytesMut,
    max_frame_size: u32,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads from `reader`, refusing frames larger than `max_frame_size`.
    pub fn new(reader: R, max_frame_size: u32) -> Self {
        FrameReader {
            reader,
            buffer: BytesMut::with_capacity(8 * 1024),
            max_frame_size,
        }
    }

    /// Reads the next frame; `Ok(None)` when the peer closed the connection between frames.
    ///
    /// # Errors
    ///
    /// [`ReadError`] on I/O failure, a malformed or oversized frame, or a close mid-frame.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: bytes read so far stay in the internal buffer.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Some(frame) = Frame::parse(&mut self.buffer, self.max_frame_size)? {
                return Ok(Some(frame));
            }
            if self.reader.read_buf(&mut self.buffer).await? == 0 {
                return if self.buffer.has_remaining() {
                    Err(ReadError::Truncated)
                } else {
                    Ok(None)
                };
            }
        }
    }
}

/// Writes frames to a byte stream through a buffer.
#[derive(Debug)]
pub struct FrameWriter<W: AsyncWrite> {
    writer: BufWriter<W>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Writes to `writer`.
    pub fn new(writer: W) -> Self {
        FrameWriter {
            writer: BufWriter::new(writer),
        }
    }

    /// Buffers one frame; call [`FrameWriter::flush`] to send it.
    ///
    /// # Errors
    ///
    /// The I/O error of the underlying stream.
    pub async fn write_frame(&mut self, frame: &Frame) -> io::Result<()> {
        self.writer.write_all(&frame.header()).await?;
        self.writer.write_all(&frame.body).await
    }

    /// Sends every buffered frame.
    ///
    /// # Errors
    ///
    /// The I/O error of the underlying stream.
    pub async fn flush(&mut self) -> io::Result<()> {
        self.writer.flush().await
    }

    /// Flushes and shuts down the write half.
    ///
    /// # Errors
    ///
    /// The I/O error of the underlying stream.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.writer.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{DEFAULT_MAX_FRAME_SIZE, FrameKind};
    use bytes::Bytes;

    #[tokio::test]
    async fn frames_cross_a_duplex_stream() {
        let (a, b) = tokio::io::duplex(64);
        let mut writer = FrameWriter::new(a);
        let mut reader = FrameReader::new(b, DEFAULT_MAX_FRAME_SIZE);
        let frames: Vec<Frame> = (0..10u64)
            .map(|i| Frame {
                kind: FrameKind::Request,
                request_id: i,
                code: 1,
                body: Bytes::from(vec![i as u8; 100]),
            })
            .collect();
        let sent = frames.clone();
        let write = tokio::spawn(async move {
            for f in &sent {
                writer.write_frame(f).await.unwrap();
            }
            writer.shutdown().await.unwrap();
        });
        for f in &frames {
            assert_eq!(reader.read_frame().await.unwrap().as_ref(), Some(f));
        }
        assert!(reader.read_frame().await.unwrap().is_none());
        write.await.unwrap();
    }

    #[tokio::test]
    async fn close_mid_frame_is_an_error() {
        let (mut a, b) = tokio::io::duplex(64);
        let mut reader = FrameReader::new(b, DEFAULT_MAX_FRAME_SIZE);
        a.write_all(&[0, 0, 0, 20, 1, 0]).await.unwrap();
        drop(a);
        assert!(matches!(
            reader.read_frame().await,
            Err(ReadError::Truncated)
        ));
    }
}
