//! One limit's counter, whatever its kind: the uniform face the admission code uses.

use crate::quota::bucket::TokenBucket;
use crate::quota::calendar::CalendarCounter;
use crate::quota::clock::Micros;
use crate::quota::concurrency::ConcurrencyGauge;
use crate::quota::fit::{non_negative, Cap, Fit, Undo};
use crate::quota::rolling::RollingWindow;
use crate::quota::spec::{LimitSpec, WindowKind};
use crate::quota::unit::Unit;

/// What [`Meter::capacity`] gives for a meter of `spec` (a bucket's burst, else the amount).
pub fn capacity_of(spec: &LimitSpec) -> f64 {
    match spec.window {
        WindowKind::TokenBucket { burst, .. } if spec.unit != Unit::Concurrent => {
            non_negative(burst)
        }
        _ => non_negative(spec.amount),
    }
}

/// The state of one limit for one scope id.
#[derive(Debug, Clone)]
pub enum Meter {
    /// Rolling window.
    Rolling(RollingWindow),
    /// Token bucket.
    Bucket(TokenBucket),
    /// Calendar counter.
    Calendar(CalendarCounter),
    /// In-flight gauge.
    Concurrent(ConcurrencyGauge),
}

impl Meter {
    /// A fresh meter for `spec` (concurrency whenever the unit is `Concurrent`).
    pub fn new(spec: &LimitSpec) -> Self {
        if spec.unit == Unit::Concurrent {
            return Meter::Concurrent(ConcurrencyGauge::new());
        }
        match spec.window {
            WindowKind::Rolling { len } => Meter::Rolling(RollingWindow::new(len)),
            WindowKind::TokenBucket { len, burst } => {
                Meter::Bucket(TokenBucket::new(spec.amount, len, burst))
            }
            WindowKind::Calendar { period, tz } => {
                Meter::Calendar(CalendarCounter::new(period, tz))
            }
            WindowKind::None => Meter::Concurrent(ConcurrencyGauge::new()),
        }
    }

    /// The whole capacity: `burst` for a bucket, `amount` otherwise.
    #[inline]
    pub fn capacity(&self, amount: f64) -> f64 {
        match self {
            Meter::Bucket(b) => b.burst(),
            _ => non_negative(amount),
        }
    }

    /// Whether `cost` fits under `cap` at `now`, else when it would.
    #[inline]
    pub fn fit(&mut self, cost: f64, cap: f64, now: Micros) -> Fit {
        match self {
            Meter::Rolling(w) => w.fit(cost, cap, now),
            Meter::Bucket(b) => b.fit(cost, cap, now),
            Meter::Calendar(c) => c.fit(cost, cap, now),
            Meter::Concurrent(g) => g.fit(cap),
        }
    }

    /// When `self.fit(cost, cap.cap, now)` says `Now` (a rolling window or calendar counter
    /// tells it from the precomputed bound, and may say no where `fit` would say `Now` after
    /// a longer look), counts `cost` as [`add_until`](Self::add_until) does and returns the
    /// same, with what [`undo_add`](Self::undo_add) needs; otherwise counts nothing.
    #[inline]
    pub(crate) fn add_if_fits(
        &mut self,
        cost: f64,
        cap: &Cap,
        now: Micros,
    ) -> Option<(u64, Micros, Undo)> {
        match self {
            Meter::Rolling(w) => w.add_if_fits(cost, cap, now),
            Meter::Calendar(c) => c
                .add_if_fits(cost, cap, now)
                .map(|(start, undo)| (start, Micros::MAX, undo)),
            Meter::Bucket(b) => {
                if !b.fit(cost, cap.cap, now).is_now() {
                    return None;
                }
                let undo = Undo(b.level(), 0.0);
                b.add(cost, now);
                Some((0, Micros::MAX, undo))
            }
            Meter::Concurrent(g) => {
                if !g.fit(cap.cap).is_now() {
                    return None;
                }
                g.acquire();
                Some((0, Micros::MAX, Undo::default()))
            }
        }
    }

    /// Takes back the last [`add_if_fits`](Self::add_if_fits), with nothing changed since.
    #[inline]
    pub(crate) fn undo_add(&mut self, undo: Undo) {
        match self {
            Meter::Rolling(w) => w.undo_add(undo),
            Meter::Calendar(c) => c.undo_add(undo),
            Meter::Bucket(b) => b.set_level(undo.0),
            Meter::Concurrent(g) => g.release(),
        }
    }

    /// [`add`](Self::add), and until when a call sent would still land in the bucket this
    /// one landed in: the end of a rolling window's newest bucket (`Micros::MAX` for other
    /// kinds, which count a call where it was admitted), in the same dispatch.
    #[inline]
    pub fn add_until(&mut self, cost: f64, now: Micros) -> (u64, Micros) {
        match self {
            Meter::Rolling(w) => (w.add(cost, now), w.head_end()),
            _ => (self.add(cost, now), Micros::MAX),
        }
    }

    /// Counts `cost` at `now`; returns the tag a later settle needs (bucket or period).
    #[inline]
    pub fn add(&mut self, cost: f64, now: Micros) -> u64 {
        match self {
            Meter::Rolling(w) => w.add(cost, now),
            Meter::Bucket(b) => {
                b.add(cost, now);
                0
            }
            Meter::Calendar(c) => c.add(cost, now),
            Meter::Concurrent(g) => {
                g.acquire();
                0
            }
        }
    }

    /// Corrects a reservation of `reserved` to `actual` (concurrency: releases the call).
    #[inline]
    pub fn settle(&mut self, tag: u64, reserved: f64, actual: f64, now: Micros) {
        let delta = actual - reserved;
        match self {
            Meter::Rolling(w) => w.adjust(tag, delta, now),
            Meter::Bucket(b) => b.adjust(delta, now),
            Meter::Calendar(c) => c.adjust(tag, delta, now),
            Meter::Concurrent(g) => g.release(),
        }
    }

    /// Used at `now`.
    pub fn used(&self, now: Micros) -> f64 {
        match self {
            Meter::Rolling(w) => w.used(now),
            Meter::Bucket(b) => b.used(now),
            Meter::Calendar(c) => c.used(now),
            Meter::Concurrent(g) => g.in_flight(),
        }
    }

    /// When usage next resets (rolling: all counted usage expired; bucket: full again;
    /// calendar: the period's end; concurrency: never on its own).
    pub fn resets_at(&self, now: Micros) -> Option<Micros> {
        match self {
            Meter::Rolling(w) => w.resets_at(now),
            Meter::Bucket(b) => b.resets_at(now),
            Meter::Calendar(c) => Some(c.resets_at(now)),
            Meter::Concurrent(_) => None,
        }
    }

    /// The current calendar period's start (tags share books), if calendar.
    #[inline]
    pub fn period_start(&self) -> Option<Micros> {
        match self {
            Meter::Calendar(c) => Some(c.period_start()),
            _ => None,
        }
    }
}
