//! One delivery: call the handler, then ack, nack or dead-letter.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use tower::{BoxError, Service, ServiceExt};

use super::Config;
use crate::{Delivery, DeliverySource, Disposition, NackOutcome, Panicked, Pulled};

pub(super) async fn handle<S, H>(source: &S, handler: H, item: Pulled<S::Receipt>, config: &Config)
where
    S: DeliverySource,
    H: Service<Delivery> + Clone,
    H::Error: Into<BoxError>,
{
    let Pulled {
        mut delivery,
        receipt,
    } = item;
    let id = delivery.message.id;
    let group = delivery.group.clone();
    let (disposition, reason, attempt) = loop {
        let attempt = delivery.attempt;
        let result = call(handler.clone(), delivery.clone(), config.consume_timeout).await;
        let (disposition, reason) = match &result {
            Ok(()) => (Disposition::Ack, None),
            Err(error) => (
                Disposition::of_error(error.as_ref()),
                Some(error.to_string()),
            ),
        };
        let disposition = match disposition {
            // The last allowed delivery failed: dead-letter instead of asking for another (C8).
            Disposition::Redeliver { .. } if attempt >= config.max_deliveries => {
                Disposition::DeadLetter
            }
            other => other,
        };
        match disposition {
            // Ordered mode retries in place, holding the key, so that later messages of the key
            // cannot overtake this one (RocketMQ's SUSPEND_CURRENT_QUEUE_A_MOMENT).
            Disposition::Redeliver { after } if config.ordered => {
                let pause = after.unwrap_or_else(|| config.ordered_backoff.delay(attempt));
                tracing::debug!(message.id = %id, attempt, ?pause, reason = reason.as_deref(),
                    "ordered delivery failed; retrying in place");
                metrics::counter!("courier_consumer_redeliveries_total", "group" => group.clone())
                    .increment(1);
                tokio::time::sleep(pause).await;
                delivery.attempt = attempt + 1;
            }
            _ => break (disposition, reason, attempt),
        }
    };
    let labels = [("group", group)];
    let settled = match disposition {
        Disposition::Ack => source.ack(receipt).await.map(|()| {
            metrics::counter!("courier_consumer_acks_total", &labels).increment(1);
        }),
        Disposition::DeadLetter => {
            let reason = reason.unwrap_or_default();
            tracing::warn!(message.id = %id, attempt, %reason, "dead-lettering the delivery");
            source.dead_letter(receipt, reason).await.map(|()| {
                metrics::counter!("courier_consumer_dead_letters_total", &labels).increment(1);
            })
        }
        Disposition::Redeliver { after } => source.nack(receipt, after).await.map(|outcome| {
            let name = match outcome {
                NackOutcome::DeadLettered => "courier_consumer_dead_letters_total",
                NackOutcome::Redelivered => "courier_consumer_redeliveries_total",
            };
            tracing::debug!(message.id = %id, attempt, ?after, ?outcome, reason = reason.as_deref(),
                "delivery nacked");
            metrics::counter!(name, &labels).increment(1);
        }),
    };
    if let Err(error) = settled {
        let error: BoxError = error.into();
        tracing::warn!(message.id = %id, %error, outcome = disposition.as_str(),
            "settling the delivery failed; the broker will redeliver it");
        metrics::counter!("courier_consumer_settle_failures_total", &labels).increment(1);
    }
}

/// Calls the handler once, turning a panic or the consume timeout into an error; the response
/// is not needed.
async fn call<H>(handler: H, delivery: Delivery, timeout: Duration) -> Result<(), BoxError>
where
    H: Service<Delivery>,
    H::Error: Into<BoxError>,
{
    let call = crate::ConsumeTimeout::new(handler, timeout).oneshot(delivery);
    match AssertUnwindSafe(call).catch_unwind().await {
        Ok(result) => result.map(drop),
        Err(payload) => Err(BoxError::from(Panicked::from_payload(payload.as_ref()))),
    }
}
