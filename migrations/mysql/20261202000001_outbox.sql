-- Outbox core on MySQL 8 / MariaDB 10.6+: the messages table the application writes in its own
-- transaction, the failure table the relay moves undeliverable messages to, and the one-row table
-- that gives relays their turn to claim. A MySQL "schema" is a database, so the tables carry the
-- prefix `outbox_` in the pool's database, as on SQLite.
--
-- Types: ids are BINARY(16) (UUID bytes), payloads LONGBLOB (MariaDB's JSON is LONGTEXT and is
-- decoded unreliably, so nothing binary goes through it), headers a JSON object as LONGTEXT.
-- Timestamps are DATETIME(6) in UTC: the writer stores the message's own UTC time, the relay
-- compares with UTC_TIMESTAMP(6) of the server, so neither the session's time zone nor the clocks
-- of the relays' machines matter. Keys, tags and topics compare byte for byte (`_bin`
-- collations), as on the other stores: 'Order-1' and 'order-1' are different keys.
-- `key` is a reserved word in MySQL, hence the backquotes.

CREATE TABLE outbox_messages (
    -- Insertion order; per-key publishing order follows it. Never used as a high-water mark: a
    -- transaction that commits late with a lower seq is still claimed.
    seq             BIGINT        NOT NULL AUTO_INCREMENT PRIMARY KEY,
    id              BINARY(16)    NOT NULL,
    topic           VARCHAR(255)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    `key`           VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
    tag             VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
    headers         LONGTEXT      CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    payload         LONGBLOB      NOT NULL,
    created_at      DATETIME(6)   NOT NULL,
    available_at    DATETIME(6)   NOT NULL,
    attempts        INT           NOT NULL DEFAULT 0,
    last_error      TEXT          CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
    last_attempt_at DATETIME(6),
    -- Set instead of deleting the row when the relay runs with a retention period.
    sent_at         DATETIME(6),
    -- A relay leases the rows it claims (by primary key, in a short READ COMMITTED transaction)
    -- and records their outcome in another, so no row lock is held while it publishes. A relay
    -- that dies leaves its lease to expire; then any relay takes the rows.
    leased_until    DATETIME(6),
    lease_owner     VARCHAR(200)  CHARACTER SET ascii COLLATE ascii_bin,
    UNIQUE KEY outbox_messages_id (id),
    -- The claim's "no earlier pending message with the same key is backing off or leased" check
    -- (a prefix: InnoDB keys are at most 3072 bytes; equal prefixes are then compared in full).
    KEY outbox_messages_pending_key (`key`(255), seq),
    -- Pending rows by due time (sent_at IS NULL first): next due time and the age metric.
    -- MySQL has no partial indexes; sent rows kept for a retention period sort apart.
    KEY outbox_messages_due (sent_at, available_at),
    -- Renewing and recording a lease.
    KEY outbox_messages_lease (lease_owner)
) ENGINE = InnoDB;

CREATE TABLE outbox_failures (
    id              BINARY(16)    NOT NULL PRIMARY KEY,
    -- Original outbox sequence number, so a replay keeps the relative order of what it brings back.
    seq             BIGINT        NOT NULL,
    topic           VARCHAR(255)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    `key`           VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
    tag             VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
    headers         LONGTEXT      CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    payload         LONGBLOB      NOT NULL,
    created_at      DATETIME(6)   NOT NULL,
    attempts        INT           NOT NULL,
    last_error      TEXT          CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    failed_at       DATETIME(6)   NOT NULL,
    KEY outbox_failures_failed_at (failed_at),
    KEY outbox_failures_topic (topic, failed_at),
    KEY outbox_failures_key (`key`(255))
) ENGINE = InnoDB;

-- Relays take turns to claim: each claim transaction first locks this row, so two relays never
-- pick candidates from the same snapshot (which could split one key's rows between them and break
-- per-key order). The turn lasts one short claim statement; publishing happens outside it, and the
-- application's inserts never touch this table.
CREATE TABLE outbox_claim_turn (
    id TINYINT NOT NULL PRIMARY KEY
) ENGINE = InnoDB;

INSERT INTO outbox_claim_turn (id) VALUES (1);
