//! A circuit breaker (pure: time is an argument): after `threshold` consecutive failures
//! the backend is skipped for `cool_off`, then one probe call is let through; its success
//! closes the breaker, its failure opens it again. A dead backend thus costs a fast local
//! decision, never a timeout per request.

use crate::quota::clock::Micros;

/// Breaker state.
#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    cool_off: Micros,
    failures: u32,
    open_until: Option<Micros>,
    probe_since: Option<Micros>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(threshold: u32, cool_off: Micros) -> Self {
        Self {
            threshold: threshold.max(1),
            cool_off,
            failures: 0,
            open_until: None,
            probe_since: None,
        }
    }

    /// Whether a call may go to the backend now (when open, one probe per cool-off).
    pub fn allow(&mut self, now: Micros) -> bool {
        let Some(until) = self.open_until else {
            return true;
        };
        if now < until {
            return false;
        }
        // A probe whose caller vanished must not block the next one forever.
        match self.probe_since {
            Some(p) if now < p.saturating_add(self.cool_off) => false,
            _ => {
                self.probe_since = Some(now);
                true
            }
        }
    }

    /// A call succeeded; returns whether the breaker was open (the backend is back).
    pub fn success(&mut self) -> bool {
        let was_open = self.open_until.is_some() || self.failures > 0;
        self.failures = 0;
        self.open_until = None;
        self.probe_since = None;
        was_open
    }

    /// A call failed at `now`.
    pub fn failure(&mut self, now: Micros) {
        self.failures = self.failures.saturating_add(1);
        self.probe_since = None;
        if self.failures >= self.threshold {
            self.open_until = Some(now.saturating_add(self.cool_off));
        }
    }

    /// Whether the backend is considered down (open, or probing).
    pub fn is_open(&self) -> bool {
        self.open_until.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_probes_once_per_cool_off() {
        let mut b = Breaker::new(3, 1000);
        for t in 0..3 {
            assert!(b.allow(t));
            b.failure(t);
        }
        assert!(b.is_open());
        assert!(!b.allow(500));
        assert!(b.allow(1002), "one probe after the cool-off");
        assert!(!b.allow(1003), "only one");
        b.failure(1004);
        assert!(!b.allow(1500));
        assert!(b.allow(2004));
        assert!(b.success());
        assert!(!b.is_open() && b.allow(2005));
        assert!(!b.success(), "nothing to recover from");
    }

    #[test]
    fn a_vanished_probe_does_not_block_forever() {
        let mut b = Breaker::new(1, 100);
        b.failure(0);
        assert!(b.allow(100));
        assert!(!b.allow(150));
        assert!(b.allow(200));
    }
}
