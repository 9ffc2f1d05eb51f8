//! Transactional outbox.
