//! Token bucket: `burst` sends at once, refilled at `per_minute`.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::RateLimit;

#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    updated_at: Instant,
}

impl TokenBucket {
    pub fn full(limit: RateLimit, now: Instant) -> TokenBucket {
        TokenBucket { tokens: f64::from(limit.burst), updated_at: now }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, limit: RateLimit, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated_at);
        let refill = elapsed.as_secs_f64() * f64::from(limit.per_minute) / 60.0;
        self.tokens = (self.tokens + refill).min(f64::from(limit.burst));
        self.updated_at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until the bucket is full again (zero when it is).
    pub fn retry_after_full(&self, limit: RateLimit, now: Instant) -> Duration {
        let refilled = self.tokens
            + now.saturating_duration_since(self.updated_at).as_secs_f64() * f64::from(limit.per_minute) / 60.0;
        let missing = (f64::from(limit.burst) - refilled).max(0.0);
        Duration::from_secs_f64(missing * 60.0 / f64::from(limit.per_minute.max(1)))
    }

    /// How long until the next token.
    pub fn retry_after(&self, limit: RateLimit) -> Duration {
        let missing = (1.0 - self.tokens).max(0.0);
        Duration::from_secs_f64(missing * 60.0 / f64::from(limit.per_minute.max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: RateLimit = RateLimit { burst: 10, per_minute: 60 };

    #[tokio::test(start_paused = true)]
    async fn burst_then_refill_one_per_second() {
        let mut bucket = TokenBucket::full(LIMIT, Instant::now());
        for n in 0..10 {
            assert!(bucket.try_take(LIMIT, Instant::now()), "send {n} of the burst");
        }
        assert!(!bucket.try_take(LIMIT, Instant::now()), "11th send is refused");
        assert_eq!(bucket.retry_after(LIMIT), Duration::from_secs(1));
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!bucket.try_take(LIMIT, Instant::now()));
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(bucket.try_take(LIMIT, Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn never_exceeds_the_burst() {
        let mut bucket = TokenBucket::full(LIMIT, Instant::now());
        tokio::time::advance(Duration::from_secs(3600)).await;
        let taken = (0..20).filter(|_| bucket.try_take(LIMIT, Instant::now())).count();
        assert_eq!(taken, 10);
    }
}
