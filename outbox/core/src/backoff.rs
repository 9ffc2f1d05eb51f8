//! Per-message retry delays: exponential, with jitter, capped.

use std::time::Duration;

use rand::Rng;

/// How long a message waits before its next publish attempt.
///
/// The delay after attempt `n` (1-based) is `base * factor^(n-1)`, capped at `max`, then scaled by a
/// random factor in `[1 - jitter, 1]` so that messages failing together do not retry together.
///
/// ```
/// use courier_core::Backoff;
/// use std::time::Duration;
///
/// let backoff = Backoff { jitter: 0.0, ..Backoff::default() };
/// assert_eq!(backoff.delay(1), Duration::from_secs(1));
/// assert_eq!(backoff.delay(3), Duration::from_secs(4));
/// assert_eq!(backoff.delay(40), Duration::from_secs(300));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay after the first failed attempt.
    pub base: Duration,
    /// Growth per attempt.
    pub factor: f64,
    /// Upper bound of any delay.
    pub max: Duration,
    /// Fraction of the delay that is randomised, 0.0 to 1.0.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            factor: 2.0,
            max: Duration::from_secs(300),
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The delay after failed attempt number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let raw = self.base.as_secs_f64() * self.factor.powi(exponent);
        let capped = raw.min(self.max.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        let scale = if jitter > 0.0 {
            rand::rng().random_range((1.0 - jitter)..=1.0)
        } else {
            1.0
        };
        Duration::from_secs_f64((capped * scale).max(0.0))
    }

    /// Checks that the settings make sense: a growth factor of at least 1, jitter within
    /// `0.0..=1.0`, and a base no larger than the cap.
    ///
    /// # Errors
    ///
    /// A sentence naming the setting and the value that is wrong.
    ///
    /// ```
    /// let backoff = courier_core::Backoff { factor: 0.5, ..Default::default() };
    /// assert!(backoff.validate().unwrap_err().contains("factor"));
    /// ```
    pub fn validate(&self) -> Result<(), String> {
        if !(self.factor >= 1.0 && self.factor.is_finite()) {
            return Err(format!(
                "backoff factor must be at least 1.0, got {}",
                self.factor
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(format!(
                "backoff jitter must be within 0.0..=1.0, got {}",
                self.jitter
            ));
        }
        if self.base > self.max {
            return Err(format!(
                "backoff base {:?} is larger than its cap {:?}",
                self.base, self.max
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            factor: 3.0,
            max: Duration::from_secs(1),
            jitter: 0.0,
        };
        assert_eq!(backoff.delay(1), Duration::from_millis(100));
        assert_eq!(backoff.delay(2), Duration::from_millis(300));
        assert_eq!(backoff.delay(3), Duration::from_millis(900));
        assert_eq!(backoff.delay(4), Duration::from_secs(1));
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let backoff = Backoff {
            jitter: 0.5,
            ..Backoff::default()
        };
        for _ in 0..1000 {
            let delay = backoff.delay(2);
            assert!(delay >= Duration::from_secs(1) && delay <= Duration::from_secs(2));
        }
    }

    #[test]
    fn rejects_nonsense() {
        assert!(
            Backoff {
                factor: 0.5,
                ..Backoff::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            Backoff {
                jitter: 2.0,
                ..Backoff::default()
            }
            .validate()
            .is_err()
        );
    }
}
