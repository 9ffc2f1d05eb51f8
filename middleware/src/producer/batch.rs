//! The send timeout and the send retry on batches ([`PublishBatch`]): the same meaning per
//! message as on single sends.

use std::collections::HashSet;

use courier_core::Message;
use courier_core::batch::{BatchFuture, NotAttempted, Outcomes, PublishBatch, fail_all};
use tower::BoxError;

use crate::{Disposition, Elapsed, LocalRetry, SendTimeout};

/// The timeout bounds the whole batch call: when it runs out, every message of the batch failed
/// with [`Elapsed`] (retryable), as a single send would.
impl<S: PublishBatch> PublishBatch for SendTimeout<S> {
    type Response = S::Response;

    fn publish_batch(&mut self, messages: Vec<Message>) -> BatchFuture<S::Response> {
        let count = messages.len();
        let timeout = self.timeout();
        let call = self.get_mut().publish_batch(messages);
        Box::pin(async move {
            match tokio::time::timeout(timeout, call).await {
                Ok(outcomes) => outcomes,
                Err(_) => fail_all(Elapsed::new(timeout).into(), count),
            }
        })
    }
}

/// Retries only what failed: after each call, the failed messages whose error is retryable (a
/// plain error, not `Permanent` nor a `Retry` with its own delay) go again after the backoff,
/// with the later messages of their key, which may not overtake them. A message not sent
/// because its broker was unavailable ([`NotAttempted`]) goes again too; one held behind a
/// failure that is final stays unsent. The last outcome of each message is the answer.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use courier_core::Message;
/// use courier_core::batch::{BatchFuture, PublishBatch};
/// use courier_middleware::{LocalRetry, LocalRetryPolicy};
/// use std::sync::{Arc, atomic::{AtomicUsize, Ordering}};
///
/// /// Fails message "b" on its first call.
/// #[derive(Clone, Default)]
/// struct Flaky(Arc<AtomicUsize>);
/// impl PublishBatch for Flaky {
///     type Response = ();
///     fn publish_batch(&mut self, messages: Vec<Message>) -> BatchFuture<()> {
///         let first = self.0.fetch_add(1, Ordering::SeqCst) == 0;
///         Box::pin(async move {
///             messages.iter().map(|m| if first && m.payload == "b" { Err("glitch".into()) } else { Ok(()) }).collect()
///         })
///     }
/// }
///
/// let calls = Flaky::default();
/// let mut publisher = LocalRetry::new(calls.clone(), LocalRetryPolicy::new(2));
/// let outcomes = publisher.publish_batch(vec![Message::new("t", "a"), Message::new("t", "b")]).await;
/// assert!(outcomes.iter().all(Result::is_ok));
/// assert_eq!(calls.0.load(Ordering::SeqCst), 2);
/// # }
/// ```
impl<S> PublishBatch for LocalRetry<S>
where
    S: PublishBatch + Clone + Send + 'static,
{
    type Response = S::Response;

    fn publish_batch(&mut self, messages: Vec<Message>) -> BatchFuture<S::Response> {
        let mut service = self.get_ref().clone();
        let policy = *self.policy();
        Box::pin(async move {
            let mut outcomes: Vec<Option<Result<S::Response, BoxError>>> =
                messages.iter().map(|_| None).collect();
            let mut pending: Vec<(usize, Message)> = messages.into_iter().enumerate().collect();
            let mut retries = 0;
            loop {
                let batch: Vec<Message> = pending.iter().map(|(_, m)| m.clone()).collect();
                let results = complete(service.publish_batch(batch).await, pending.len());
                let again = sort_out(pending, results, retries < policy.retries, &mut outcomes);
                if again.is_empty() {
                    break;
                }
                retries += 1;
                let delay = policy.backoff.delay(retries);
                tracing::debug!(
                    failed = again.len(),
                    retry = retries,
                    ?delay,
                    "batch send: retrying the failed messages"
                );
                tokio::time::sleep(delay).await;
                pending = again;
            }
            outcomes
                .into_iter()
                .map(|outcome| outcome.expect("every message has an outcome"))
                .collect()
        })
    }
}

