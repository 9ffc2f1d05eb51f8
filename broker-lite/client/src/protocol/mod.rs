//! The wire protocol: length-prefixed binary frames and the commands they carry.
//!
//! # Frames
//!
//! ```text
//! u32 length | u8 version | u8 kind | u64 request id | u16 command code | body
//! ```
//!
//! `length` counts everything after itself. `kind` is request (0), response (1), error (2) or
//! one-way (3). The client picks request ids; the server echoes them, so a client may pipeline
//! requests on one connection and receive the answers in any order. Error frames carry an
//! [`ErrorReply`] (u16 code, message); request id [`CONNECTION_REQUEST_ID`] (0) marks an error
//! about the whole connection, after which the server closes it.
//!
//! # Bodies
//!
//! Hand-written, big-endian: strings and byte strings are u32-length-prefixed, optional fields
//! have a presence byte (0 or 1), maps and lists are a u32 count followed by the items, UUIDs are
//! 16 raw bytes. Decoding checks every length against the bytes left, so truncated or garbage
//! input is a [`DecodeError`], never a panic, and a huge count cannot make the decoder allocate.
//!
//! # Limits
//!
//! [`Limits`]: frame size (default 8 MiB, refused as soon as the length prefix is read), message
//! body size (default 4 MiB) and batch size (default 1024 messages).
//!
//! # Example
//!
//! ```
//! use broker_lite_client::protocol::{Frame, FrameKind, Message, Request};
//! use bytes::BytesMut;
//!
//! let request = Request::Send(Message::new("orders", "hello").with_key("order-42"));
//! let frame = Frame { kind: FrameKind::Request, request_id: 1, code: request.code() as u16, body: request.encode_body() };
//! let mut buf = BytesMut::new();
//! frame.encode(&mut buf);
//!
//! let parsed = Frame::parse(&mut buf, 8 << 20).unwrap().unwrap();
//! assert_eq!(Request::decode(parsed.code, parsed.body).unwrap(), request);
//! ```

mod command;
mod connection;
mod error;
mod frame;
pub mod scram;
mod types;
mod wire;

pub use command::{CommandCode, Limits, Request, Response};
pub use connection::{FrameReader, FrameWriter, ReadError};
pub use error::{DecodeError, ErrorCode, ErrorReply};
pub use frame::{
    CONNECTION_REQUEST_ID, DEFAULT_MAX_FRAME_SIZE, Frame, FrameKind, HEADER_LEN, PROTOCOL_VERSION,
};
pub use types::{
    AckRequest, AuthChallenge, AuthDone, AuthFinish, AuthStart, BrokerDescription, ConsumeModel,
    DeadLetterRequest, Delivery, EpochStart, FlushMode, FollowerView, GroupInfo, Member, Message,
    MessagePage, MessageView, NackRequest, NackResult, PromoteRequest, Promotion, PullRequest,
    QueueLag, ReplicaAck, ReplicaBatch, ReplicaFetch, ReplicaRecord, Replication,
    ReplicationStatus, SendResult, SendStatus, Subscription, TopicInfo, TraceEvent,
};
