//! Frames: the unit sent over a connection.
//!
//! ```text
//! +-----------+---------+------+------------+--------------+------------------+
//! | length u32| version | kind | request id | command code | body ...         |
//! |           |   u8    |  u8  |    u64     |     u16      | (length - 12)    |
//! +-----------+---------+------+------------+--------------+------------------+
//! ```
//!
//! All integers are big-endian. `length` counts the bytes that follow it (header and body).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::error::DecodeError;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u8 = 1;

/// Bytes after the length prefix that every frame has: version, kind, request id, command code.
pub const HEADER_LEN: usize = 1 + 1 + 8 + 2;

/// Default maximum frame size (after the length prefix): 8 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 8 * 1024 * 1024;

/// The request id used by error frames that concern the whole connection
/// (malformed or oversized frame, connection limit).
pub const CONNECTION_REQUEST_ID: u64 = 0;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// A request that expects a response or an error with the same request id.
    Request,
    /// A successful response.
    Response,
    /// An error reply; the body is an [`ErrorReply`](super::ErrorReply).
    Error,
    /// A request that expects no answer (one-way send).
    Oneway,
}

impl FrameKind {
    fn as_u8(self) -> u8 {
        match self {
            FrameKind::Request => 0,
            FrameKind::Response => 1,
            FrameKind::Error => 2,
            FrameKind::Oneway => 3,
        }
    }

    fn from_u8(b: u8) -> Result<Self, DecodeError> {
        Ok(match b {
            0 => FrameKind::Request,
            1 => FrameKind::Response,
            2 => FrameKind::Error,
            3 => FrameKind::Oneway,
            other => return Err(DecodeError::UnknownKind(other)),
        })
    }
}

/// One frame: header fields and an undecoded body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Request, response, error or one-way.
    pub kind: FrameKind,
    /// Chosen by the client, echoed by the server; lets requests be pipelined.
    pub request_id: u64,
    /// The command (see [`CommandCode`](super::CommandCode)); 0 on connection-level errors.
    pub code: u16,
    /// The encoded command body.
    pub body: Bytes,
}

impl Frame {
    /// Total encoded size including the length prefix.
    pub fn encoded_len(&self) -> usize {
        4 + HEADER_LEN + self.body.len()
    }

    /// Appends the encoded frame to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.reserve(self.encoded_len());
        buf.put_u32((HEADER_LEN + self.body.len()) as u32);
        buf.put_u8(PROTOCOL_VERSION);
        buf.put_u8(self.kind.as_u8());
        buf.put_u64(self.request_id);
        buf.put_u16(self.code);
        buf.put_slice(&self.body);
    }

    /// The encoded header (length prefix included) without the body, for vectored writes.
    pub fn header(&self) -> [u8; 4 + HEADER_LEN] {
        let mut h = [0u8; 4 + HEADER_LEN];
        let mut w = &mut h[..];
        w.put_u32((HEADER_LEN + self.body.len()) as u32);
        w.put_u8(PROTOCOL_VERSION);
        w.put_u8(self.kind.as_u8());
        w.put_u64(self.request_id);
        w.put_u16(self.code);
        h
    }

    /// Parses one frame from the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` does not yet hold a whole frame (read more and call again);
    /// on success the frame's bytes are removed from `buf`. A length above `max_frame_size` is
    /// refused as soon as the length prefix is read, before the body is buffered.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] for an oversized or undersized length, an unknown version or kind. The
    /// stream cannot be resynchronised after an error: close the connection.
    pub fn parse(buf: &mut BytesMut, max_frame_size: u32) -> Result<Option<Frame>, DecodeError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if len > max_frame_size {
            return Err(DecodeError::FrameTooLarge {
                size: u64::from(len),
                limit: u64::from(max_frame_size),
            });
        }
        if (len as usize) < HEADER_LEN {
            return Err(DecodeError::FrameTooShort(len));
        }
        // Check the version and kind early, so garbage is refused without waiting for a body.
        if buf.len() >= 6 {
            if buf[4] != PROTOCOL_VERSION {
                return Err(DecodeError::UnsupportedVersion(buf[4]));
            }
            FrameKind::from_u8(buf[5])?;
        }
        if buf.len() < 4 + len as usize {
            buf.reserve(4 + len as usize - buf.len());
            return Ok(None);
        }
        buf.advance(4);
        let mut frame = buf.split_to(len as usize).freeze();
        let _version = frame.get_u8();
        let kind = FrameKind::from_u8(frame.get_u8())?;
        let request_id = frame.get_u64();
        let code = frame.get_u16();
        Ok(Some(Frame {
            kind,
            request_id,
            code,
            body: frame,
        }))
    }
}