/// Exactly `count` outcomes: a publisher that answered another number failed the whole call.
fn complete<R>(outcomes: Outcomes<R>, count: usize) -> Outcomes<R> {
    if outcomes.len() == count {
        outcomes
    } else {
        fail_all(
            format!(
                "the batch publisher answered {} outcomes for {count} messages",
                outcomes.len()
            )
            .into(),
            count,
        )
    }
}

/// Records the final outcomes and returns what goes again (in batch order).
fn sort_out<R>(
    pending: Vec<(usize, Message)>,
    results: Outcomes<R>,
    may_retry: bool,
    outcomes: &mut [Option<Result<R, BoxError>>],
) -> Vec<(usize, Message)> {
    // Keys with a message going again (their later messages follow it), and keys whose failure
    // is final (their later messages stay as they are).
    let mut retrying: HashSet<String> = HashSet::new();
    let mut stopped: HashSet<String> = HashSet::new();
    let mut again = Vec::new();
    for ((index, message), result) in pending.into_iter().zip(results) {
        let key = message.key.clone();
        let in_set = |set: &HashSet<String>| key.as_ref().is_some_and(|k| set.contains(k));
        if in_set(&stopped) {
            outcomes[index] = Some(result);
            continue;
        }
        if in_set(&retrying) {
            again.push((index, message));
            continue;
        }
        let retry = match &result {
            Ok(_) => false,
            Err(error) => {
                may_retry
                    && (NotAttempted::is_not_attempted(error.as_ref())
                        || Disposition::of_error(error.as_ref())
                            == (Disposition::Redeliver { after: None }))
            }
        };
        if retry {
            retrying.extend(key);
            again.push((index, message));
            continue;
        }
        if result.is_err() {
            stopped.extend(key);
        }
        outcomes[index] = Some(result);
    }
    again
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalRetryPolicy;
    use courier_core::Permanent;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// Answers each message by its payload and records every call's payloads.
    #[derive(Clone, Default)]
    struct Script {
        calls: Arc<Mutex<Vec<Vec<String>>>>,
    }

    impl PublishBatch for Script {
        type Response = ();
        fn publish_batch(&mut self, messages: Vec<Message>) -> BatchFuture<()> {
            let bodies: Vec<String> = messages
                .iter()
                .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
                .collect();
            let first = {
                let mut calls = self.calls.lock().unwrap();
                calls.push(bodies.clone());
                calls.len() == 1
            };
            Box::pin(async move {
                bodies
                    .iter()
                    .map(|body| match body.as_str() {
                        "glitch" if first => Err("glitch".into()),
                        "permanent" => Err(Permanent::new("too large").into()),
                        _ => Ok(()),
                    })
                    .collect()
            })
        }
    }

    fn keyed(key: &str, body: &str) -> Message {
        Message::new("t", body.to_owned()).with_key(key)
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_failed_messages_and_their_followers_go_again() {
        let script = Script::default();
        let mut retry = LocalRetry::new(script.clone(), LocalRetryPolicy::new(2));
        let batch = vec![
            keyed("a", "a1"),
            keyed("b", "glitch"),
            keyed("c", "permanent"),
            keyed("b", "b2"),
            keyed("c", "c2"),
            keyed("d", "d1"),
        ];
        let outcomes = retry.publish_batch(batch).await;
        let calls = script.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert_eq!(calls[1], ["glitch", "b2"], "only b's messages go again");
        assert!(outcomes[0].is_ok() && outcomes[1].is_ok() && outcomes[3].is_ok());
        assert!(Permanent::is_permanent(
            outcomes[2].as_ref().unwrap_err().as_ref()
        ));
        assert!(outcomes[5].is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_that_outlives_the_send_timeout_fails_every_message() {
        #[derive(Clone)]
        struct Stuck;
        impl PublishBatch for Stuck {
            type Response = ();
            fn publish_batch(&mut self, _: Vec<Message>) -> BatchFuture<()> {
                Box::pin(std::future::pending())
            }
        }
        let mut timeout = SendTimeout::new(Stuck, Duration::from_secs(3));
        let outcomes = timeout
            .publish_batch(vec![Message::new("t", "a"), Message::new("t", "b")])
            .await;
        for outcome in outcomes {
            let error = outcome.unwrap_err();
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
            let mut found = false;
            while let Some(e) = source {
                found |= e.is::<Elapsed>();
                source = e.source();
            }
            assert!(found, "{error}");
        }
    }
}
