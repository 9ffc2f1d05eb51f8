//! Who a connection is and what it may do (issue 16).

use std::fmt;

/// What one principal may do. Each list holds topic or group names; a name ending in `*`
/// matches every name with that prefix, and `*` alone matches everything.
///
/// ```
/// use broker_lite::server::Permissions;
///
/// let mut p = Permissions::default();
/// p.produce = vec!["orders".into()];
/// p.groups = vec!["billing-*".into()];
/// assert!(p.may_produce("orders") && !p.may_produce("payments"));
/// assert!(p.may_use_group("billing-eu") && !p.may_use_group("shipping"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Permissions {
    /// Topics it may send to.
    pub produce: Vec<String>,
    /// Topics it may subscribe to and pull from.
    pub consume: Vec<String>,
    /// Consumer groups it may join, pull, settle (ack, nack, dead-letter) and leave.
    pub groups: Vec<String>,
    /// Whether it may run admin commands: create topics, list topics and groups, lag, lookups,
    /// traces, dead-letter listings and redrives.
    pub admin: bool,
}

fn matches(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => p == name,
    })
}

impl Permissions {
    /// Everything: the permissions of every connection to a broker that runs open.
    ///
    /// ```
    /// assert!(broker_lite::server::Permissions::all().admin);
    /// ```
    pub fn all() -> Self {
        let every = vec!["*".to_string()];
        Permissions {
            produce: every.clone(),
            consume: every.clone(),
            groups: every,
            admin: true,
        }
    }

    /// Whether it may send to `topic`.
    pub fn may_produce(&self, topic: &str) -> bool {
        matches(&self.produce, topic)
    }

    /// Whether it may consume `topic`.
    pub fn may_consume(&self, topic: &str) -> bool {
        matches(&self.consume, topic)
    }

    /// Whether it may use the consumer group `group`.
    pub fn may_use_group(&self, group: &str) -> bool {
        matches(&self.groups, group)
    }
}

/// An authenticated connection's identity and rights.
///
/// ```
/// use broker_lite::server::Principal;
///
/// let p = Principal::anonymous();
/// assert_eq!(p.name(), "anonymous");
/// assert!(p.permissions().admin);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Principal {
    name: String,
    permissions: Permissions,
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Principal({})", self.name)
    }
}

impl Principal {
    /// The principal `name` with `permissions`.
    pub fn new(name: impl Into<String>, permissions: Permissions) -> Self {
        Principal {
            name: name.into(),
            permissions,
        }
    }

    /// The principal of every connection to a broker without authentication: may do anything.
    pub fn anonymous() -> Self {
        Principal::new("anonymous", Permissions::all())
    }

    /// The user name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it may do.
    pub fn permissions(&self) -> &Permissions {
        &self.permissions
    }
}
