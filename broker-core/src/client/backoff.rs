//! Capped exponential reconnect delays with full jitter.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first delay.
    pub initial: Duration,
    /// No delay exceeds this.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(500), max: Duration::from_secs(30) }
    }
}

impl Backoff {
    /// The ceiling for the `attempt`-th retry (0-based): `initial × 2^attempt`, capped at `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// A delay drawn uniformly from `[0, ceiling(attempt)]` ("full jitter"), so clients that lost
    /// the broker together do not come back together.
    pub fn delay(&self, attempt: u32, unit_random: f64) -> Duration {
        self.ceiling(attempt).mul_f64(unit_random.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_then_cap() {
        let backoff = Backoff { initial: Duration::from_secs(1), max: Duration::from_secs(30) };
        let ceilings: Vec<u64> = (0..8).map(|a| backoff.ceiling(a).as_secs()).collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff.ceiling(200), Duration::from_secs(30));
    }

    #[test]
    fn jitter_stays_within_the_ceiling() {
        let backoff = Backoff::default();
        assert_eq!(backoff.delay(3, 0.0), Duration::ZERO);
        assert_eq!(backoff.delay(3, 1.0), backoff.ceiling(3));
        assert_eq!(backoff.delay(3, 0.5), backoff.ceiling(3) / 2);
        assert_eq!(backoff.delay(3, 7.0), backoff.ceiling(3));
    }
}
