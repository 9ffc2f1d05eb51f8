//! The durability profile's warnings, with made-up broker descriptions.

use super::*;
use broker_lite_client::protocol::{FollowerView, ReplicationStatus};

fn broker(flush_mode: FlushMode, retention_hours: u64) -> BrokerDescription {
    BrokerDescription {
        version: "0.1.0".to_owned(),
        flush_mode,
        sync_flush_timeout_ms: 5_000,
        replication: Replication::None,
        retention_ms: retention_hours * HOUR_MS,
        max_disk_bytes: None,
        max_message_size: 4 << 20,
        consume_timeout_ms: 900_000,
        max_reconsume_times: 16,
        authentication: false,
        tls: false,
        listen: "127.0.0.1:9876".to_owned(),
        replication_status: None,
    }
}

fn critical(topics: &[&str]) -> Config {
    let mut config = Config::default();
    config.broker.critical_topics = topics.iter().map(|t| (*t).to_owned()).collect();
    config
}

#[test]
fn safe_defaults_have_no_warnings() {
    let sync = broker(FlushMode::Sync, 72);
    assert_eq!(
        warnings(&Config::default(), Some(&sync)),
        Vec::<String>::new()
    );
    let async_flush = broker(FlushMode::ASYNC_DEFAULT, 72);
    assert_eq!(
        warnings(&Config::default(), Some(&async_flush)),
        Vec::<String>::new(),
        "async flush is only risky for critical topics"
    );
}

#[test]
fn async_flush_with_critical_topics_is_a_warning() {
    let async_flush = broker(FlushMode::ASYNC_DEFAULT, 72);
    let found = warnings(&critical(&["ORDER_CREATED"]), Some(&async_flush));
    assert!(
        found
            .iter()
            .any(|w| w.contains("ASYNC_FLUSH") && w.contains("ORDER_CREATED")),
        "{found:?}"
    );
    let sync = broker(FlushMode::Sync, 72);
    let found = warnings(&critical(&["ORDER_CREATED"]), Some(&sync));
    assert!(
        !found.iter().any(|w| w.contains("ASYNC_FLUSH")),
        "{found:?}"
    );
}

#[test]
fn no_replication_with_critical_topics_is_reported() {
    let sync = broker(FlushMode::Sync, 72);
    let found = warnings(&critical(&["ORDER_CREATED"]), Some(&sync));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("no replication"), "{found:?}");
}

#[test]
fn short_retention_is_a_warning() {
    let short = broker(FlushMode::Sync, 12);
    let found = warnings(&Config::default(), Some(&short));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("12 h") && found[0].contains("B5"),
        "{found:?}"
    );
    assert!(warnings(&Config::default(), Some(&broker(FlushMode::Sync, 24))).is_empty());
}

#[test]
fn an_older_broker_still_gets_the_flush_reminder() {
    let found = warnings(&critical(&["ORDER_CREATED"]), None);
    assert!(
        found.iter().any(|w| w.contains("does not report")),
        "{found:?}"
    );
}

#[test]
fn an_open_broker_off_loopback_is_a_warning() {
    let config = Config::default();
    let mut open = broker(FlushMode::Sync, 72);
    assert!(
        warnings(&config, Some(&open)).is_empty(),
        "loopback may run open"
    );
    open.listen = "0.0.0.0:9876".to_owned();
    let found = warnings(&config, Some(&open));
    assert!(
        found
            .iter()
            .any(|w| w.contains("authentication off and TLS off")),
        "{found:?}"
    );
    open.authentication = true;
    open.tls = true;
    assert!(warnings(&config, Some(&open)).is_empty());
}

fn leader(replication: Replication, in_sync: bool) -> BrokerDescription {
    let mut b = broker(FlushMode::Sync, 72);
    b.replication = replication;
    b.replication_status = Some(ReplicationStatus {
        epoch: 3,
        followers: vec![FollowerView {
            name: "b2".to_owned(),
            acked_position: 10,
            lag_bytes: 90,
            in_sync,
            since_fetch_ms: 5,
        }],
        ..ReplicationStatus::default()
    });
    b
}

#[test]
fn an_async_master_with_critical_topics_is_a_warning() {
    let found = warnings(
        &critical(&["PAYMENT"]),
        Some(&leader(Replication::AsyncMaster, true)),
    );
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("ASYNC_MASTER") && found[0].contains("PAYMENT"),
        "{found:?}"
    );
    let sync = Replication::SyncMaster {
        min_sync_replicas: 1,
        slave_timeout: std::time::Duration::from_secs(3),
    };
    assert!(warnings(&critical(&["PAYMENT"]), Some(&leader(sync, true))).is_empty());
}

#[test]
fn a_leader_without_in_sync_followers_is_a_warning() {
    let sync = Replication::SyncMaster {
        min_sync_replicas: 1,
        slave_timeout: std::time::Duration::from_secs(3),
    };
    let found = warnings(&Config::default(), Some(&leader(sync, false)));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("no follower in sync")
            && found[0].contains("b2 90 bytes behind")
            && found[0].contains("SLAVE_NOT_AVAILABLE"),
        "{found:?}"
    );
    let mut alone = leader(Replication::AsyncMaster, false);
    alone.replication_status.as_mut().unwrap().followers.clear();
    let found = warnings(&Config::default(), Some(&alone));
    assert!(
        found
            .iter()
            .any(|w| w.contains("no follower in sync") && w.contains("none connected")),
        "{found:?}"
    );
}

#[test]
fn hours_are_printed_exactly() {
    assert_eq!(hours(72 * HOUR_MS), "72 h");
    assert_eq!(hours(HOUR_MS / 2), "0.50 h");
}
