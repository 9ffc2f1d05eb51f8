//! The broker's types as wire types and back: what [`BrokerHandler`](super::broker::BrokerHandler)
//! sends and receives, kept apart from the dispatch so that each conversion is one function.

use bytes::Bytes;

use crate::broker::{self, ReceiptKey, SendRequest, TraceKind};
use crate::protocol::{Delivery, Message, MessageView, SendResult, TraceEvent};

pub(super) fn send_request(m: Message) -> SendRequest {
    let mut r = SendRequest::new(m.topic, m.body);
    if let Some(id) = m.message_id {
        r = r.with_message_id(id);
    }
    if let Some(q) = m.queue_id {
        r = r.with_queue(q);
    }
    if let Some(k) = m.key {
        r = r.with_key(k);
    }
    if let Some(t) = m.tag {
        r = r.with_tag(t);
    }
    for (k, v) in m.properties {
        r = r.with_property(k, v);
    }
    r
}

pub(super) fn send_result(r: broker::SendResult) -> SendResult {
    SendResult {
        status: r.status,
        message_id: r.message_id,
        queue_id: r.queue_id,
        queue_offset: r.queue_offset,
        duplicate: r.duplicate,
    }
}

pub(super) fn delivery(d: broker::Delivery, key: &ReceiptKey, principal: &str) -> Delivery {
    let mut v = MessageView::new(d.topic, d.queue_id, d.queue_offset, d.message_id, d.body);
    v.key = d.key;
    v.tag = d.tag;
    v.properties = d.properties;
    v.born_timestamp_ms = d.born_timestamp_ms;
    v.stored_timestamp_ms = d.stored_timestamp_ms;
    let receipt = Bytes::from(d.receipt.seal(key, principal));
    Delivery::new(v, receipt, d.reconsume_times).with_first_delivered_at_ms(d.first_delivered_at_ms)
}

pub(super) fn trace_event(e: broker::TraceEvent) -> TraceEvent {
    let (event, detail) = match e.kind {
        TraceKind::Stored {
            topic,
            queue_id,
            queue_offset,
            status,
        } => (
            "stored",
            format!("{topic}:{queue_id}@{queue_offset} status {status:?}"),
        ),
        TraceKind::Delivered {
            group,
            client_id,
            attempt,
        } => (
            "delivered",
            format!("group {group} member {client_id} attempt {attempt}"),
        ),
        TraceKind::Acked { group, client_id } => {
            ("acked", format!("group {group} member {client_id}"))
        }
        TraceKind::Filtered { group } => ("filtered", format!("group {group}")),
        TraceKind::Nacked {
            group,
            client_id,
            redeliver_after,
        } => (
            "nacked",
            format!("group {group} member {client_id} redeliver after {redeliver_after:?}"),
        ),
        TraceKind::TimedOut { group, client_id } => {
            ("timed-out", format!("group {group} member {client_id}"))
        }
        TraceKind::Rejected {
            group,
            client_id,
            reason,
        } => (
            "rejected",
            match reason {
                Some(reason) => format!("group {group} member {client_id}: {reason}"),
                None => format!("group {group} member {client_id}"),
            },
        ),
        TraceKind::DeadLettered { group } => ("dead-lettered", format!("group {group}")),
        TraceKind::Redriven { group } => ("redriven", format!("group {group}")),
    };
    TraceEvent {
        timestamp_ms: e.at_ms,
        event: event.to_string(),
        detail,
    }
}
