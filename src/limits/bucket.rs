//! A token bucket read with a caller's clock: `samples_per_second` tokens per
//! second refill it up to `burst` tokens. Never reads time itself, so tests
//! drive it with a fake clock.

/// Tokens of one tenant's sample rate.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenBucket {
    tokens: f64,
    last_ms: i64,
    per_ms: f64,
    burst: f64,
}

impl TokenBucket {
    /// A full bucket at `now_ms`.
    pub fn new(samples_per_second: u64, burst: u64, now_ms: i64) -> Self {
        TokenBucket {
            tokens: burst as f64,
            last_ms: now_ms,
            per_ms: samples_per_second as f64 / 1000.0,
            burst: burst as f64,
        }
    }

    /// Adds the tokens earned since the last refill; a clock that went back earns nothing.
    pub fn refill(&mut self, now_ms: i64) {
        if now_ms > self.last_ms {
            let earned = (now_ms - self.last_ms) as f64 * self.per_ms;
            self.tokens = (self.tokens + earned).min(self.burst);
            self.last_ms = now_ms;
        }
    }

    /// Whole tokens above `floor` (what a class whose band starts at `floor` may take).
    pub fn available_above(&self, floor: f64) -> u64 {
        (self.tokens - floor).max(0.0).floor() as u64
    }

    /// Takes `count` tokens (the caller checked they are available).
    pub fn take(&mut self, count: u64) {
        self.tokens -= count as f64;
    }

    /// Gives back tokens taken for samples refused later.
    pub fn give_back(&mut self, count: u64) {
        self.tokens = (self.tokens + count as f64).min(self.burst);
    }

    /// The bucket size.
    pub fn burst(&self) -> f64 {
        self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refills_at_the_rate_up_to_the_burst() {
        let mut bucket = TokenBucket::new(100, 50, 1_000);
        assert_eq!(bucket.available_above(0.0), 50);
        bucket.take(50);
        assert_eq!(bucket.available_above(0.0), 0);
        bucket.refill(1_100); // 100 ms at 100/s = 10 tokens
        assert_eq!(bucket.available_above(0.0), 10);
        bucket.refill(60_000);
        assert_eq!(bucket.available_above(0.0), 50, "never above the burst");
        assert_eq!(bucket.available_above(20.0), 30, "a band floor leaves tokens below it");
        assert_eq!(bucket.available_above(80.0), 0);
    }

    #[test]
    fn a_clock_going_back_earns_nothing() {
        let mut bucket = TokenBucket::new(1_000, 10, 5_000);
        bucket.take(10);
        bucket.refill(4_000);
        assert_eq!(bucket.available_above(0.0), 0);
        bucket.refill(5_005);
        assert_eq!(bucket.available_above(0.0), 5);
        bucket.give_back(100);
        assert_eq!(bucket.available_above(0.0), 10);
    }
}
