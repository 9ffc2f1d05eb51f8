//! One batch on a store that leases rows (SQLite, MySQL), with the next batch claimed ahead.
//!
//! **Claiming ahead.** While a full batch is published, the next one is leased in its own short
//! transaction, so a busy relay does not wait for a claim between batches. The same rule as on
//! Postgres (`postgres/session.rs`) applies: the batch claimed ahead is published only if the batch
//! in hand was published *whole*; otherwise it is released untouched and the next claim sees the
//! failed message backing off. Its rows leave the outbox only when its own outcomes are recorded,
//! after the broker acknowledged them. (The claim also skips every later row of a key leased to
//! the batch in hand, so the two batches share no key; the rule keeps the stores alike, and keeps
//! a key's order should the claim ever take such rows.)
//!
//! Nothing holds a write lock while a batch waits: each lease, renewal, release and record is a
//! short transaction of its own, so on SQLite the application's writers wait at most for one of
//! them (their busy timeout), never for the broker. The claim ahead and the renewals are polled
//! side by side with the publishing, never one inside the other, so that a pool of one connection
//! cannot deadlock between them.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::relay::{BatchEnd, Claimed, Outcome, PublishFn};

/// Rows leased by one claim, and the token their lease is held under.
#[derive(Debug)]
pub(crate) struct Leased<T> {
    pub(crate) token: T,
    pub(crate) rows: Vec<Claimed>,
}

/// The lease operations of one store; every call is its own short transaction.
pub(crate) trait Leases: Sync {
    /// What marks this claim's rows as this relay's (`lease_owner`).
    type Token: Send + Sync;

    /// How long a lease lasts; renewed every third of it.
    fn lease(&self) -> Duration;

    /// Leases up to `limit` due rows, oldest first; `None` if nothing was due.
    fn claim(
        &self,
        limit: usize,
    ) -> impl Future<Output = sqlx::Result<Option<Leased<Self::Token>>>> + Send;

    /// Extends the lease of `rows`.
    fn renew(
        &self,
        token: &Self::Token,
        rows: &[Claimed],
    ) -> impl Future<Output = sqlx::Result<()>> + Send;

    /// Gives `rows` back untouched.
    fn release(
        &self,
        token: &Self::Token,
        rows: &[Claimed],
    ) -> impl Future<Output = sqlx::Result<()>> + Send;

    /// Writes the outcomes of `rows` still leased to `token`; returns how many were taken over.
    fn record(
        &self,
        token: &Self::Token,
        rows: &[Claimed],
        outcomes: &[Outcome],
        keep_sent: bool,
    ) -> impl Future<Output = sqlx::Result<u64>> + Send;
}

/// Renews the lease of `rows`; a failure only risks publishing twice if the lease runs out.
async fn renew<L: Leases>(store: &L, token: &L::Token, rows: &[Claimed], which: &str) {
    if let Err(error) = store.renew(token, rows).await {
        tracing::warn!(%error, "could not renew the lease of the {which}");
    }
}

/// Claims up to `limit` rows (or takes the batch claimed ahead), publishes them while leasing the
/// next batch, records the outcomes and keeps the next batch in `ahead` if the rule allows.
pub(crate) async fn batch<L: Leases, F: PublishFn>(
    store: &L,
    ahead: &mut Option<Leased<L::Token>>,
    limit: usize,
    keep_sent: bool,
    publish: F,
) -> sqlx::Result<BatchEnd> {
    if ahead.as_ref().is_some_and(|a| a.rows.len() > limit) {
        give_back(store, ahead).await?;
    }
    let Leased { token, rows } = match ahead.take() {
        Some(next) => next,
        None => match store.claim(limit).await? {
            Some(claimed) => claimed,
            None => return Ok(BatchEnd::Empty),
        },
    };
    if rows.is_empty() {
        // Taken over already (a lease shorter than the round trip): nothing of ours to publish.
        return Ok(BatchEnd::Done);
    }
    let claimed: Arc<[Claimed]> = rows.into();
    // A full batch says more is probably due; a smaller one that there is not.
    let look_ahead = claimed.len() >= limit && limit > 1;
    let lease = store.lease();
    let renew_every = lease / 3;

    let mut next: Option<sqlx::Result<Option<Leased<L::Token>>>> = None;
    let next_ready = Notify::new();
    let ahead_claimed = AtomicBool::new(!look_ahead);
    let outcomes = {
        // Leases the next batch, then renews its lease until dropped.
        let claim_ahead = async {
            if look_ahead {
                next = Some(store.claim(limit).await);
                ahead_claimed.store(true, Ordering::Release);
                next_ready.notify_one();
                if let Some(Ok(Some(leased))) = &next {
                    loop {
                        tokio::time::sleep(renew_every).await;
                        renew(store, &leased.token, &leased.rows, "batch claimed ahead").await;
                    }
                }
            }
            std::future::pending::<()>().await
        };
        let this_batch = async {
            let publishing = publish(claimed.clone());
            tokio::pin!(publishing);
            let mut renewals =
                tokio::time::interval_at(tokio::time::Instant::now() + renew_every, renew_every);
            loop {
                tokio::select! {
                    outcomes = &mut publishing => break outcomes,
                    _ = renewals.tick() => renew(store, &token, &claimed, "batch in hand").await,
                }
            }
        };
        tokio::pin!(claim_ahead);
        tokio::pin!(this_batch);
        let outcomes = tokio::select! {
            outcomes = &mut this_batch => outcomes,
            () = &mut claim_ahead => unreachable!("the claim ahead never ends on its own"),
        };
        // A claim still running is awaited, not dropped half-way (its lease would stay).
        if !ahead_claimed.load(Ordering::Acquire) {
            tokio::select! {
                () = next_ready.notified() => {}
                () = &mut claim_ahead => unreachable!("the claim ahead never ends on its own"),
            }
        }
        outcomes
    };
    // A failed claim ahead took nothing: the next claim in turn tries again (and reports).
    let next = match next {
        Some(Ok(Some(next))) if !next.rows.is_empty() => Some(next),
        Some(Err(error)) => {
            tracing::debug!(%error, "claiming the next batch ahead failed");
            None
        }
        _ => None,
    };
    let Some(outcomes) = outcomes else {
        store.release(&token, &claimed).await?;
        *ahead = next;
        give_back(store, ahead).await?;
        return Ok(BatchEnd::Abandoned);
    };
    let taken_over = store.record(&token, &claimed, &outcomes, keep_sent).await;
    *ahead = next;
    let taken_over = match taken_over {
        Ok(taken_over) => taken_over,
        Err(error) => {
            // The session ends: leave nothing leased that no one will publish.
            let _ = give_back(store, ahead).await;
            return Err(error);
        }
    };
    if taken_over > 0 {
        tracing::warn!(
            taken_over,
            lease = ?lease,
            "the lease of some rows ran out while they were published and another relay \
             took them: their outcome here is dropped, the other relay records its own"
        );
    }
    if !outcomes.iter().all(|o| matches!(o, Outcome::Published)) {
        give_back(store, ahead).await?;
    }
    Ok(BatchEnd::Done)
}

/// Releases the batch claimed ahead, if any: its rows are due again at once.
pub(crate) async fn give_back<L: Leases>(
    store: &L,
    ahead: &mut Option<Leased<L::Token>>,
) -> sqlx::Result<()> {
    if let Some(next) = ahead.take() {
        store.release(&next.token, &next.rows).await?;
    }
    Ok(())
}
