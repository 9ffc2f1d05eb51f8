//! Codec tests: round trips, truncated and garbage input (proptest).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use uuid::Uuid;

use super::*;

fn s() -> impl Strategy<Value = String> {
    "[a-z0-9é-]{0,12}"
}

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

fn bytes() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..48).prop_map(Bytes::from)
}

fn map() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map(s(), s(), 0..3)
}

fn message() -> impl Strategy<Value = Message> {
    (
        s(),
        proptest::option::of(any::<u32>()),
        proptest::option::of(uuid()),
        proptest::option::of(s()),
        proptest::option::of(s()),
        map(),
        bytes(),
    )
        .prop_map(
            |(topic, queue_id, message_id, key, tag, properties, body)| Message {
                topic,
                queue_id,
                message_id,
                key,
                tag,
                properties,
                body,
            },
        )
}

fn view() -> impl Strategy<Value = MessageView> {
    (
        s(),
        any::<u32>(),
        any::<u64>(),
        uuid(),
        proptest::option::of(s()),
        proptest::option::of(s()),
        map(),
        bytes(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(
                topic,
                queue_id,
                queue_offset,
                message_id,
                key,
                tag,
                properties,
                body,
                born,
                stored,
            )| MessageView {
                topic,
                queue_id,
                queue_offset,
                message_id,
                key,
                tag,
                properties,
                body,
                born_timestamp_ms: born,
                stored_timestamp_ms: stored,
            },
        )
}

fn send_result() -> impl Strategy<Value = SendResult> {
    (0u8..4, uuid(), any::<u32>(), any::<u64>(), any::<bool>()).prop_map(
        |(st, message_id, queue_id, queue_offset, duplicate)| SendResult {
            status: [
                SendStatus::SendOk,
                SendStatus::FlushDiskTimeout,
                SendStatus::FlushSlaveTimeout,
                SendStatus::SlaveNotAvailable,
            ][st as usize],
            message_id,
            queue_id,
            queue_offset,
            duplicate,
        },
    )
}

fn model() -> impl Strategy<Value = ConsumeModel> {
    prop_oneof![
        Just(ConsumeModel::Clustering),
        Just(ConsumeModel::Broadcasting)
    ]
}

fn description() -> impl Strategy<Value = BrokerDescription> {
    (
        s(),
        proptest::option::of(any::<u64>()),
        any::<u64>(),
        any::<u64>(),
        proptest::option::of(any::<u64>()),
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        (any::<bool>(), any::<bool>(), s()),
    )
        .prop_map(
            |(
                version,
                async_interval_ms,
                sync_flush_timeout_ms,
                retention_ms,
                max_disk_bytes,
                max_message_size,
                consume_timeout_ms,
                max_reconsume_times,
                (authentication, tls, listen),
            )| BrokerDescription {
                version,
                flush_mode: async_interval_ms.map_or(FlushMode::Sync, |ms| FlushMode::Async {
                    interval: Duration::from_millis(ms),
                }),
                sync_flush_timeout_ms,
                replication: Replication::None,
                retention_ms,
                max_disk_bytes,
                max_message_size,
                consume_timeout_ms,
                max_reconsume_times,
                authentication,
                tls,
                listen,
                replication_status: None,
            },
        )
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::Ping),
        message().prop_map(Request::Send),
        proptest::collection::vec(message(), 0..4).prop_map(Request::SendBatch),
        message().prop_map(Request::SendOneway),
        (
            s(),
            s(),
            s(),
            model(),
            proptest::collection::vec(s(), 0..3),
            any::<bool>()
        )
            .prop_map(|(group, topic, consumer_id, model, tags, ordered)| {
                Request::Subscribe(Subscription {
                    group,
                    topic,
                    consumer_id,
                    model,
                    tags,
                    ordered,
                })
            }),
        (s(), s())
            .prop_map(|(group, consumer_id)| Request::Heartbeat(Member { group, consumer_id })),
        (s(), s())
            .prop_map(|(group, consumer_id)| Request::Unsubscribe(Member { group, consumer_id })),
        (s(), s(), s(), any::<u32>(), any::<u64>()).prop_map(
            |(group, consumer_id, topic, max_messages, long_poll_ms)| {
                Request::Pull(PullRequest {
                    group,
                    consumer_id,
                    topic,
                    max_messages,
                    long_poll_ms,
                })
            }
        ),
        (s(), bytes()).prop_map(|(group, receipt)| Request::Ack(AckRequest { group, receipt })),
        (s(), bytes(), proptest::option::of(any::<u32>())).prop_map(
            |(group, receipt, delay_level)| Request::Nack(NackRequest {
                group,
                receipt,
                delay_level
            })
        ),
        (s(), bytes(), proptest::option::of(s())).prop_map(|(group, receipt, reason)| {
            Request::DeadLetter(DeadLetterRequest {
                group,
                receipt,
                reason,
            })
        }),
        (s(), any::<u32>())
            .prop_map(|(name, queues)| Request::CreateTopic(TopicInfo { name, queues })),
        Just(Request::ListTopics),
        Just(Request::ListGroups),
        Just(Request::Describe),
        s().prop_map(|group| Request::Lag { group }),
        uuid().prop_map(Request::LookupById),
        (s(), s(), any::<u32>()).prop_map(|(topic, key, max)| Request::LookupByKey {
            topic,
            key,
            max
        }),
        uuid().prop_map(Request::Trace),
        (s(), any::<u32>()).prop_map(|(group, max)| Request::DeadLetters { group, max }),
        (s(), proptest::collection::vec(uuid(), 0..3))
            .prop_map(|(group, ids)| Request::RedriveDeadLetters { group, ids }),
        (s(), bytes())
            .prop_map(|(user, client_nonce)| Request::AuthStart(AuthStart { user, client_nonce })),
        bytes().prop_map(|proof| Request::AuthFinish(AuthFinish { proof })),
        (s(), any::<u32>(), proptest::option::of(any::<u64>()))
            .prop_map(|(group, max, cursor)| Request::DeadLettersPage { group, max, cursor }),
        (s(), s(), any::<u32>(), proptest::option::of(any::<u64>())).prop_map(
            |(topic, key, max, cursor)| Request::LookupByKeyPage {
                topic,
                key,
                max,
                cursor
            }
        ),
    ]
}

