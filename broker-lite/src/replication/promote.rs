//! Whether a follower may be promoted, and what a promotion would lose.
//!
//! The follower judges from the leader's last answer: the leader's durable log end and how far
//! it had acknowledged sends (the commit position under `SYNC_MASTER`, the log end under
//! `ASYNC_MASTER`). It is *in sync* when it holds everything acknowledged. The leader is usually
//! gone when this is asked, so the answer is "as far as the follower knows": a leader that went
//! on acknowledging with another follower after this one lost contact is invisible here, which
//! is why the answer carries the time since the last contact, and why a controller should ask
//! every follower (`dry_run`) and promote the one holding the most.

use std::sync::atomic::Ordering;

use super::follower::FollowerProgress;
use crate::protocol::Promotion;

/// Where a follower stands against its leader now.
pub(crate) fn standing(progress: &FollowerProgress) -> Promotion {
    let contact = *progress.last_contact.lock().unwrap();
    let position = progress.position.load(Ordering::Acquire);
    let leader_acked_end = progress.leader_acked_end.load(Ordering::Acquire);
    Promotion {
        promoted: false,
        in_sync: contact.is_some() && position >= leader_acked_end,
        epoch: progress.epoch.load(Ordering::Acquire),
        position,
        leader_log_end: progress.leader_log_end.load(Ordering::Acquire),
        leader_acked_end,
        since_contact_ms: contact
            .map(|t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)),
    }
}

/// Why a follower that is not in sync is not promoted, and what to do.
pub(crate) fn refusal(p: &Promotion, leader: &str) -> String {
    let lack = if p.since_contact_ms.is_none() {
        "it cannot tell what the leader acknowledged".to_string()
    } else {
        format!(
            "it holds the log up to position {}, the leader had acknowledged sends up to {} \
             ({} bytes of acknowledged records this node lacks; their number is unknown here, \
             it never received them) and stored up to {} ({} bytes behind)",
            p.position,
            p.leader_acked_end,
            p.unreplicated_bytes(),
            p.leader_log_end,
            p.lag_bytes()
        )
    };
    format!(
        "not promoted: this follower of {leader} is not in sync: {lack}; {}. Let it catch up \
         (if the leader is still up), or promote a follower that is in sync (run \
         `broker-lite promote --dry-run` against each), or accept the loss with --force",
        p.contact()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_sync_means_holding_everything_acknowledged() {
        let progress = FollowerProgress::default();
        assert!(!standing(&progress).in_sync, "never heard from a leader");
        progress.position.store(500, Ordering::Release);
        progress.leader_acked_end.store(700, Ordering::Release);
        progress.leader_log_end.store(900, Ordering::Release);
        *progress.last_contact.lock().unwrap() = Some(std::time::Instant::now());
        let behind = standing(&progress);
        assert!(!behind.in_sync);
        assert_eq!(
            (behind.unreplicated_bytes(), behind.lag_bytes()),
            (200, 400)
        );
        let text = refusal(&behind, "l:1");
        assert!(text.contains("200 bytes of acknowledged"), "{text}");
        assert!(behind.loss().contains("500..700"), "{}", behind.loss());
        progress.position.store(700, Ordering::Release);
        assert!(standing(&progress).in_sync, "unacknowledged lag is no loss");
    }
}
