//! Concurrency (`unit = "concurrent"`): calls in flight, released by settle or cancel.
//! There is no time component: a full gauge frees up only when a call ends.

use crate::quota::fit::{fits, Fit};

/// In-flight count. Every call counts 1.
#[derive(Debug, Clone, Default)]
pub struct ConcurrencyGauge {
    in_flight: u64,
}

impl ConcurrencyGauge {
    /// An idle gauge.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether one more call fits under `cap`; otherwise it fits when one is released.
    #[inline]
    pub fn fit(&self, cap: f64) -> Fit {
        if !fits(0.0, 1.0, cap) {
            Fit::Never
        } else if fits(self.in_flight as f64, 1.0, cap) {
            Fit::Now
        } else {
            Fit::OnRelease
        }
    }

    /// One more call in flight.
    #[inline]
    pub fn acquire(&mut self) {
        self.in_flight += 1;
    }

    /// One call fewer in flight (never below zero).
    #[inline]
    pub fn release(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Calls in flight.
    pub fn in_flight(&self) -> f64 {
        self.in_flight as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauge_table() {
        let mut g = ConcurrencyGauge::new();
        assert_eq!(g.fit(0.5), Fit::Never);
        assert_eq!(g.fit(2.0), Fit::Now);
        g.acquire();
        g.acquire();
        assert_eq!(g.fit(2.0), Fit::OnRelease);
        assert_eq!(g.fit(3.0), Fit::Now);
        g.release();
        assert_eq!(g.fit(2.0), Fit::Now);
        g.release();
        g.release();
        assert_eq!(g.in_flight(), 0.0);
    }
}
