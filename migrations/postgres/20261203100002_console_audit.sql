-- The web console's audit log: one row per write action (replay, purge, redrive) and per sign-in
-- or sign-out, kept across restarts of the sidecar. Written by the console only; the console's
-- Audit page reads it newest first.
CREATE TABLE outbox.console_audit (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    -- The operator: the name given at sign-in, or the bearer token's `X-Console-User`.
    actor   text        NOT NULL,
    -- replay, purge, redrive, sign-in, sign-out.
    action  text        NOT NULL,
    -- What it acted on, e.g. "failure table" or "dead letters of group billing".
    target  text        NOT NULL,
    -- The selection: the filter fields or the number of ids picked; empty when none applies.
    filter  text        NOT NULL DEFAULT '',
    -- Messages touched; NULL for a sign-in.
    count   bigint,
    -- "ok", or what stopped it.
    outcome text        NOT NULL
);

CREATE INDEX console_audit_actor ON outbox.console_audit (actor, id);
CREATE INDEX console_audit_action ON outbox.console_audit (action, id);
