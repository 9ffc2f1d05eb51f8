-- The web console's audit log: one row per write action (replay, purge, redrive) and per sign-in
-- or sign-out. `at` is INTEGER microseconds since the Unix epoch (UTC), like the outbox's
-- timestamps on SQLite. (The `outbox-relay` sidecar serves Postgres and MySQL; the table is here
-- so that the schema is the same on every store.)
CREATE TABLE outbox_console_audit (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    -- The operator: the name given at sign-in, or the bearer token's `X-Console-User`.
    actor   TEXT    NOT NULL,
    -- replay, purge, redrive, sign-in, sign-out.
    action  TEXT    NOT NULL,
    -- What it acted on, e.g. "failure table" or "dead letters of group billing".
    target  TEXT    NOT NULL,
    -- The selection: the filter fields or the number of ids picked; empty when none applies.
    filter  TEXT    NOT NULL DEFAULT '',
    -- Messages touched; NULL for a sign-in.
    count   INTEGER,
    -- "ok", or what stopped it.
    outcome TEXT    NOT NULL
);

CREATE INDEX outbox_console_audit_actor ON outbox_console_audit (actor, id);
CREATE INDEX outbox_console_audit_action ON outbox_console_audit (action, id);
