-- Outbox core on SQLite: the messages table the application writes in its own transaction, and the
-- failure table the relay moves undeliverable messages to. SQLite has no schemas, so the tables
-- carry the prefix `outbox_`. Timestamps are INTEGER microseconds since the Unix epoch (UTC): they
-- compare and index as numbers, and the relay computes them from the same clock as the writer
-- (SQLite runs in the application's process).

CREATE TABLE outbox_messages (
    -- Insertion order; per-key publishing order follows it. AUTOINCREMENT so that a sequence number
    -- is never reused after the newest row is deleted. Never used as a high-water mark.
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              BLOB    NOT NULL UNIQUE,
    topic           TEXT    NOT NULL,
    key             TEXT,
    tag             TEXT,
    headers         TEXT    NOT NULL DEFAULT '{}',
    payload         BLOB    NOT NULL,
    created_at      INTEGER NOT NULL,
    available_at    INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    last_attempt_at INTEGER,
    -- Set instead of deleting the row when the relay runs with a retention period.
    sent_at         INTEGER,
    -- SQLite has one writer and no SKIP LOCKED: a relay leases the rows it claims in a short
    -- IMMEDIATE transaction and records their outcome in another, so the write lock is never held
    -- while it publishes. A relay that dies leaves its lease to expire; then any relay takes the rows.
    leased_until    INTEGER,
    lease_owner     TEXT
);

-- The claim's "no earlier pending message with the same key is backing off or leased" check.
CREATE INDEX outbox_messages_pending_key ON outbox_messages (key, seq)
    WHERE sent_at IS NULL AND key IS NOT NULL;

-- Due rows in order, next due time, and the age-of-oldest-due-message metric.
CREATE INDEX outbox_messages_pending_due ON outbox_messages (available_at)
    WHERE sent_at IS NULL;

-- Purging sent rows kept for a retention period.
CREATE INDEX outbox_messages_sent ON outbox_messages (sent_at)
    WHERE sent_at IS NOT NULL;

CREATE TABLE outbox_failures (
    id              BLOB    PRIMARY KEY,
    -- Original outbox sequence number, so a replay keeps the relative order of what it brings back.
    seq             INTEGER NOT NULL,
    topic           TEXT    NOT NULL,
    key             TEXT,
    tag             TEXT,
    headers         TEXT    NOT NULL,
    payload         BLOB    NOT NULL,
    created_at      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL,
    last_error      TEXT    NOT NULL,
    failed_at       INTEGER NOT NULL
);

CREATE INDEX outbox_failures_failed_at ON outbox_failures (failed_at);
CREATE INDEX outbox_failures_topic ON outbox_failures (topic, failed_at);
CREATE INDEX outbox_failures_key ON outbox_failures (key) WHERE key IS NOT NULL;
