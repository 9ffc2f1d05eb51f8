-- outbox.messages is a queue: every published row is deleted, so the table and its indexes fill
-- with dead entries at the rate messages flow. The default trigger for autovacuum is a share of the
-- table (20% dead, plus 50 rows), which on a large backlog lets hundreds of thousands of dead
-- entries pile up before a vacuum, and waits longest exactly when the backlog is largest. Scans
-- that start below them pay for every one: with 200k deleted rows not yet vacuumed, the first
-- claim took 156 ms and later ones 8.6 ms, against 4.7 ms on a clean table. A fixed threshold
-- (no scale factor), as PGMQ, graphile-worker and Que advise for their queue tables, vacuums after
-- every 10,000 deleted rows whatever the table's size.
--
-- The relay's claim no longer depends on it while it drains (it starts past the rows it deleted,
-- see outbox/src/store/postgres/claim/cursor.rs), but a pending row that waits (a retry backing
-- off, a scheduled message) holds that cursor, and the other scans of the table (backlog, next due
-- time, retention purge) have no cursor at all. Autovacuum still wakes up at most once per
-- `autovacuum_naptime` (1 minute by default) per database; this setting decides only how much
-- dead space is enough once it looks.
ALTER TABLE outbox.messages SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 10000
);
