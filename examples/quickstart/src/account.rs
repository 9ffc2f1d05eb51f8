//! The account the quickstart prints, and the facts it waits for.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// What has happened so far.
#[derive(Debug, Default, Clone)]
pub(crate) struct Story {
    pub(crate) paid: BTreeSet<String>,
    pub(crate) duplicates: u32,
    /// Messages the broker holds as dead letters of the payment group.
    pub(crate) dead_letters: u64,
}

/// Prints timestamped lines and keeps the [`Story`] for the main flow to wait on.
#[derive(Debug, Clone)]
pub(crate) struct Account {
    started: Instant,
    story: Arc<watch::Sender<Story>>,
}

impl Account {
    pub(crate) fn new() -> Self {
        Self {
            started: Instant::now(),
            story: Arc::new(watch::channel(Story::default()).0),
        }
    }

    pub(crate) fn heading(&self, text: &str) {
        println!("\n{text}");
    }

    pub(crate) fn line(&self, text: &str) {
        let at = self.started.elapsed().as_millis();
        println!("  {at:>5} ms  {text}");
    }

    pub(crate) fn record(&self, change: impl FnOnce(&mut Story)) {
        self.story.send_modify(change);
    }

    /// Waits until `done` holds, or fails after `patience` naming what it waited for.
    pub(crate) async fn wait_until(
        &self,
        patience: Duration,
        what: &str,
        done: impl Fn(&Story) -> bool,
    ) -> anyhow::Result<()> {
        let mut story = self.story.subscribe();
        match tokio::time::timeout(patience, story.wait_for(|s| done(s))).await {
            Ok(Ok(_)) => Ok(()),
            _ => anyhow::bail!(
                "waited {patience:?} for {what}; so far: {:?}",
                *self.story.borrow()
            ),
        }
    }
}
