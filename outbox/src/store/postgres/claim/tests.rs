//! The claim and its cursor on a real Postgres: what it reads, and that no row is left behind.
//! Reads are counted with the server's per-transaction buffer counters, not timed. `#[sqlx::test]`
//! needs `DATABASE_URL` (the integration suites start a container without it; this crate forbids
//! the unsafe code their hook needs).

use sqlx::{Connection, PgConnection, PgPool};

use super::*;

const ALL: [i16; 64] = {
    let mut all = [0i16; 64];
    let mut p = 0;
    while p < 64 {
        all[p as usize] = p;
        p += 1;
    }
    all
};

/// Inserts `n` committed rows over 16 keys, as writers do.
async fn fill(pool: &PgPool, n: i64) {
    sqlx::query(
        "INSERT INTO outbox.messages (id, topic, key, payload)
         SELECT gen_random_uuid(), 't', 'k' || (g % 16), '\\x00' FROM generate_series(1, $1) g",
    )
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
}

/// One claim in its own transaction, then `end` ("COMMIT" deletes what it claimed).
async fn claim_in_tx(
    conn: &mut PgConnection,
    cursor: &mut Cursor,
    limit: usize,
    end: &str,
) -> Vec<i64> {
    sqlx::query("BEGIN").execute(&mut *conn).await.unwrap();
    let claimed = claim(conn, cursor, &ALL, limit).await.unwrap();
    sqlx::query(end).execute(&mut *conn).await.unwrap();
    claimed.iter().map(|c| c.seq).collect()
}

/// Primary-key blocks one claim reads (buffer hits and reads), in a transaction rolled back. The
/// counter holds what the backend has not reported yet, which it does only outside a transaction:
/// the difference across the claim is the claim's.
async fn pkey_blocks_of_a_claim(conn: &mut PgConnection, cursor: &mut Cursor) -> i64 {
    const BLOCKS: &str = "SELECT pg_stat_get_xact_blocks_fetched('outbox.messages_pkey'::regclass)";
    let mut tx = conn.begin().await.unwrap();
    let before: i64 = sqlx::query_scalar(BLOCKS)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    claim(&mut tx, cursor, &ALL, 10).await.unwrap();
    let after: i64 = sqlx::query_scalar(BLOCKS)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    after - before
}

/// A drained prefix of 100,000 deleted (not vacuumed) rows: a claim from the start of the key
/// steps over their ~270 leaf pages each time; from the cursor it reads a few. Measured: 569
/// blocks for the first claim (it and its lowest-row probe both start at the table's start), 22
/// from the cursor; 295 when the cursor is pinned at 0, as the claim was before it had one.
#[sqlx::test(migrator = "crate::MIGRATOR")]
async fn a_claim_reads_from_the_first_live_row_not_through_the_deleted_ones(pool: PgPool) {
    fill(&pool, 100_010).await;
    sqlx::query("DELETE FROM outbox.messages WHERE seq <= 100000")
        .execute(&pool)
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let mut cursor = Cursor::default();
    let from_start = pkey_blocks_of_a_claim(&mut conn, &mut cursor).await;
    // The cursor moves once the writers seen by one claim are gone, at the claim after next.
    for _ in 0..4 {
        claim_in_tx(&mut conn, &mut cursor, 10, "ROLLBACK").await;
    }
    assert_eq!(
        cursor.start(),
        100_001,
        "the cursor is at the first live row"
    );
    let from_cursor = pkey_blocks_of_a_claim(&mut conn, &mut cursor).await;
    assert!(
        from_start > 250 && from_cursor < 60,
        "a claim read {from_start} primary-key blocks from the start of the table and \
         {from_cursor} from the cursor"
    );
    let next = claim_in_tx(&mut conn, &mut cursor, 10, "ROLLBACK").await;
    assert_eq!(next, (100_001..=100_010).collect::<Vec<_>>());
}

