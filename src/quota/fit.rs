//! The answer every limit kind gives to "can `cost` be added now under this cap?".

use crate::quota::clock::Micros;

/// Whether a cost fits a limit, and if not, when it would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// It fits now.
    Now,
    /// It fits from this time on (if nothing else is added meanwhile).
    At(Micros),
    /// It fits once something in flight is released (concurrency); the time is unknown.
    OnRelease,
    /// It can never fit: the cost exceeds the cap even of an empty window.
    Never,
}

impl Fit {
    /// Whether the cost fits now.
    #[inline]
    pub fn is_now(self) -> bool {
        matches!(self, Fit::Now)
    }
}

/// `used + cost <= cap`, with a relative tolerance of 1e-9 so that fractional units (USD)
/// that fit exactly are not refused by rounding (`0.1 + 0.2` against a cap of `0.3`).
#[inline]
pub fn fits(used: f64, cost: f64, cap: f64) -> bool {
    used + cost <= cap + 1e-9 * cap.abs().max(1.0)
}

/// A sanitised finite, non-negative amount (NaN and negatives become 0).
#[inline]
pub fn non_negative(v: f64) -> f64 {
    if v > 0.0 && v.is_finite() {
        v
    } else if v == f64::INFINITY {
        f64::MAX
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_accepts_exact_fractions_only() {
        assert!(fits(0.1, 0.2, 0.3));
        assert!(fits(5.0, 5.0, 10.0));
        assert!(!fits(5.0, 5.0001, 10.0));
        assert!(!fits(10.0, 1.0, 10.0));
        assert!(fits(0.0, 0.0, 0.0));
        assert!(!fits(0.0, 1.0, 0.0));
        assert_eq!(non_negative(f64::NAN), 0.0);
        assert_eq!(non_negative(-2.0), 0.0);
        assert_eq!(non_negative(2.5), 2.5);
        assert_eq!(non_negative(f64::INFINITY), f64::MAX);
        assert!(Fit::Now.is_now() && !Fit::OnRelease.is_now());
    }
}
