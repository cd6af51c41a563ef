//! Token bucket (`algorithm = "token_bucket"`): refills `amount` per `window`, holds at
//! most `burst`. "Used" is what is missing from a full bucket, so priority caps and status
//! read the same way as for the other kinds.

use crate::quota::clock::Micros;
use crate::quota::fit::{fits, non_negative, Fit};

/// A token bucket that starts full. Pure: every method takes `now`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens per µs.
    rate: f64,
    burst: f64,
    /// Tokens available at `last` (negative after settles above the estimate: a debt).
    level: f64,
    last: Micros,
}

impl TokenBucket {
    /// A full bucket refilled by `amount` every `len` µs, holding at most `burst`.
    pub fn new(amount: f64, len: Micros, burst: f64) -> Self {
        let burst = non_negative(burst);
        Self {
            rate: non_negative(amount) / len.max(1) as f64,
            burst,
            level: burst,
            last: 0,
        }
    }

    /// Takes over `other`'s refill rate (a reload changed `amount`), keeping the level.
    pub fn set_rate_from(&mut self, other: &TokenBucket) {
        self.rate = other.rate;
    }

    /// The bucket's capacity.
    pub fn burst(&self) -> f64 {
        self.burst
    }

    /// Tokens available at [`TokenBucket::last_refill`] (negative: a debt).
    pub fn level(&self) -> f64 {
        self.level
    }

    /// When the level was last brought up to date.
    pub fn last_refill(&self) -> Micros {
        self.last
    }

    /// Sets the level the bucket had at `last` (restoring a state file; the caller checks
    /// that `level` is finite and at most the burst).
    pub fn restore(&mut self, level: f64, last: Micros) {
        self.level = level;
        self.last = last;
    }

    #[inline]
    fn level_at(&self, now: Micros) -> f64 {
        if now <= self.last {
            return self.level;
        }
        let refilled = self.level + (now - self.last) as f64 * self.rate;
        refilled.min(self.burst)
    }

    /// Refills up to `now` (a clock going backwards is ignored).
    #[inline]
    pub fn advance(&mut self, now: Micros) {
        if now > self.last {
            self.level = self.level_at(now);
            self.last = now;
        }
    }

    /// Whether `cost` fits with `used + cost <= cap` now, else when it will.
    pub fn fit(&mut self, cost: f64, cap: f64, now: Micros) -> Fit {
        self.advance(now);
        if !fits(0.0, cost, cap.min(self.burst)) {
            return Fit::Never;
        }
        let used = self.burst - self.level;
        if fits(used, cost, cap) {
            return Fit::Now;
        }
        if self.rate <= 0.0 {
            return Fit::Never;
        }
        let need = used + cost - cap;
        let wait = (need / self.rate).ceil();
        let wait = if wait.is_finite() {
            wait as u64
        } else {
            u64::MAX
        };
        Fit::At(self.last.saturating_add(wait.max(1)))
    }

    /// Puts the level back to what [`level`](Self::level) read before an `add` at the same
    /// time (the admission's exact undo).
    pub(crate) fn set_level(&mut self, level: f64) {
        self.level = level;
    }

    /// Takes `cost` tokens at `now`.
    #[inline]
    pub fn add(&mut self, cost: f64, now: Micros) {
        self.advance(now);
        self.level -= cost;
    }

    /// Takes `delta` more tokens (gives back when negative), never above a full bucket.
    pub fn adjust(&mut self, delta: f64, now: Micros) {
        self.advance(now);
        self.level = (self.level - delta).min(self.burst);
    }

    /// What is missing from a full bucket at `now`.
    pub fn used(&self, now: Micros) -> f64 {
        (self.burst - self.level_at(now.max(self.last))).max(0.0)
    }

