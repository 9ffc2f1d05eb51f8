//! The write half of one connection, shared by the tasks that answer its requests.
//!
//! Each request task writes its own answer instead of handing it to a writer task: that spares
//! a task wake-up and a channel per answer (issue 15: with one send in flight per producer, the
//! hops of a request are its latency). Answers that finish together still leave in one socket
//! write: only the last of the tasks writing at once flushes.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::io::AsyncWrite;
use tokio::sync::Mutex;

use crate::protocol::{Frame, FrameWriter};

/// A connection's [`FrameWriter`], shared; see the module documentation.
pub(super) struct Answers<W: AsyncWrite> {
    writer: Mutex<FrameWriter<W>>,
    /// Answers being written or waiting for the writer; the one that brings it back to zero
    /// flushes, so that no answer stays in the buffer while nobody is left to flush it.
    writing: AtomicUsize,
    /// Set once a write failed: the peer is gone, later answers are dropped.
    failed: AtomicBool,
}

/// Counts an answer in [`Answers::writing`] until it is written or abandoned (a request task
/// aborted at the hard stop while it waited for the writer).
struct Writing<'a>(&'a AtomicUsize);

impl Writing<'_> {
    /// Ends the count; whether this was the last answer being written.
    fn finish(self) -> bool {
        let last = self.0.fetch_sub(1, Ordering::AcqRel) == 1;
        std::mem::forget(self);
        last
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<W: AsyncWrite + Unpin> Answers<W> {
    pub(super) fn new(writer: FrameWriter<W>) -> Self {
        Answers {
            writer: Mutex::new(writer),
            writing: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
        }
    }

    /// Writes `frame`, and sends it unless another answer is being written right after it (that
    /// one sends both). Waits while the peer does not read: back pressure on this connection.
    pub(super) async fn send(&self, frame: &Frame) {
        // Counted before waiting for the lock: the holder then sees that someone follows.
        self.writing.fetch_add(1, Ordering::AcqRel);
        let writing = Writing(&self.writing);
        let mut writer = self.writer.lock().await;
        if self.failed.load(Ordering::Acquire) {
            return;
        }
        let mut written = writer.write_frame(frame).await.is_ok();
        if writing.finish() && written {
            written = writer.flush().await.is_ok();
        }
        if !written {
            self.failed.store(true, Ordering::Release);
        }
    }

    /// Sends what is buffered and shuts the write half down, once every answer is written.
    pub(super) async fn close(&self) {
        let mut writer = self.writer.lock().await;
        if !self.failed.load(Ordering::Acquire) {
            let _ = writer.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{DEFAULT_MAX_FRAME_SIZE, FrameKind, FrameReader};
    use bytes::Bytes;
    use std::sync::Arc;

    fn frame(id: u64) -> Frame {
        Frame {
            kind: FrameKind::Response,
            request_id: id,
            code: 1,
            body: Bytes::from(vec![id as u8; 300]),
        }
    }

    /// Answers written concurrently all reach the peer whole (none is left in the buffer
    /// unflushed, none is torn by another), without the connection closing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_answers_all_arrive_whole() {
        let (a, b) = tokio::io::duplex(1024);
        let answers = Arc::new(Answers::new(FrameWriter::new(a)));
        let tasks: Vec<_> = (0..200u64)
            .map(|id| {
                let answers = answers.clone();
                tokio::spawn(async move { answers.send(&frame(id)).await })
            })
            .collect();
        let mut reader = FrameReader::new(b, DEFAULT_MAX_FRAME_SIZE);
        let mut seen = Vec::new();
        for _ in 0..200 {
            let got = reader.read_frame().await.unwrap().unwrap();
            assert_eq!(got, frame(got.request_id));
            seen.push(got.request_id);
        }
        for task in tasks {
            task.await.unwrap();
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..200).collect::<Vec<_>>());
    }
}