/// The design's rule: a transaction that took a lower sequence number and commits after later
/// rows were published must still be published. Its open transaction holds the cursor at or
/// below its row however many claims pass, and the claim after its commit takes it.
#[sqlx::test(migrator = "crate::MIGRATOR")]
async fn a_row_committed_late_with_a_lower_seq_is_claimed(pool: PgPool) {
    fill(&pool, 5).await;
    let mut slow = pool.begin().await.unwrap();
    let late: i64 = sqlx::query_scalar(
        "INSERT INTO outbox.messages (id, topic, key, payload)
         VALUES (gen_random_uuid(), 't', 'late', '\\x00') RETURNING seq",
    )
    .fetch_one(&mut *slow)
    .await
    .unwrap();
    fill(&pool, 200).await;
    let mut conn = pool.acquire().await.unwrap();
    let mut cursor = Cursor::default();
    let mut drained = 0;
    while drained < 205 {
        let claimed = claim_in_tx(&mut conn, &mut cursor, 10, "COMMIT").await;
        assert!(!claimed.contains(&late), "claimed before its commit");
        assert!(
            !claimed.is_empty(),
            "{drained} of 205 committed rows claimed"
        );
        drained += claimed.len();
    }
    for _ in 0..10 {
        assert!(
            claim_in_tx(&mut conn, &mut cursor, 10, "COMMIT")
                .await
                .is_empty()
        );
    }
    assert!(
        cursor.start() <= late,
        "the cursor passed {late}, the row of a transaction still open: {}",
        cursor.start()
    );
    slow.commit().await.unwrap();
    assert_eq!(
        claim_in_tx(&mut conn, &mut cursor, 10, "COMMIT").await,
        vec![late]
    );
    // Once it is gone, the cursor moves past it.
    for _ in 0..4 {
        claim_in_tx(&mut conn, &mut cursor, 10, "COMMIT").await;
    }
    assert!(cursor.start() > late, "cursor at {}", cursor.start());
}

/// A batch given back (held, or retried) is re-inserted with its sequence numbers in the
/// transaction that deleted it, below where the cursor would otherwise be: it is claimed again.
#[sqlx::test(migrator = "crate::MIGRATOR")]
async fn rows_given_back_are_claimed_again(pool: PgPool) {
    fill(&pool, 100).await;
    let mut conn = pool.acquire().await.unwrap();
    let mut cursor = Cursor::default();
    // The first batch is given back in every round but the last; the others are published.
    sqlx::query("BEGIN").execute(&mut *conn).await.unwrap();
    let held = claim(&mut conn, &mut cursor, &ALL, 10).await.unwrap();
    let outcomes: Vec<Outcome> = held.iter().map(|_| Outcome::Held).collect();
    record(&mut conn, &held, &outcomes, false).await.unwrap();
    sqlx::query("COMMIT").execute(&mut *conn).await.unwrap();
    let mut seen = Vec::new();
    loop {
        let claimed = claim_in_tx(&mut conn, &mut cursor, 7, "COMMIT").await;
        if claimed.is_empty() {
            break;
        }
        seen.extend(claimed);
    }
    seen.sort_unstable();
    let first: i64 = held[0].seq;
    assert_eq!(seen, (first..first + 100).collect::<Vec<_>>());
}

/// `TRUNCATE … RESTART IDENTITY` hands out sequence numbers below the cursor again: the claim
/// after the next one finds them.
#[sqlx::test(migrator = "crate::MIGRATOR")]
async fn a_restarted_sequence_sends_the_cursor_back_to_the_start(pool: PgPool) {
    fill(&pool, 50).await;
    let mut conn = pool.acquire().await.unwrap();
    let mut cursor = Cursor::default();
    while !claim_in_tx(&mut conn, &mut cursor, 10, "COMMIT")
        .await
        .is_empty()
    {}
    for _ in 0..4 {
        claim_in_tx(&mut conn, &mut cursor, 10, "COMMIT").await;
    }
    assert_eq!(cursor.start(), 51);
    sqlx::query("TRUNCATE outbox.messages RESTART IDENTITY")
        .execute(&pool)
        .await
        .unwrap();
    fill(&pool, 3).await;
    // This claim still starts at 51 and sees the sequence at 3; the next starts at 0.
    assert!(
        claim_in_tx(&mut conn, &mut cursor, 10, "COMMIT")
            .await
            .is_empty()
    );
    assert_eq!(
        claim_in_tx(&mut conn, &mut cursor, 10, "COMMIT").await,
        vec![1, 2, 3]
    );
}

