//! A recording publisher that can be told to fail or hang.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use courier_outbox::Message;
use tokio::sync::watch;
use tower::{BoxError, Service};
use uuid::Uuid;

/// Longest any test waits for a condition before it fails; never reached when things work.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// What the recorder does with one publish call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    Accept,
    Fail,
    FailPermanently,
    /// Fails as a broker that cannot be reached does (`Unavailable`).
    Unavailable,
    Hang,
    /// Waits until [`Recorder::open_gate`], then accepts.
    WaitForGate,
}

type Rule = Arc<dyn Fn(&Message) -> Behaviour + Send + Sync>;

/// Records every message it accepts, in order; a rule decides per call whether to accept.
#[derive(Clone)]
pub struct Recorder {
    accepted: Arc<Mutex<Vec<Message>>>,
    calls: Arc<Mutex<HashMap<Uuid, u32>>>,
    rule: Arc<Mutex<Rule>>,
    changed: watch::Sender<usize>,
    gate: watch::Sender<bool>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            accepted: Arc::default(),
            calls: Arc::default(),
            rule: Arc::new(Mutex::new(Arc::new(|_: &Message| Behaviour::Accept))),
            changed: watch::channel(0).0,
            gate: watch::channel(false).0,
        }
    }
}

impl Recorder {
    pub fn set_rule(&self, rule: impl Fn(&Message) -> Behaviour + Send + Sync + 'static) {
        *self.rule.lock().unwrap() = Arc::new(rule);
    }

    /// Lets every publish waiting in [`Behaviour::WaitForGate`] (and every later one) accept.
    pub fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    pub fn accepted(&self) -> Vec<Message> {
        self.accepted.lock().unwrap().clone()
    }

    pub fn accepted_ids(&self) -> Vec<Uuid> {
        self.accepted().iter().map(|m| m.id).collect()
    }

    /// Publish calls made for `id`, accepted or not.
    pub fn calls(&self, id: Uuid) -> u32 {
        self.calls.lock().unwrap().get(&id).copied().unwrap_or(0)
    }

    pub fn total_calls(&self) -> u32 {
        self.calls.lock().unwrap().values().sum()
    }

    /// Waits until `condition` holds, re-checking whenever a publish call is made.
    pub async fn wait_until(&self, what: &str, condition: impl Fn(&Recorder) -> bool) {
        let mut changed = self.changed.subscribe();
        let waiting = async {
            while !condition(self) {
                changed.changed().await.unwrap();
            }
        };
        if tokio::time::timeout(PATIENCE, waiting).await.is_err() {
            panic!(
                "gave up waiting for {what}: {} accepted, {} calls",
                self.accepted().len(),
                self.total_calls()
            );
        }
    }

    pub async fn wait_for_accepted(&self, count: usize) {
        self.wait_until(&format!("{count} accepted messages"), |r| {
            r.accepted().len() >= count
        })
        .await;
    }
}

impl Service<Message> for Recorder {
    type Response = ();
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, message: Message) -> Self::Future {
        let behaviour = (self.rule.lock().unwrap())(&message);
        *self.calls.lock().unwrap().entry(message.id).or_default() += 1;
        let this = self.clone();
        Box::pin(async move {
            let result = match behaviour {
                Behaviour::Accept => {
                    this.accepted.lock().unwrap().push(message);
                    Ok(())
                }
                Behaviour::Fail => Err("injected failure".into()),
                Behaviour::FailPermanently => {
                    Err(courier_outbox::Permanent::new("injected permanent failure").into())
                }
                Behaviour::Unavailable => Err(courier_outbox::Unavailable::new(
                    std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
                )
                .into()),
                Behaviour::WaitForGate => {
                    this.changed.send_modify(|n| *n += 1);
                    let mut gate = this.gate.subscribe();
                    gate.wait_for(|open| *open).await.unwrap();
                    this.accepted.lock().unwrap().push(message);
                    Ok(())
                }
                Behaviour::Hang => {
                    this.changed.send_modify(|n| *n += 1);
                    std::future::pending::<()>().await;
                    unreachable!()
                }
            };
            this.changed.send_modify(|n| *n += 1);
            result
        })
    }
}
