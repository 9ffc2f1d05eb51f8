//! Durable storage: the commit log, per-queue index, flush and retention.