    /// When the bucket will be full again (`None` when it is full).
    pub fn resets_at(&self, now: Micros) -> Option<Micros> {
        let now = now.max(self.last);
        let missing = self.burst - self.level_at(now);
        if missing <= 0.0 || self.rate <= 0.0 {
            return None;
        }
        Some(now.saturating_add((missing / self.rate).ceil() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::clock::SECOND;
    use proptest::prelude::*;

    const T0: Micros = 1_780_000_000 * SECOND;

    #[test]
    fn burst_then_refill() {
        // 60 per minute = 1 per second, burst 10.
        let mut b = TokenBucket::new(60.0, 60 * SECOND, 10.0);
        for _ in 0..10 {
            assert_eq!(b.fit(1.0, 10.0, T0), Fit::Now);
            b.add(1.0, T0);
        }
        assert_eq!(b.fit(1.0, 10.0, T0), Fit::At(T0 + SECOND));
        assert_eq!(b.fit(3.0, 10.0, T0), Fit::At(T0 + 3 * SECOND));
        assert_eq!(b.fit(11.0, 20.0, T0), Fit::Never, "more than the burst");
        assert_eq!(b.fit(1.0, 10.0, T0 + SECOND), Fit::Now);
        assert_eq!(b.used(T0 + 4 * SECOND), 6.0);
        assert_eq!(b.resets_at(T0 + 4 * SECOND), Some(T0 + 10 * SECOND));
        assert_eq!(b.used(T0 + 100 * SECOND), 0.0);
        assert_eq!(b.resets_at(T0 + 100 * SECOND), None);
    }

    #[test]
    fn reserve_cap_keeps_tokens_back() {
        let mut b = TokenBucket::new(10.0, SECOND, 10.0);
        // cap 8: two tokens held back.
        for _ in 0..8 {
            b.add(1.0, T0);
        }
        assert!(matches!(b.fit(1.0, 8.0, T0), Fit::At(_)));
        assert_eq!(b.fit(1.0, 10.0, T0), Fit::Now);
    }

    #[test]
    fn settle_debt_and_refund() {
        let mut b = TokenBucket::new(10.0, SECOND, 10.0);
        b.add(5.0, T0);
        b.adjust(10.0, T0); // actual was 15: a debt of 5
        assert_eq!(b.used(T0), 15.0);
        assert_eq!(b.fit(1.0, 10.0, T0), Fit::At(T0 + 600_000));
        b.adjust(-100.0, T0);
        assert_eq!(b.used(T0), 0.0, "never above full");
        let mut zero = TokenBucket::new(0.0, SECOND, 1.0);
        zero.add(1.0, T0);
        assert_eq!(zero.fit(1.0, 1.0, T0), Fit::Never);
    }

    proptest! {
        /// In every interval [a, b] the bucket admits at most burst + rate * (b - a), and a
        /// named time is honoured.
        #[test]
        fn never_exceeds_burst_plus_refill(
            amount in 1u32..100,
            burst in 1u32..50,
            ops in prop::collection::vec((0u64..500_000, 1u32..4), 1..200),
        ) {
            let len = SECOND;
            let (amount, burst) = (f64::from(amount), f64::from(burst));
            let rate = amount / len as f64;
            let mut b = TokenBucket::new(amount, len, burst);
            let mut log: Vec<(Micros, f64)> = Vec::new();
            let mut t = T0;
            for (dt, cost) in ops {
                t += dt;
                let cost = f64::from(cost);
                match b.fit(cost, burst, t) {
                    Fit::Now => { b.add(cost, t); log.push((t, cost)); }
                    Fit::At(u) => {
                        prop_assert!(u > t);
                        prop_assert_eq!(b.clone().fit(cost, burst, u), Fit::Now);
                    }
                    Fit::Never => prop_assert!(cost > burst),
                    Fit::OnRelease => prop_assert!(false),
                }
            }
            for i in 0..log.len() {
                let mut sum = 0.0;
                for j in i..log.len() {
                    sum += log[j].1;
                    let span = (log[j].0 - log[i].0) as f64;
                    prop_assert!(sum <= burst + rate * span + 1e-6);
                }
            }
        }
    }
}
