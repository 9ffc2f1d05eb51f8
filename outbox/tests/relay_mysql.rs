//! What only the MySQL store does.

mod common;
