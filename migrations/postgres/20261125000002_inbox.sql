-- Consumer side (courier-middleware): idempotency records and the durable inbox, in their own schema.

CREATE SCHEMA IF NOT EXISTS courier_inbox;

-- One row per (consumer group, message id or idempotency key) whose handler committed. Written in
-- the handler's own transaction, so the record exists if and only if the handler's writes do
-- (safeguard C7). A second delivery of the same key blocks on the primary key until the first
-- transaction ends, then either finds the row (duplicate, acked without running the handler) or
-- inserts it (the first rolled back).
CREATE TABLE courier_inbox.processed (
    consumer_group  text        NOT NULL,
    key             text        NOT NULL,
    processed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, key)
);

-- Purging records older than the deduplication window.
CREATE INDEX processed_processed_at ON courier_inbox.processed (processed_at);

-- Durable inbox (safeguard C4): deliveries stored, then acked at once, then processed by a worker.
-- A row stays after processing (done_at set) until purged, so a redelivery of a processed message
-- is still recognised and not stored again.
CREATE TABLE courier_inbox.messages (
    seq             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer_group  text        NOT NULL,
    id              uuid        NOT NULL,
    topic           text        NOT NULL,
    key             text,
    tag             text,
    headers         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    payload         bytea       NOT NULL,
    created_at      timestamptz NOT NULL,
    queue           text,
    received_at     timestamptz NOT NULL DEFAULT now(),
    available_at    timestamptz NOT NULL DEFAULT now(),
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text,
    done_at         timestamptz,
    UNIQUE (consumer_group, id)
);

-- The worker's claim: due, unfinished rows of one group, oldest first.
CREATE INDEX messages_due ON courier_inbox.messages (consumer_group, available_at, seq)
    WHERE done_at IS NULL;

-- Purging processed rows.
CREATE INDEX messages_done ON courier_inbox.messages (done_at)
    WHERE done_at IS NOT NULL;

-- Inbox rows that failed their last attempt, with the last error; can be listed, replayed, purged.
CREATE TABLE courier_inbox.dead_letters (
    consumer_group  text        NOT NULL,
    id              uuid        NOT NULL,
    topic           text        NOT NULL,
    key             text,
    tag             text,
    headers         jsonb       NOT NULL,
    payload         bytea       NOT NULL,
    created_at      timestamptz NOT NULL,
    queue           text,
    received_at     timestamptz NOT NULL,
    attempts        integer     NOT NULL,
    last_error      text        NOT NULL,
    failed_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, id)
);

-- Wakes idle inbox workers when rows arrive (delivered on commit, folded per transaction); the
-- payload is the consumer group.
CREATE FUNCTION courier_inbox.notify_workers() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('courier_inbox', NEW.consumer_group);
    RETURN NULL;
END;
$$;

CREATE TRIGGER messages_notify_workers
    AFTER INSERT ON courier_inbox.messages
    FOR EACH ROW EXECUTE FUNCTION courier_inbox.notify_workers();
