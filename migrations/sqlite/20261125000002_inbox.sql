-- Consumer side (courier-middleware) on SQLite: idempotency records and the durable inbox. Tables
-- carry the prefix `courier_inbox_` (SQLite has no schemas); timestamps are INTEGER microseconds
-- since the Unix epoch (UTC), as in the outbox tables.

-- One row per (consumer group, message id or idempotency key) whose handler committed, written in
-- the handler's own transaction (safeguard C7). SQLite serialises writers, so a second delivery of
-- the same key begins its transaction after the first ended and finds the row, or inserts it when
-- the first rolled back.
CREATE TABLE courier_inbox_processed (
    consumer_group  TEXT    NOT NULL,
    key             TEXT    NOT NULL,
    processed_at    INTEGER NOT NULL,
    PRIMARY KEY (consumer_group, key)
) WITHOUT ROWID;

-- Purging records older than the deduplication window.
CREATE INDEX courier_inbox_processed_processed_at ON courier_inbox_processed (processed_at);

-- Durable inbox (safeguard C4): deliveries stored, then acked at once, then processed by a worker.
-- A row stays after processing (done_at set) until purged, so a redelivery of a processed message
-- is still recognised and not stored again.
CREATE TABLE courier_inbox_messages (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    consumer_group  TEXT    NOT NULL,
    id              BLOB    NOT NULL,
    topic           TEXT    NOT NULL,
    key             TEXT,
    tag             TEXT,
    headers         TEXT    NOT NULL DEFAULT '{}',
    payload         BLOB    NOT NULL,
    created_at      INTEGER NOT NULL,
    queue           TEXT,
    received_at     INTEGER NOT NULL,
    -- A worker claims a row by counting the attempt and moving available_at past a lease, in a
    -- short transaction of its own, as on Postgres.
    available_at    INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    done_at         INTEGER,
    UNIQUE (consumer_group, id)
);

-- The worker's claim: due, unfinished rows of one group, oldest first.
CREATE INDEX courier_inbox_messages_due ON courier_inbox_messages (consumer_group, available_at, seq)
    WHERE done_at IS NULL;

-- Purging processed rows.
CREATE INDEX courier_inbox_messages_done ON courier_inbox_messages (done_at)
    WHERE done_at IS NOT NULL;

-- Inbox rows that failed their last attempt, with the last error; can be listed, replayed, purged.
CREATE TABLE courier_inbox_dead_letters (
    consumer_group  TEXT    NOT NULL,
    id              BLOB    NOT NULL,
    topic           TEXT    NOT NULL,
    key             TEXT,
    tag             TEXT,
    headers         TEXT    NOT NULL,
    payload         BLOB    NOT NULL,
    created_at      INTEGER NOT NULL,
    queue           TEXT,
    received_at     INTEGER NOT NULL,
    attempts        INTEGER NOT NULL,
    last_error      TEXT    NOT NULL,
    failed_at       INTEGER NOT NULL,
    PRIMARY KEY (consumer_group, id)
);
