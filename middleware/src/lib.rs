//! Tower layers for reliable producers and consumers.
//!
//! Work in progress: see issue 4.
