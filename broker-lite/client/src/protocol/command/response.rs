//! Responses: what the broker answers to each command, and their body encodings.

use bytes::{BufMut, Bytes, BytesMut};

use super::CommandCode;
use crate::protocol::error::DecodeError;
use crate::protocol::frame::ensure_empty;
use crate::protocol::types::*;
use crate::protocol::wire::*;

/// A successful response, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Response {
    /// Nothing to return (ping, subscribe, heartbeat, unsubscribe, ack, dead letter, create
    /// topic).
    Done,
    /// What a nack did.
    Nacked(NackResult),
    /// Answer to a send.
    Send(SendResult),
    /// Answer to a batch send, one result per message in order.
    SendBatch(Vec<SendResult>),
    /// Deliveries of a pull (possibly none after the long poll).
    Pull(Vec<Delivery>),
    /// Topics.
    Topics(Vec<TopicInfo>),
    /// Groups.
    Groups(Vec<GroupInfo>),
    /// Lag per queue.
    Lag(Vec<QueueLag>),
    /// A message found by id, if any.
    Message(Option<MessageView>),
    /// Messages (lookup by key, dead letters).
    Messages(Vec<MessageView>),
    /// The trace of a message.
    Trace(Vec<TraceEvent>),
    /// How many dead letters were re-driven.
    Redriven(u64),
    /// The broker's version and durability settings.
    Described(BrokerDescription),
    /// The broker's SCRAM challenge (answer to [`CommandCode::AuthStart`]).
    AuthChallenge(AuthChallenge),
    /// The broker's SCRAM signature (answer to [`CommandCode::AuthFinish`]).
    AuthDone(AuthDone),
    /// The leader's records for a follower (answer to [`CommandCode::ReplicaFetch`]).
    ReplicaBatch(ReplicaBatch),
    /// One page of messages (answer to [`CommandCode::DeadLettersPage`] and
    /// [`CommandCode::LookupByKeyPage`]).
    Page(MessagePage),
    /// A follower's standing, and whether it now leads (answer to [`CommandCode::Promote`]).
    Promoted(Promotion),
}

impl Response {
    /// Encodes the body.
    pub fn encode_body(&self) -> Bytes {
        let mut buf = BytesMut::new();
        match self {
            Response::Done => {}
            Response::Nacked(n) => n.put(&mut buf),
            Response::Send(r) => r.put(&mut buf),
            Response::SendBatch(rs) => put_list(&mut buf, rs, |b, r| r.put(b)),
            Response::Pull(ds) => put_list(&mut buf, ds, |b, d| d.put(b)),
            Response::Topics(ts) => put_list(&mut buf, ts, |b, t| t.put(b)),
            Response::Groups(gs) => put_list(&mut buf, gs, |b, g| g.put(b)),
            Response::Lag(ls) => put_list(&mut buf, ls, |b, l| l.put(b)),
            Response::Message(m) => match m {
                Some(m) => {
                    buf.put_u8(1);
                    m.put(&mut buf);
                }
                None => buf.put_u8(0),
            },
            Response::Messages(ms) => put_list(&mut buf, ms, |b, m| m.put(b)),
            Response::Trace(es) => put_list(&mut buf, es, |b, e| e.put(b)),
            Response::Redriven(n) => buf.put_u64(*n),
            Response::Described(d) => d.put(&mut buf),
            Response::AuthChallenge(c) => c.put(&mut buf),
            Response::AuthDone(d) => d.put(&mut buf),
            Response::ReplicaBatch(r) => r.put(&mut buf),
            Response::Page(p) => p.put(&mut buf),
            Response::Promoted(p) => p.put(&mut buf),
        }
        buf.freeze()
    }

    /// Decodes the body of a response to the command `code`.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] for an unknown code, truncated or invalid input, or trailing bytes.
    pub fn decode(code: u16, mut body: Bytes) -> Result<Self, DecodeError> {
        let b = &mut body;
        let response = match CommandCode::from_u16(code)? {
            CommandCode::Ping
            | CommandCode::SendOneway
            | CommandCode::Subscribe
            | CommandCode::Heartbeat
            | CommandCode::Unsubscribe
            | CommandCode::Ack
            | CommandCode::DeadLetter
            | CommandCode::ReplicaAck
            | CommandCode::CreateTopic => Response::Done,
            CommandCode::Nack => Response::Nacked(NackResult::get(b)?),
            CommandCode::Send => Response::Send(SendResult::get(b)?),
            CommandCode::SendBatch => {
                Response::SendBatch(get_list(b, 29, "send results", SendResult::get)?)
            }
            CommandCode::Pull => Response::Pull(get_list(b, 40, "deliveries", Delivery::get)?),
            CommandCode::ListTopics => Response::Topics(get_list(b, 8, "topics", TopicInfo::get)?),
            CommandCode::ListGroups => Response::Groups(get_list(b, 13, "groups", GroupInfo::get)?),
            CommandCode::Lag => Response::Lag(get_list(b, 41, "lag", QueueLag::get)?),
            CommandCode::LookupById => Response::Message(if get_bool(b, "message presence")? {
                Some(MessageView::get(b)?)
            } else {
                None
            }),
            CommandCode::LookupByKey | CommandCode::DeadLetters => {
                Response::Messages(get_list(b, 40, "messages", MessageView::get)?)
            }
            CommandCode::Trace => Response::Trace(get_list(b, 16, "trace", TraceEvent::get)?),
            CommandCode::RedriveDeadLetters => Response::Redriven(get_u64(b, "redriven")?),
            CommandCode::Describe => Response::Described(BrokerDescription::get(b)?),
            CommandCode::AuthStart => Response::AuthChallenge(AuthChallenge::get(b)?),
            CommandCode::AuthFinish => Response::AuthDone(AuthDone::get(b)?),
            CommandCode::ReplicaFetch => Response::ReplicaBatch(ReplicaBatch::get(b)?),
            CommandCode::DeadLettersPage | CommandCode::LookupByKeyPage => {
                Response::Page(MessagePage::get(b)?)
            }
            CommandCode::Promote => Response::Promoted(Promotion::get(b)?),
        };
        ensure_empty(&body)?;
        Ok(response)
    }
}
