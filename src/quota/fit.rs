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
    Cap::new(cap).admits(used, cost)
}

/// A cap with the bound [`fits`] compares against, computed once for a limit that checks
/// many calls against the same cap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cap {
    /// The cap itself.
    pub cap: f64,
    /// The largest `used + cost` that fits: the cap plus the tolerance.
    pub bound: f64,
}

impl Cap {
    /// `cap` and its bound.
    #[inline]
    pub fn new(cap: f64) -> Self {
        Self {
            cap,
            bound: cap + 1e-9 * cap.abs().max(1.0),
        }
    }

    /// `fits(used, cost, self.cap)`.
    #[inline]
    pub fn admits(&self, used: f64, cost: f64) -> bool {
        used + cost <= self.bound
    }
}

/// What counting one cost overwrote in a meter (a rolling window's bucket and sum, a
/// calendar period's or a bucket's level), for putting it back exactly: `x + c - c` is not
/// always `x` in floating point. Valid only until the meter changes again.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Undo(pub(crate) f64, pub(crate) f64);

/// A sanitised finite, non-negative amount (NaN and negatives become 0).
#[inline]
pub fn non_negative(v: f64) -> f64 {
    // Two comparisons: NaN fails the first, so it reads as 0 with the negatives.
    if v > 0.0 {
        if v < f64::INFINITY {
            v
        } else {
            f64::MAX
        }
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
        assert_eq!(non_negative(f64::NEG_INFINITY), 0.0);
        assert_eq!(non_negative(f64::MIN_POSITIVE), f64::MIN_POSITIVE);
        assert!(Fit::Now.is_now() && !Fit::OnRelease.is_now());
    }
}
