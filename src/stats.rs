//! Per-provider totals and hourly history (requests, tokens, dollars, delays, refusals,
//! upstream 429s) for `/status` and `/history`. Kept across reloads and in the state file.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::quota::Micros;

/// Hours of history kept (31 days).
pub const HISTORY_HOURS: usize = 31 * 24;
const HOUR: Micros = 3_600_000_000;

/// Counts for one period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub usd: f64,
    pub delayed: u64,
    pub rejected: u64,
    pub upstream_429: u64,
    pub upstream_errors: u64,
}

impl Bucket {
    fn add(&mut self, o: &Bucket) {
        self.requests += o.requests;
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.usd += o.usd;
        self.delayed += o.delayed;
        self.rejected += o.rejected;
        self.upstream_429 += o.upstream_429;
        self.upstream_errors += o.upstream_errors;
    }
}

/// What is saved and restored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsData {
    pub totals: Bucket,
    /// (hour start in µs since the epoch, counts), oldest first.
    pub hours: VecDeque<(Micros, Bucket)>,
}

/// One provider's statistics.
#[derive(Debug, Default)]
pub struct ProviderStats {
    inner: Mutex<StatsData>,
}

impl ProviderStats {
    pub fn from_data(data: StatsData) -> Self {
        ProviderStats {
            inner: Mutex::new(data),
        }
    }

    /// Adds `delta` to the totals and to the hour of `now`.
    pub fn record(&self, now: Micros, delta: Bucket) {
        let mut d = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        d.totals.add(&delta);
        let hour = now - now % HOUR;
        match d.hours.back_mut() {
            Some((h, b)) if *h == hour => b.add(&delta),
            _ => {
                d.hours.push_back((hour, delta));
                while d.hours.len() > HISTORY_HOURS {
                    d.hours.pop_front();
                }
            }
        }
    }

    pub fn totals(&self) -> Bucket {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).totals
    }

    /// One bucket per hour for the last `hours` hours up to `now` (empty hours included).
    pub fn history(&self, now: Micros, hours: usize) -> Vec<(Micros, Bucket)> {
        let d = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let current = now - now % HOUR;
        let hours = hours.clamp(1, HISTORY_HOURS) as u64;
        (0..hours)
            .rev()
            .map(|back| {
                let start = current.saturating_sub(back * HOUR);
                let b = d
                    .hours
                    .iter()
                    .find(|(h, _)| *h == start)
                    .map(|(_, b)| *b)
                    .unwrap_or_default();
                (start, b)
            })
            .collect()
    }

    /// Replaces everything with `data` (restoring the state file): hours are put in order,
    /// a repeated hour is summed, and only the newest [`HISTORY_HOURS`] are kept, as
    /// [`ProviderStats::record`] would have.
    pub fn restore(&self, data: StatsData) {
        let mut hours: Vec<(Micros, Bucket)> = data.hours.into_iter().collect();
        hours.sort_by_key(|(h, _)| *h);
        let mut merged: VecDeque<(Micros, Bucket)> = VecDeque::with_capacity(hours.len());
        for (h, b) in hours {
            match merged.back_mut() {
                Some((last, acc)) if *last == h => acc.add(&b),
                _ => merged.push_back((h, b)),
            }
        }
        while merged.len() > HISTORY_HOURS {
            merged.pop_front();
        }
        let mut d = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *d = StatsData {
            totals: data.totals,
            hours: merged,
        };
    }

    pub fn data(&self) -> StatsData {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hourly_buckets_and_totals() {
        let s = ProviderStats::default();
        let t0 = 100 * HOUR + 5;
        s.record(
            t0,
            Bucket {
                requests: 1,
                ..Default::default()
            },
        );
        s.record(
            t0 + 10,
            Bucket {
                requests: 1,
                rejected: 1,
                ..Default::default()
            },
        );
        s.record(
            t0 + 2 * HOUR,
            Bucket {
                requests: 1,
                usd: 0.5,
                ..Default::default()
            },
        );
        assert_eq!(s.totals().requests, 3);
        let h = s.history(t0 + 2 * HOUR, 3);
        assert_eq!(h.len(), 3);
        assert_eq!(
            h[0],
            (
                100 * HOUR,
                Bucket {
                    requests: 2,
                    rejected: 1,
                    ..Default::default()
                }
            )
        );
        assert_eq!(h[1].1, Bucket::default(), "an empty hour is listed");
        assert_eq!(h[2].1.usd, 0.5);
    }

    #[test]
    fn restore_orders_merges_and_bounds_hours() {
        let one = Bucket {
            requests: 1,
            ..Default::default()
        };
        let mut hours: VecDeque<(Micros, Bucket)> = (0..(HISTORY_HOURS as u64 + 5))
            .rev()
            .map(|i| (i * HOUR, one))
            .collect();
        hours.push_back((3 * HOUR, one));
        let data = StatsData {
            totals: Bucket {
                requests: 7,
                ..Default::default()
            },
            hours,
        };
        let json = serde_json::to_string(&data).unwrap();
        let s = ProviderStats::default();
        s.restore(serde_json::from_str(&json).unwrap());
        let d = s.data();
        assert_eq!(d.totals.requests, 7);
        assert_eq!(d.hours.len(), HISTORY_HOURS);
        assert_eq!(d.hours[0].0, 5 * HOUR, "the oldest are dropped");
        assert!(d
            .hours
            .iter()
            .zip(d.hours.iter().skip(1))
            .all(|(a, b)| a.0 < b.0));
        let last = HISTORY_HOURS as u64 + 4;
        s.record(last * HOUR + 1, one);
        assert_eq!(
            s.history(last * HOUR, 1)[0].1.requests,
            2,
            "records after a restore"
        );
        let repeated = StatsData {
            hours: [(3 * HOUR, one), (3 * HOUR, one)].into_iter().collect(),
            ..Default::default()
        };
        s.restore(repeated);
        assert_eq!(s.data().hours, [(3 * HOUR, Bucket { requests: 2, ..one })]);
    }

    #[test]
    fn history_is_bounded() {
        let s = ProviderStats::default();
        for i in 0..(HISTORY_HOURS as u64 + 10) {
            s.record(
                i * HOUR,
                Bucket {
                    requests: 1,
                    ..Default::default()
                },
            );
        }
        assert_eq!(s.data().hours.len(), HISTORY_HOURS);
        assert_eq!(s.totals().requests, HISTORY_HOURS as u64 + 10);
    }
}