/// A response together with a command code whose response shape it has.
fn response() -> impl Strategy<Value = (CommandCode, Response)> {
    prop_oneof![
        Just((CommandCode::Ping, Response::Done)),
        Just((CommandCode::Ack, Response::Done)),
        Just((CommandCode::DeadLetter, Response::Done)),
        (
            proptest::collection::vec(view(), 0..3),
            proptest::option::of(any::<u64>())
        )
            .prop_map(|(messages, next)| (
                CommandCode::DeadLettersPage,
                Response::Page(MessagePage { messages, next })
            )),
        send_result().prop_map(|r| (CommandCode::Send, Response::Send(r))),
        proptest::collection::vec(send_result(), 0..4)
            .prop_map(|r| (CommandCode::SendBatch, Response::SendBatch(r))),
        proptest::collection::vec((view(), bytes(), any::<u32>(), any::<u64>()), 0..3).prop_map(
            |ds| {
                (
                    CommandCode::Pull,
                    Response::Pull(
                        ds.into_iter()
                            .map(|(m, r, n, at)| {
                                Delivery::new(m, r, n).with_first_delivered_at_ms(at)
                            })
                            .collect(),
                    ),
                )
            }
        ),
        proptest::collection::vec((s(), any::<u32>()), 0..3).prop_map(|ts| {
            (
                CommandCode::ListTopics,
                Response::Topics(
                    ts.into_iter()
                        .map(|(name, queues)| TopicInfo { name, queues })
                        .collect(),
                ),
            )
        }),
        proptest::collection::vec(
            (
                s(),
                model(),
                proptest::collection::vec(s(), 0..3),
                proptest::collection::vec(s(), 0..3)
            ),
            0..3
        )
        .prop_map(|gs| {
            (
                CommandCode::ListGroups,
                Response::Groups(
                    gs.into_iter()
                        .map(|(name, model, topics, members)| GroupInfo {
                            name,
                            model,
                            topics,
                            members,
                        })
                        .collect(),
                ),
            )
        }),
        proptest::collection::vec(
            (
                s(),
                any::<u32>(),
                proptest::option::of(s()),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>()
            ),
            0..3
        )
        .prop_map(|ls| {
            (
                CommandCode::Lag,
                Response::Lag(
                    ls.into_iter()
                        .map(
                            |(topic, queue_id, consumer_id, committed, max, lag, unsettled)| {
                                QueueLag {
                                    topic,
                                    queue_id,
                                    consumer_id,
                                    committed,
                                    max,
                                    lag,
                                    unsettled,
                                }
                            },
                        )
                        .collect(),
                ),
            )
        }),
        any::<u64>().prop_map(|after_ms| (
            CommandCode::Nack,
            Response::Nacked(NackResult::Redeliver {
                after: Duration::from_millis(after_ms)
            })
        )),
        Just((
            CommandCode::Nack,
            Response::Nacked(NackResult::DeadLettered)
        )),
        proptest::option::of(view()).prop_map(|m| (CommandCode::LookupById, Response::Message(m))),
        proptest::collection::vec(view(), 0..3)
            .prop_map(|ms| (CommandCode::LookupByKey, Response::Messages(ms))),
        proptest::collection::vec(view(), 0..3)
            .prop_map(|ms| (CommandCode::DeadLetters, Response::Messages(ms))),
        proptest::collection::vec((any::<u64>(), s(), s()), 0..3).prop_map(|es| {
            (
                CommandCode::Trace,
                Response::Trace(
                    es.into_iter()
                        .map(|(timestamp_ms, event, detail)| TraceEvent {
                            timestamp_ms,
                            event,
                            detail,
                        })
                        .collect(),
                ),
            )
        }),
        any::<u64>().prop_map(|n| (CommandCode::RedriveDeadLetters, Response::Redriven(n))),
        description().prop_map(|d| (CommandCode::Describe, Response::Described(d))),
        (bytes(), any::<u32>(), bytes()).prop_map(|(salt, iterations, nonce)| (
            CommandCode::AuthStart,
            Response::AuthChallenge(AuthChallenge {
                salt,
                iterations,
                nonce
            })
        )),
        bytes().prop_map(|server_signature| (
            CommandCode::AuthFinish,
            Response::AuthDone(AuthDone { server_signature })
        )),
    ]
}

