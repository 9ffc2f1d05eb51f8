//! Per-principal counts of the topics and consumer groups it created (issue 16), so that one
//! client cannot fill the broker with names: past its limit a request that would create one is
//! refused with `LimitExceeded` before the broker sees it. Each principal has its own count,
//! so one that reached its limit holds back no other, and names that exist stay usable by
//! everyone allowed to use them.
//!
//! The counts live in the server's memory: after a restart, names created before it count for
//! nobody.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::broker::Broker;
use crate::protocol::{ErrorCode, ErrorReply, Request};

/// The names each principal created, and how many it may.
#[derive(Debug)]
pub(super) struct Quotas {
    max_topics: usize,
    max_groups: usize,
    created: Mutex<HashMap<String, Created>>,
}

#[derive(Debug, Default)]
struct Created {
    topics: HashSet<String>,
    groups: HashSet<String>,
}

/// The new names one request was allowed to create; [`settle`](Self::settle) gives back those
/// it did not create after all (the request failed).
#[derive(Debug)]
#[must_use]
pub(super) struct Reservation<'a> {
    quotas: &'a Quotas,
    principal: String,
    topics: Vec<String>,
    groups: Vec<String>,
}

/// The topics and group `request` creates when they do not exist.
fn names(request: &Request) -> (Vec<&str>, Option<&str>) {
    match request {
        Request::Send(m) | Request::SendOneway(m) => (vec![&m.topic], None),
        Request::SendBatch(ms) => {
            let mut topics: Vec<&str> = ms.iter().map(|m| m.topic.as_str()).collect();
            topics.sort_unstable();
            topics.dedup();
            (topics, None)
        }
        Request::Subscribe(s) => (vec![&s.topic], Some(&s.group)),
        Request::CreateTopic(t) => (vec![&t.name], None),
        _ => (Vec::new(), None),
    }
}

fn exceeded(principal: &str, count: usize, what: &str, setting: &str) -> ErrorReply {
    metrics::counter!("broker_lite_server_quota_refusals_total", "kind" => what.to_string())
        .increment(1);
    ErrorReply::new(
        ErrorCode::LimitExceeded,
        format!(
            "principal {principal:?} has created {count} {what}, the most it may ({setting}); \
             nothing was created: use existing ones, or ask the operator to raise {setting}"
        ),
    )
}

impl Quotas {
    pub(super) fn new(max_topics: usize, max_groups: usize) -> Self {
        Quotas {
            max_topics,
            max_groups,
            created: Mutex::default(),
        }
    }

    /// Counts the names `request` would create for `principal`, or refuses it when that goes
    /// over a limit (then nothing is counted).
    pub(super) fn reserve(
        &self,
        principal: &str,
        request: &Request,
        broker: &Broker,
    ) -> Result<Reservation<'_>, ErrorReply> {
        let (topics, group) = names(request);
        let mut reservation = Reservation {
            quotas: self,
            principal: principal.to_string(),
            topics: Vec::new(),
            groups: Vec::new(),
        };
        if topics.is_empty() && group.is_none() {
            return Ok(reservation);
        }
        let mut created = self.created.lock().unwrap();
        let mine = created.entry(principal.to_string()).or_default();
        let new_topics: Vec<&str> = topics
            .into_iter()
            .filter(|t| !mine.topics.contains(*t) && !broker.has_topic(t))
            .collect();
        let new_group = group.filter(|g| !mine.groups.contains(*g) && !broker.has_group(g));
        if !new_topics.is_empty() && mine.topics.len() + new_topics.len() > self.max_topics {
            let count = mine.topics.len();
            return Err(exceeded(
                principal,
                count,
                "topics",
                "max_topics_per_principal",
            ));
        }
        if new_group.is_some() && mine.groups.len() >= self.max_groups {
            let count = mine.groups.len();
            return Err(exceeded(
                principal,
                count,
                "consumer groups",
                "max_groups_per_principal",
            ));
        }
        for t in new_topics {
            mine.topics.insert(t.to_string());
            reservation.topics.push(t.to_string());
        }
        if let Some(g) = new_group {
            mine.groups.insert(g.to_string());
            reservation.groups.push(g.to_string());
        }
        Ok(reservation)
    }
}

impl Reservation<'_> {
    /// Gives back the reserved names that `broker` does not hold after the request.
    pub(super) fn settle(self, broker: &Broker) {
        if self.topics.is_empty() && self.groups.is_empty() {
            return;
        }
        let mut created = self.quotas.created.lock().unwrap();
        let Some(mine) = created.get_mut(&self.principal) else {
            return;
        };
        for t in self.topics.iter().filter(|t| !broker.has_topic(t)) {
            mine.topics.remove(t);
        }
        for g in self.groups.iter().filter(|g| !broker.has_group(g)) {
            mine.groups.remove(g);
        }
    }
}
