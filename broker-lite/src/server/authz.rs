//! Which requests a principal may make (issue 16). Checked by the server before the handler
//! sees a request, so a refused request changes nothing.

use super::principal::Principal;
use crate::protocol::{ErrorCode, ErrorReply, Request};

fn forbidden(principal: &Principal, what: String) -> ErrorReply {
    metrics::counter!("broker_lite_server_forbidden_total").increment(1);
    ErrorReply::new(
        ErrorCode::Forbidden,
        format!(
            "principal {:?} may not {what}; nothing was changed (grant it in the broker's user permissions)",
            principal.name()
        ),
    )
}

/// `Ok` when `principal` may make `request`.
pub(super) fn authorize(principal: &Principal, request: &Request) -> Result<(), ErrorReply> {
    let p = principal.permissions();
    let produce = |topic: &str| {
        if p.may_produce(topic) {
            Ok(())
        } else {
            Err(forbidden(principal, format!("produce to topic {topic:?}")))
        }
    };
    let group = |group: &str| {
        if p.may_use_group(group) {
            Ok(())
        } else {
            Err(forbidden(
                principal,
                format!("use consumer group {group:?}"),
            ))
        }
    };
    let consume = |g: &str, topic: &str| {
        group(g)?;
        if p.may_consume(topic) {
            Ok(())
        } else {
            Err(forbidden(principal, format!("consume topic {topic:?}")))
        }
    };
    let admin = |what: &str| {
        if p.admin {
            Ok(())
        } else {
            Err(forbidden(
                principal,
                format!("run the admin command {what}"),
            ))
        }
    };
    match request {
        Request::Ping | Request::Describe => Ok(()),
        Request::Send(m) | Request::SendOneway(m) => produce(&m.topic),
        Request::SendBatch(ms) => ms.iter().try_for_each(|m| produce(&m.topic)),
        Request::Subscribe(s) => consume(&s.group, &s.topic),
        Request::Pull(pull) => consume(&pull.group, &pull.topic),
        Request::Heartbeat(m) | Request::Unsubscribe(m) => group(&m.group),
        // The handler also checks that the receipt was issued to this principal and group.
        Request::Ack(a) => group(&a.group),
        Request::Nack(n) => group(&n.group),
        Request::DeadLetter(d) => group(&d.group),
        Request::CreateTopic(_) => admin("create_topic"),
        Request::ListTopics => admin("list_topics"),
        Request::ListGroups => admin("list_groups"),
        Request::Lag { .. } => admin("lag"),
        Request::LookupById(_) | Request::LookupByKey { .. } | Request::LookupByKeyPage { .. } => {
            admin("lookup")
        }
        Request::Trace(_) => admin("trace"),
        Request::DeadLetters { .. } | Request::DeadLettersPage { .. } => admin("dead_letters"),
        Request::RedriveDeadLetters { .. } => admin("redrive_dead_letters"),
        // A follower reads the whole log and reports offsets that decide SEND_OK.
        Request::ReplicaFetch(_) => admin("replica_fetch"),
        Request::ReplicaAck(_) => admin("replica_ack"),
        // Promotion changes which node takes sends and may lose acknowledged messages.
        Request::Promote(_) => admin("promote"),
        Request::AuthStart(_) | Request::AuthFinish(_) => Err(ErrorReply::new(
            ErrorCode::InvalidRequest,
            "this connection has already authenticated (or the broker runs open)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{AckRequest, Message, PullRequest};
    use crate::server::Permissions;

    fn producer() -> Principal {
        Principal::new(
            "orders",
            Permissions {
                produce: vec!["orders".into()],
                consume: vec!["orders".into()],
                groups: vec!["billing".into()],
                admin: false,
            },
        )
    }

    #[test]
    fn each_right_is_checked() {
        let p = producer();
        assert!(authorize(&p, &Request::Send(Message::new("orders", "x"))).is_ok());
        let refused = authorize(&p, &Request::Send(Message::new("payments", "x"))).unwrap_err();
        assert_eq!(refused.code, ErrorCode::Forbidden);
        assert!(
            refused.message.contains("produce to topic \"payments\""),
            "{refused}"
        );
        let batch = Request::SendBatch(vec![
            Message::new("orders", "x"),
            Message::new("payments", "y"),
        ]);
        assert!(
            authorize(&p, &batch).is_err(),
            "one foreign topic refuses the batch"
        );
        let pull = |group: &str, topic: &str| {
            Request::Pull(PullRequest {
                group: group.into(),
                consumer_id: "c".into(),
                topic: topic.into(),
                max_messages: 1,
                long_poll_ms: 0,
            })
        };
        assert!(authorize(&p, &pull("billing", "orders")).is_ok());
        assert!(authorize(&p, &pull("shipping", "orders")).is_err());
        assert!(authorize(&p, &pull("billing", "payments")).is_err());
        let ack = Request::Ack(AckRequest {
            group: "shipping".into(),
            receipt: vec![1u8].into(),
        });
        assert!(authorize(&p, &ack).is_err());
        let admin = authorize(&p, &Request::ListGroups).unwrap_err();
        assert!(
            admin.message.contains("admin command list_groups"),
            "{admin}"
        );
        assert!(authorize(&Principal::anonymous(), &Request::ListGroups).is_ok());
    }
}
