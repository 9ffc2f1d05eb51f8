-- Consumer side (courier-middleware) on MySQL 8 / MariaDB 10.6+: idempotency records and the
-- durable inbox. Tables carry the prefix `courier_inbox_` in the pool's database (a MySQL schema is
-- a database), as on SQLite.
--
-- Types: message ids are BINARY(16) (UUID bytes), payloads LONGBLOB, headers a JSON object as
-- LONGTEXT, times DATETIME(6) in UTC (the middleware compares with the server's UTC_TIMESTAMP(6),
-- so neither the session's time zone nor the workers' clocks matter).
--
-- Consumer groups and idempotency keys are VARBINARY: they are compared byte for byte, as on the
-- other stores. A character column would compare them by its collation: with a case-insensitive
-- one 'Order-1' and 'order-1' would be one key, and even the `_bin` collations are PAD SPACE
-- ('k' = 'k '), so two different messages could be taken for duplicates and one of them acked
-- without being handled. The middleware refuses a group longer than 255 bytes and a key longer
-- than 2048 bytes instead of letting the server truncate them (which a non-strict `sql_mode` does).
-- `key` is a reserved word in MySQL, hence the backquotes.

-- One row per (consumer group, message id or idempotency key) whose handler committed, written
-- first in the handler's own transaction (safeguard C7). A second delivery of the same key that
-- arrives while the first one's transaction is open waits on the primary key (the first one's
-- insert holds the record lock) until that transaction ends, then fails with a duplicate key
-- (the first committed: acked without running the handler) or inserts the row (it rolled back).
CREATE TABLE courier_inbox_processed (
    consumer_group  VARBINARY(255)  NOT NULL,
    `key`           VARBINARY(2048) NOT NULL,
    processed_at    DATETIME(6)     NOT NULL,
    PRIMARY KEY (consumer_group, `key`),
    -- Purging records older than the deduplication window, in small batches.
    KEY courier_inbox_processed_processed_at (processed_at)
) ENGINE = InnoDB;

-- Durable inbox (safeguard C4): deliveries stored, then acked at once, then processed by a worker.
-- A row stays after processing (done_at set) until purged, so a redelivery of a processed message
-- is still recognised and not stored again.
CREATE TABLE courier_inbox_messages (
    seq             BIGINT          NOT NULL AUTO_INCREMENT PRIMARY KEY,
    consumer_group  VARBINARY(255)  NOT NULL,
    id              BINARY(16)      NOT NULL,
    topic           TEXT            CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    `key`           TEXT            CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
    tag             TEXT            CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
    headers         LONGTEXT        CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    payload         LONGBLOB        NOT NULL,
    created_at      DATETIME(6)     NOT NULL,
    queue           TEXT            CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
    received_at     DATETIME(6)     NOT NULL,
    -- A worker claims a row by counting the attempt and moving available_at past a lease, in a
    -- short READ COMMITTED transaction of its own (`FOR UPDATE SKIP LOCKED`, then an UPDATE by
    -- primary key: neither MySQL 8 nor MariaDB has UPDATE ... RETURNING).
    available_at    DATETIME(6)     NOT NULL,
    attempts        INT             NOT NULL DEFAULT 0,
    last_error      LONGTEXT        CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
    done_at         DATETIME(6),
    UNIQUE KEY courier_inbox_messages_group_id (consumer_group, id),
    -- The worker's claim: due, unfinished rows of one group, oldest first. MySQL has no partial
    -- indexes: `done_at IS NULL` is an equality on the second column, so the unfinished rows of a
    -- group are one range ordered by (available_at, seq).
    KEY courier_inbox_messages_due (consumer_group, done_at, available_at),
    -- Purging processed rows.
    KEY courier_inbox_messages_done (done_at)
) ENGINE = InnoDB;

-- Inbox rows that failed their last attempt, with the last error; can be listed, replayed, purged.
CREATE TABLE courier_inbox_dead_letters (
    consumer_group  VARBINARY(255)  NOT NULL,
    id              BINARY(16)      NOT NULL,
    topic           TEXT            CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    `key`           TEXT            CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
    tag             TEXT            CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
    headers         LONGTEXT        CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    payload         LONGBLOB        NOT NULL,
    created_at      DATETIME(6)     NOT NULL,
    queue           TEXT            CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
    received_at     DATETIME(6)     NOT NULL,
    attempts        INT             NOT NULL,
    last_error      LONGTEXT        CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    failed_at       DATETIME(6)     NOT NULL,
    PRIMARY KEY (consumer_group, id),
    KEY courier_inbox_dead_letters_failed_at (consumer_group, failed_at)
) ENGINE = InnoDB;