/// Fails with [`DecodeError::TrailingBytes`] unless `body` is fully consumed.
pub(crate) fn ensure_empty(body: &Bytes) -> Result<(), DecodeError> {
    if body.has_remaining() {
        Err(DecodeError::TrailingBytes(body.remaining()))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Frame {
        Frame {
            kind: FrameKind::Request,
            request_id: 42,
            code: 7,
            body: Bytes::from_static(b"hello"),
        }
    }

    #[test]
    fn round_trip() {
        let mut buf = BytesMut::new();
        sample().encode(&mut buf);
        assert_eq!(buf.len(), sample().encoded_len());
        assert_eq!(&buf[..16], &sample().header()[..]);
        let frame = Frame::parse(&mut buf, DEFAULT_MAX_FRAME_SIZE)
            .unwrap()
            .unwrap();
        assert_eq!(frame, sample());
        assert!(buf.is_empty());
    }

    #[test]
    fn incomplete_frames_wait_for_more() {
        let mut full = BytesMut::new();
        sample().encode(&mut full);
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            assert_eq!(
                Frame::parse(&mut part, DEFAULT_MAX_FRAME_SIZE).unwrap(),
                None
            );
        }
    }

    #[test]
    fn oversized_length_is_refused_before_the_body_arrives() {
        let mut buf = BytesMut::new();
        buf.put_u32(1_000_000);
        let err = Frame::parse(&mut buf, 1024).unwrap_err();
        assert_eq!(
            err,
            DecodeError::FrameTooLarge {
                size: 1_000_000,
                limit: 1024
            }
        );
    }

    #[test]
    fn bad_version_kind_and_short_length_are_refused() {
        let mut buf = BytesMut::from(&[0, 0, 0, 12, 9, 0][..]);
        assert_eq!(
            Frame::parse(&mut buf, 1024).unwrap_err(),
            DecodeError::UnsupportedVersion(9)
        );
        let mut buf = BytesMut::from(&[0, 0, 0, 12, PROTOCOL_VERSION, 77][..]);
        assert_eq!(
            Frame::parse(&mut buf, 1024).unwrap_err(),
            DecodeError::UnknownKind(77)
        );
        let mut buf = BytesMut::from(&[0, 0, 0, 3][..]);
        assert_eq!(
            Frame::parse(&mut buf, 1024).unwrap_err(),
            DecodeError::FrameTooShort(3)
        );
    }

    proptest! {
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = BytesMut::from(&data[..]);
            let _ = Frame::parse(&mut buf, 1024);
        }

        #[test]
        fn any_frame_round_trips(id in any::<u64>(), code in any::<u16>(), kind in 0u8..4,
                                 body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let frame = Frame { kind: FrameKind::from_u8(kind).unwrap(), request_id: id, code, body: body.into() };
            let mut buf = BytesMut::new();
            frame.encode(&mut buf);
            buf.put_slice(b"next");
            let parsed = Frame::parse(&mut buf, DEFAULT_MAX_FRAME_SIZE).unwrap().unwrap();
            prop_assert_eq!(parsed, frame);
            prop_assert_eq!(&buf[..], b"next");
        }
    }
}
