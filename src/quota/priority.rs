//! Call priorities and the reserves that hold capacity back from the lower ones.

use std::str::FromStr;

/// A call's priority (`x-quota-priority`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum Priority {
    /// Never held back by a reserve.
    Critical,
    /// Held back by `reserve.high`.
    High,
    /// The default.
    #[default]
    Normal,
    /// Held back by `reserve.low`.
    Low,
}

/// A priority name other than critical, high, normal or low.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown priority {0:?} (expected critical, high, normal or low)")]
pub struct UnknownPriority(pub String);

impl FromStr for Priority {
    type Err = UnknownPriority;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        for (name, p) in [
            ("critical", Priority::Critical),
            ("high", Priority::High),
            ("normal", Priority::Normal),
            ("low", Priority::Low),
        ] {
            if t.eq_ignore_ascii_case(name) {
                return Ok(p);
            }
        }
        Err(UnknownPriority(s.to_string()))
    }
}

/// Fractions of a limit held back from lower priorities (critical is never held back):
/// a call of priority `p` is refused when `used + cost > amount * (1 - reserve(p))`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PriorityReserve {
    /// Held back from `high`.
    pub high: f64,
    /// Held back from `normal`.
    pub normal: f64,
    /// Held back from `low`.
    pub low: f64,
}

impl PriorityReserve {
    /// The fraction held back from `p`, clamped to `0..=1`.
    #[inline]
    pub fn fraction(&self, p: Priority) -> f64 {
        let f = match p {
            Priority::Critical => 0.0,
            Priority::High => self.high,
            Priority::Normal => self.normal,
            Priority::Low => self.low,
        };
        // NaN fails both comparisons: it reads as 0, like the infinities and negatives.
        if f > 0.0 && f < f64::INFINITY {
            f.min(1.0)
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_parse_and_reserves_clamp() {
        assert_eq!("critical".parse::<Priority>(), Ok(Priority::Critical));
        assert_eq!(" High ".parse::<Priority>(), Ok(Priority::High));
        assert_eq!("normal".parse::<Priority>(), Ok(Priority::Normal));
        assert_eq!("LOW".parse::<Priority>(), Ok(Priority::Low));
        assert!("urgent".parse::<Priority>().is_err());
        let r = PriorityReserve {
            high: -1.0,
            normal: f64::NAN,
            low: 2.0,
        };
        assert_eq!(r.fraction(Priority::Critical), 0.0);
        assert_eq!(r.fraction(Priority::High), 0.0);
        assert_eq!(r.fraction(Priority::Normal), 0.0);
        assert_eq!(r.fraction(Priority::Low), 1.0);
        let inf = PriorityReserve {
            high: f64::INFINITY,
            normal: f64::NEG_INFINITY,
            low: 0.25,
        };
        assert_eq!(inf.fraction(Priority::High), 0.0);
        assert_eq!(inf.fraction(Priority::Normal), 0.0);
        assert_eq!(inf.fraction(Priority::Low), 0.25);
    }
}
