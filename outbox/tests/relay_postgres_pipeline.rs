//! On Postgres a batch published whole commits behind the next publish: the relay publishes the
//! batch it claimed ahead while the batch before it is still committing, commits it only after
//! that one, and a relay killed in between loses nothing.
//!
//! The tests hold the first batch's commit on a lock: a deferred constraint trigger on
//! `outbox.messages` runs at commit time, once per deleted row, and for rows of topic `held` waits
//! for an advisory lock the test holds. The same trigger logs every committed deletion, so the log
//! gives the order in which the batches' deletions committed.

mod common;

use std::time::Duration;

use common::{Behaviour, Recorder, Running, TestStore, relay};
use courier_outbox::{Message, Outbox};
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use uuid::Uuid;

courier_test_support::postgres_for_tests!();

/// The advisory lock (single-key space; the relay's partitions use the two-key one) that holds
/// the commit of a batch with a `held` message.
const HOLD: i64 = 4_242_001;

/// Installs the commit-time trigger and takes the lock that holds `held` commits; the lock goes
/// with the returned connection. With `fail_once`, the first `held` commit fails once the lock is
/// free (a sequence counts the attempts: it is not rolled back with them).
async fn hold_commits(pool: &PgPool, fail_once: bool) -> PoolConnection<Postgres> {
    sqlx::raw_sql(&format!(
        "CREATE TABLE commit_log (n bigserial PRIMARY KEY, id uuid NOT NULL,
                                  tx bigint NOT NULL DEFAULT txid_current());
         CREATE SEQUENCE held_commits;
         CREATE FUNCTION log_commit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF OLD.topic = 'held' THEN
                 PERFORM pg_advisory_xact_lock({HOLD});
                 IF {fail_once} AND nextval('held_commits') = 1 THEN
                     RAISE EXCEPTION 'injected commit failure';
                 END IF;
             END IF;
             INSERT INTO commit_log (id) VALUES (OLD.id);
             RETURN NULL;
         END $$;
         CREATE CONSTRAINT TRIGGER log_commit AFTER DELETE ON outbox.messages
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION log_commit();"
    ))
    .execute(pool)
    .await
    .unwrap();
    let mut holder = pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(HOLD)
        .execute(&mut *holder)
        .await
        .unwrap();
    holder
}

async fn release(mut holder: PoolConnection<Postgres>) {
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(HOLD)
        .execute(&mut *holder)
        .await
        .unwrap();
}

/// The messages whose deletion committed, by transaction in commit order (the messages of one
/// transaction sorted).
async fn committed(pool: &PgPool) -> Vec<Vec<Uuid>> {
    sqlx::query_scalar(
        "SELECT array_agg(id ORDER BY id) FROM commit_log GROUP BY tx ORDER BY min(n)",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// One transaction's messages, as [`committed`] lists them.
fn together(messages: &[&Message]) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = messages.iter().map(|m| m.id).collect();
    ids.sort();
    ids
}

/// Whether a relay connection waits for the lock that holds the commit.
async fn commit_held(pool: &PgPool) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                        WHERE datname = current_database() AND wait_event_type = 'Lock'
                          AND wait_event = 'advisory' AND application_name LIKE 'pipeline%')",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Two messages of one key: `first` (its commit held) is in flight, `second` is committed while
/// it publishes, so it is claimed ahead once `first` was published whole. Returns once `second`
/// was published while `first`'s commit waits on the lock.
async fn publish_second_while_first_commits(
    pool: &PgPool,
    recorder: &Recorder,
    fail_once: bool,
) -> (Running, Message, Message, PoolConnection<Postgres>) {
    let holder = hold_commits(pool, fail_once).await;
    let first = Message::new("held", "first").with_key("k");
    Outbox::new().enqueue(pool, &first).await.unwrap();
    let first_id = first.id;
    recorder.set_rule(move |message| {
        if message.id == first_id {
            Behaviour::WaitForGate
        } else {
            Behaviour::Accept
        }
    });
    let running = Running::start(
        relay(pool, recorder, "pipeline")
            .batch_size(10)
            .publish_timeout(Duration::from_secs(3600)),
    );
    recorder
        .wait_until("the first batch in flight", |r| r.total_calls() == 1)
        .await;
    let second = Message::new("t", "second").with_key("k");
    Outbox::new().enqueue(pool, &second).await.unwrap();
    recorder.open_gate();
    // Without the pipelining the relay waits for the first batch's commit before it publishes
    // the second: this never happens while the lock is held.
    recorder.wait_for_accepted(2).await;
    assert!(
        commit_held(pool).await,
        "the first batch's commit should still wait on the lock"
    );
    assert_eq!(
        Postgres::pending(pool).await,
        2,
        "neither batch may commit before the first one's commit is done"
    );
    (running, first, second, holder)
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn the_next_batch_is_published_while_the_one_before_commits_and_commits_after_it(
    pool: PgPool,
) {
    let recorder = Recorder::default();
    let (running, first, second, holder) =
        publish_second_while_first_commits(&pool, &recorder, false).await;
    release(holder).await;
    common::eventually("both batches committed", async || {
        Postgres::pending(&pool).await == 0
    })
    .await;
    running.stop().await;
    assert_eq!(recorder.accepted_ids(), vec![first.id, second.id]);
    assert_eq!(
        committed(&pool).await,
        vec![vec![first.id], vec![second.id]],
        "the second batch committed before the first"
    );
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn a_relay_killed_while_a_batch_commits_behind_the_next_publish_loses_neither(pool: PgPool) {
    let recorder = Recorder::default();
    let (running, first, second, holder) =
        publish_second_while_first_commits(&pool, &recorder, false).await;
    running.abort().await;
    // The first batch was published whole: its commit lands once the lock is free. The second
    // one's transaction went with the relay's connection: its row is back.
    release(holder).await;
    common::eventually("the first batch committed", async || {
        committed(&pool).await == vec![vec![first.id]]
    })
    .await;
    assert_eq!(Postgres::pending(&pool).await, 1);

    let heir_publisher = Recorder::default();
    let heir = Running::start(relay(&pool, &heir_publisher, "heir"));
    heir_publisher.wait_for_accepted(1).await;
    common::eventually("the heir's batch committed", async || {
        Postgres::pending(&pool).await == 0
    })
    .await;
    heir.stop().await;
    assert_eq!(heir_publisher.accepted_ids(), vec![second.id]);
    assert_eq!(
        committed(&pool).await,
        vec![vec![first.id], vec![second.id]]
    );
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn a_failed_commit_rolls_back_the_batch_published_behind_it(pool: PgPool) {
    let recorder = Recorder::default();
    let (running, first, second, holder) =
        publish_second_while_first_commits(&pool, &recorder, true).await;
    // The first batch's commit fails: the session ends before the second one commits, so both
    // go back and are published again, in order.
    release(holder).await;
    common::eventually("both batches committed after the reconnect", async || {
        Postgres::pending(&pool).await == 0
    })
    .await;
    running.stop().await;
    assert_eq!(
        recorder.accepted_ids(),
        vec![first.id, second.id, first.id, second.id]
    );
    assert_eq!(
        committed(&pool).await,
        vec![together(&[&first, &second])],
        "the second batch committed although the first one's commit failed"
    );
}
