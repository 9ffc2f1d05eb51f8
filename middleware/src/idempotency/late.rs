//! [`LateDelivery`]: a delivery of a message older than the idempotency window, refused instead
//! of handled.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::Delivery;

/// Records are purged this much later than the window says: an allowance for the difference
/// between the clock that stamped the message's creation (the producer's) and the one that stamps
/// and purges the records (the consumer's database), so that a message still inside its window
/// never finds its record already gone.
pub(crate) const CLOCK_ALLOWANCE: Duration = Duration::from_secs(3600);

/// Why the idempotency layer refused a delivery: its message is older than the window, and no
/// record of it was found. Records live only for the window, so the message may have been
/// handled already and its record purged since; running the handler could repeat its effect
/// unnoticed. The layer dead-letters such a delivery instead (the error is wrapped in a
/// [`Reject`](crate::Reject)), and logs it.
///
/// What to do with it: check whether its effect exists. To handle it anyway, lengthen the window
/// ([`IdempotencyLayer::window`](crate::IdempotencyLayer::window)) past its age and redrive it.
///
/// ```
/// use courier_middleware::{Disposition, LateDelivery};
///
/// # fn example(error: tower::BoxError) {
/// if let Some(late) = std::error::Error::source(error.as_ref())
///     .and_then(|source| source.downcast_ref::<LateDelivery>())
/// {
///     println!("{} was {:?} old", late.message_id(), late.age());
///     assert_eq!(Disposition::of_error(error.as_ref()), Disposition::DeadLetter);
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateDelivery {
    message_id: Uuid,
    group: String,
    since: DateTime<Utc>,
    age: Duration,
    window: Duration,
}

impl LateDelivery {
    /// `Some` when `delivery`'s message is older than `window` at `now`. The age counts from the
    /// message's creation, or from its due time when the delivery carries one that is later
    /// (a delayed message); a creation time ahead of `now` (clock skew) counts as age zero.
    pub(crate) fn check(delivery: &Delivery, window: Duration, now: DateTime<Utc>) -> Option<Self> {
        let message = &delivery.message;
        let since = message
            .available_at
            .map_or(message.created_at, |due| due.max(message.created_at));
        let age = (now - since).to_std().unwrap_or_default();
        (age > window).then(|| Self {
            message_id: message.id,
            group: delivery.group.clone(),
            since,
            age,
            window,
        })
    }

    /// The message's id.
    ///
    /// ```no_run
    /// # fn example(late: courier_middleware::LateDelivery) {
    /// println!("{}", late.message_id());
    /// # }
    /// ```
    pub fn message_id(&self) -> Uuid {
        self.message_id
    }

    /// The consumer group the delivery was for.
    ///
    /// ```no_run
    /// # fn example(late: courier_middleware::LateDelivery) {
    /// println!("{}", late.group());
    /// # }
    /// ```
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The time its age counts from: its creation, or its later due time.
    ///
    /// ```no_run
    /// # fn example(late: courier_middleware::LateDelivery) {
    /// println!("created at {}", late.since());
    /// # }
    /// ```
    pub fn since(&self) -> DateTime<Utc> {
        self.since
    }

    /// Its age when it was refused.
    ///
    /// ```no_run
    /// # fn example(late: courier_middleware::LateDelivery) {
    /// assert!(late.age() > late.window());
    /// # }
    /// ```
    pub fn age(&self) -> Duration {
        self.age
    }

    /// The idempotency window it was older than.
    ///
    /// ```no_run
    /// # fn example(late: courier_middleware::LateDelivery) {
    /// println!("window {:?}", late.window());
    /// # }
    /// ```
    pub fn window(&self) -> Duration {
        self.window
    }
}

fn hours(duration: Duration) -> String {
    format!("{:.1} h", duration.as_secs_f64() / 3600.0)
}

impl fmt::Display for LateDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "message {} (group {}) is {} old (since {}), older than the idempotency window of {}: \
             its record may have been purged after an earlier delivery, so it is dead-lettered \
             instead of handled a second time unnoticed; check whether its effect exists, and to \
             handle it anyway lengthen the window past its age and redrive it",
            self.message_id,
            self.group,
            hours(self.age),
            self.since.to_rfc3339(),
            hours(self.window),
        )
    }
}

impl std::error::Error for LateDelivery {}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_outbox::Message;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn delivery_created(ago: chrono::Duration) -> (Delivery, DateTime<Utc>) {
        let now = Utc::now();
        let mut message = Message::new("orders", "m");
        message.created_at = now - ago;
        (Delivery::new(message, "billing"), now)
    }

    #[test]
    fn a_message_inside_the_window_passes() {
        let (delivery, now) = delivery_created(chrono::Duration::days(2));
        assert_eq!(LateDelivery::check(&delivery, 3 * DAY, now), None);
    }

    #[test]
    fn a_message_older_than_the_window_is_late() {
        let (delivery, now) = delivery_created(chrono::Duration::days(4));
        let late = LateDelivery::check(&delivery, 3 * DAY, now).unwrap();
        assert_eq!(late.age(), 4 * DAY);
        assert_eq!(late.window(), 3 * DAY);
        assert!(late.to_string().contains("96.0 h old"), "{late}");
    }

    #[test]
    fn a_later_due_time_counts_instead_of_the_creation() {
        let (mut delivery, now) = delivery_created(chrono::Duration::days(4));
        delivery.message.available_at = Some(now - chrono::Duration::days(1));
        assert_eq!(LateDelivery::check(&delivery, 3 * DAY, now), None);
    }

    #[test]
    fn a_creation_time_ahead_of_the_clock_is_not_late() {
        let (delivery, now) = delivery_created(chrono::Duration::minutes(-5));
        assert_eq!(LateDelivery::check(&delivery, Duration::ZERO, now), None);
    }
}
