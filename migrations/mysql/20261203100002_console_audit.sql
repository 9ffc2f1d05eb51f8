-- The web console's audit log: one row per write action (replay, purge, redrive) and per sign-in
-- or sign-out, kept across restarts of the sidecar. Written by the console only; the console's
-- Audit page reads it newest first. `at` is DATETIME(6) in UTC, like the outbox's timestamps.
-- The text columns use the default (case-insensitive) utf8mb4 collation: they are read as text,
-- and the page's actor filter ignores case on every store.
CREATE TABLE outbox_console_audit (
    id      BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    at      DATETIME(6)  NOT NULL,
    -- The operator: the name given at sign-in, or the bearer token's `X-Console-User`.
    actor   VARCHAR(255) CHARACTER SET utf8mb4 NOT NULL,
    -- replay, purge, redrive, sign-in, sign-out.
    action  VARCHAR(32)  CHARACTER SET utf8mb4 NOT NULL,
    -- What it acted on, e.g. "failure table" or "dead letters of group billing".
    target  TEXT         CHARACTER SET utf8mb4 NOT NULL,
    -- The selection: the filter fields or the number of ids picked; empty when none applies.
    filter  TEXT         CHARACTER SET utf8mb4 NOT NULL,
    -- Messages touched; NULL for a sign-in.
    count   BIGINT,
    -- "ok", or what stopped it.
    outcome TEXT         CHARACTER SET utf8mb4 NOT NULL,
    KEY outbox_console_audit_actor (actor, id),
    KEY outbox_console_audit_action (action, id)
);