proptest! {
    #[test]
    fn requests_round_trip(req in request()) {
        let body = req.encode_body();
        prop_assert_eq!(Request::decode(req.code() as u16, body).unwrap(), req);
    }

    #[test]
    fn responses_round_trip((code, resp) in response()) {
        let body = resp.encode_body();
        prop_assert_eq!(Response::decode(code as u16, body).unwrap(), resp);
    }

    #[test]
    fn truncated_requests_are_errors(req in request(), cut in any::<prop::sample::Index>()) {
        let body = req.encode_body();
        prop_assume!(!body.is_empty());
        let cut = cut.index(body.len());
        prop_assert!(Request::decode(req.code() as u16, body.slice(..cut)).is_err());
    }

    #[test]
    fn truncated_responses_are_errors((code, resp) in response(), cut in any::<prop::sample::Index>()) {
        let body = resp.encode_body();
        prop_assume!(!body.is_empty());
        let cut = cut.index(body.len());
        prop_assert!(Response::decode(code as u16, body.slice(..cut)).is_err());
    }

    #[test]
    fn trailing_bytes_are_errors(req in request()) {
        let mut body = req.encode_body().to_vec();
        body.push(0);
        prop_assert!(Request::decode(req.code() as u16, body.into()).is_err());
    }

    #[test]
    fn a_view_costs_its_encoded_size(m in view()) {
        let mut buf = BytesMut::new();
        m.put(&mut buf);
        prop_assert_eq!(m.wire_len(), buf.len());
    }

    #[test]
    fn garbage_never_panics(code in 0u16..28, data in proptest::collection::vec(any::<u8>(), 0..128)) {
        let _ = Request::decode(code, Bytes::from(data.clone()));
        let _ = Response::decode(code, Bytes::from(data.clone()));
        let _ = ErrorReply::decode(Bytes::from(data));
    }

    #[test]
    fn error_replies_round_trip(code in any::<u16>(), message in s()) {
        let reply = ErrorReply::new(ErrorCode::from_u16(code), message);
        prop_assert_eq!(ErrorReply::decode(reply.encode()).unwrap(), reply);
    }
}

#[test]
fn huge_counts_do_not_allocate() {
    // A batch claiming u32::MAX messages in a 4-byte body is refused as truncated.
    let body = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff]);
    assert_eq!(
        Request::decode(CommandCode::SendBatch as u16, body).unwrap_err(),
        DecodeError::Truncated("batch")
    );
}

#[test]
fn unknown_command_is_reported() {
    assert_eq!(
        Request::decode(999, Bytes::new()).unwrap_err(),
        DecodeError::UnknownCommand(999)
    );
}

#[test]
fn validation_enforces_limits() {
    let limits = Limits {
        max_frame_size: 1024,
        max_body_size: 4,
        max_batch: 2,
    };
    assert!(
        Request::Send(Message::new("t", "1234"))
            .validate(&limits)
            .is_ok()
    );
    let err = Request::Send(Message::new("t", "12345"))
        .validate(&limits)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidRequest);
    assert!(err.message.contains("exceeds the limit"), "{err}");
    let batch = vec![Message::new("t", "a"); 3];
    assert!(Request::SendBatch(batch).validate(&limits).is_err());
    assert!(Request::SendBatch(vec![]).validate(&limits).is_err());
    assert!(
        Request::Send(Message::new("", "a"))
            .validate(&limits)
            .is_err()
    );
}

#[test]
fn unknown_flush_mode_and_replication_tags_are_invalid() {
    let description = BrokerDescription {
        version: "0.1.0".into(),
        flush_mode: FlushMode::ASYNC_DEFAULT,
        sync_flush_timeout_ms: 5_000,
        replication: Replication::None,
        retention_ms: 72 * 3_600_000,
        max_disk_bytes: None,
        max_message_size: 1 << 20,
        consume_timeout_ms: 900_000,
        max_reconsume_times: 16,
        authentication: false,
        tls: false,
        listen: "127.0.0.1:9876".into(),
        replication_status: None,
    };
    let body = Response::Described(description).encode_body().to_vec();
    // version: u32 length + 5 bytes, then the flush mode tag.
    let flush_tag = 4 + 5;
    let mut bad = body.clone();
    bad[flush_tag] = 7;
    assert_eq!(
        Response::decode(CommandCode::Describe as u16, bad.into()).unwrap_err(),
        DecodeError::Invalid("flush mode")
    );
    // flush mode (1 + 8), sync flush timeout (8), then the replication tag.
    let mut bad = body;
    bad[flush_tag + 9 + 8] = 7;
    assert_eq!(
        Response::decode(CommandCode::Describe as u16, bad.into()).unwrap_err(),
        DecodeError::Invalid("replication")
    );
}
