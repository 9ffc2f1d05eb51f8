//! One delivery in flight per ordering key: each delivery waits for the previous one of its key.

use std::collections::HashMap;

use tokio::sync::oneshot;

/// The last delivery handed out per key, as a receiver that completes (with an error) when that
/// delivery's task drops its sender.
#[derive(Debug, Default)]
pub(super) struct Chains {
    last: HashMap<String, oneshot::Receiver<()>>,
}

/// Dropped when a delivery is settled; releases the next delivery of its key.
pub(super) type Done = oneshot::Sender<()>;

impl Chains {
    /// Appends a delivery to `key`'s chain: what to wait for, and what to drop when done.
    pub(super) fn link(&mut self, key: &str) -> (Option<oneshot::Receiver<()>>, Done) {
        if self.last.len() > 1024 {
            // Forget keys whose last delivery has finished.
            self.last.retain(|_, previous| {
                matches!(
                    previous.try_recv(),
                    Err(oneshot::error::TryRecvError::Empty)
                )
            });
        }
        let (done, next) = oneshot::channel();
        (self.last.insert(key.to_owned(), next), done)
    }
}