/// The index the claim's "earlier message of the key not due yet" check (the subquery over alias
/// `e`) reads, from the planner's JSON plan of the claim statement.
async fn index_of_the_key_check(conn: &mut PgConnection) -> Option<String> {
    fn find(node: &serde_json::Value) -> Option<String> {
        if node["Alias"] == "e" {
            return Some(
                node["Index Name"]
                    .as_str()
                    .unwrap_or("(no index)")
                    .to_owned(),
            );
        }
        node["Plans"].as_array()?.iter().find_map(find)
    }
    let (plan,): (serde_json::Value,) = sqlx::query_as(&format!("EXPLAIN (FORMAT JSON) {CLAIM}"))
        .bind(&ALL[..])
        .bind(500_i64)
        .bind(0_i64)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    find(&plan[0]["Plan"])
}

/// Statistics taken while every row was due, then scheduled rows of other keys: to the planner
/// `available_at > now()` then looks like one row, and with plain comparisons it read
/// `messages_pending_due` (every scheduled row in the table, for each candidate: 370 ms for one
/// claim of 500 here) or the primary key (every earlier row). Only the key's own rows that are
/// not due yet need reading.
#[sqlx::test(migrator = "crate::MIGRATOR")]
async fn the_key_check_reads_the_keys_scheduled_rows_whatever_the_statistics(pool: PgPool) {
    sqlx::query("ALTER TABLE outbox.messages SET (autovacuum_enabled = off)")
        .execute(&pool)
        .await
        .unwrap();
    fill(&pool, 2_000).await;
    sqlx::query("ANALYZE outbox.messages")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO outbox.messages (id, topic, key, payload, available_at)
         SELECT gen_random_uuid(), 't', 'later' || (g % 100), '\\x00', now() + interval '1 hour'
         FROM generate_series(1, 3000) g",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    assert_eq!(
        index_of_the_key_check(&mut conn).await.as_deref(),
        Some("messages_pending_key_due")
    );
    let mut cursor = Cursor::default();
    assert_eq!(
        claim_in_tx(&mut conn, &mut cursor, 500, "ROLLBACK").await,
        (1..=500).collect::<Vec<_>>()
    );
}

/// A key whose earlier row is not due holds its later rows; a row not due behind a due one holds
/// nothing before it.
#[sqlx::test(migrator = "crate::MIGRATOR")]
async fn only_an_earlier_row_not_due_holds_its_key(pool: PgPool) {
    sqlx::query(
        "INSERT INTO outbox.messages (id, topic, key, payload, available_at)
         SELECT gen_random_uuid(), 't', k, '\\x00', now() + d * interval '1 hour'
         FROM (VALUES (1, 'a', 1), (2, 'a', 0), (3, 'b', 0), (4, 'b', 1), (5, 'b', 0))
              AS v(n, k, d)
         ORDER BY n",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let mut cursor = Cursor::default();
    assert_eq!(
        claim_in_tx(&mut conn, &mut cursor, 10, "ROLLBACK").await,
        vec![3]
    );
}

/// With no pending row scheduled later, no key can be held: the claim does not look each
/// candidate's key up (a text key's lookup costs several times a timestamp's).
#[sqlx::test(migrator = "crate::MIGRATOR")]
async fn a_backlog_with_nothing_scheduled_skips_the_key_lookups(pool: PgPool) {
    const BLOCKS: &str =
        "SELECT pg_stat_get_xact_blocks_fetched('outbox.messages_pending_key_due'::regclass)";
    fill(&pool, 1_000).await;
    let mut conn = pool.acquire().await.unwrap();
    let mut cursor = Cursor::default();
    let mut tx = conn.begin().await.unwrap();
    let before: i64 = sqlx::query_scalar(BLOCKS)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let claimed = claim(&mut tx, &mut cursor, &ALL, 500).await.unwrap();
    let after: i64 = sqlx::query_scalar(BLOCKS)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(claimed.len(), 500);
    // Planning may read the index's metapage for its height (once per backend, when the
    // relcache has not cached it yet); the per-key lookups would read about one block per
    // candidate (1001 for this backlog).
    assert!(
        after - before <= 2,
        "{} blocks of messages_pending_key_due read",
        after - before
    );
}
