//! Rolling window: never more than `amount` units in ANY interval of length `window`.
//!
//! Usage is kept in sub-buckets of width `g = ceil(window / 128)`. Any interval of length
//! `window` overlaps at most `ceil(window / g) + 1` consecutive buckets; an admission is
//! checked against the sum of the current bucket and the `n = ceil(window / g) + 1` before
//! it, one bucket more than that. The extra bucket is a margin for the time between an
//! admission and the call's arrival upstream: a call stays counted for more than `window + g`
//! after it was admitted, so a call admitted the moment room frees up (delay mode) cannot
//! reach an upstream that counts arrivals within the same `window` as the call whose room it
//! took, unless the earlier call took `g` longer to get there (7.8 ms for a 1 s window). It
//! errs on refusing: under saturating load the limiter admits `amount` per `(n + 1) * g`,
//! i.e. `128 / 130` ≈ 98.5% of the permitted rate, with constant memory and O(1) checks.

use crate::quota::clock::Micros;
use crate::quota::fit::{fits, Cap, Fit, Undo};

/// Sub-buckets per window.
pub const BUCKETS: u64 = 128;

/// Sub-buckets a call stays counted beyond its window (see the module's text).
pub const MARGIN_BUCKETS: u64 = 1;

/// A window's sub-bucket width and the number of sub-buckets before the current one that an
/// admission counts: `(width, n)`. The local meters and the Redis plan share it.
pub fn geometry(len: Micros) -> (Micros, u64) {
    let len = len.max(1);
    let width = len.div_ceil(BUCKETS).max(1);
    (width, len.div_ceil(width) + MARGIN_BUCKETS)
}

/// A rolling-window counter. Pure: every method takes `now`.
#[derive(Debug, Clone)]
pub struct RollingWindow {
    /// Bucket width in µs.
    width: Micros,
    /// Buckets per window (`n`); the ring holds `n + 1`.
    n: u64,
    ring: Box<[f64]>,
    /// Absolute index (`time / width`) of the newest bucket.
    head: u64,
    /// Its place in the ring (`head % (n + 1)`, kept to spare a division per add).
    head_slot: usize,
    /// End of the newest bucket: before it, `advance` has nothing to do (no division).
    head_end: Micros,
    /// Sum of the ring (all of it is counted at `head`).
    sum: f64,
}

/// Where a reservation landed: the absolute bucket index.
pub type BucketId = u64;

impl RollingWindow {
    /// An empty window of `len` µs (0 is treated as 1).
    pub fn new(len: Micros) -> Self {
        let (width, n) = geometry(len);
        Self {
            width,
            n,
            ring: vec![0.0; (n + 1) as usize].into_boxed_slice(),
            head: 0,
            head_slot: 0,
            head_end: width,
            sum: 0.0,
        }
    }

    #[inline]
    fn slot(&self, bucket: u64) -> usize {
        (bucket % (self.n + 1)) as usize
    }

    /// Forgets buckets that left the window by `now` (a clock going backwards is ignored).
    #[inline]
    pub fn advance(&mut self, now: Micros) {
        if now >= self.head_end {
            self.roll(now);
        }
    }

    #[cold]
    fn roll(&mut self, now: Micros) {
        let b = now / self.width;
        if b <= self.head {
            return;
        }
        if b - self.head > self.n {
            self.ring.iter_mut().for_each(|v| *v = 0.0);
        } else {
            for k in self.head + 1..=b {
                let i = self.slot(k);
                self.ring[i] = 0.0;
            }
        }
        self.head = b;
        self.head_slot = self.slot(b);
        self.head_end = (b + 1).saturating_mul(self.width);
        self.sum = self.ring.iter().sum();
    }

    /// Whether `cost` fits under `cap` now, else when it will.
    #[inline]
    pub fn fit(&mut self, cost: f64, cap: f64, now: Micros) -> Fit {
        self.advance(now);
        if fits(self.sum, cost, cap) {
            Fit::Now
        } else {
            self.fit_later(cost, cap)
        }
    }

    /// When `fit` would say `Now` at its first comparison, counts `cost` as [`add`]
    /// does and returns its bucket, that bucket's end and what [`undo_add`] puts back;
    /// otherwise counts nothing.
    ///
    /// [`add`]: Self::add
    /// [`undo_add`]: Self::undo_add
    #[inline]
    pub(crate) fn add_if_fits(
        &mut self,
        cost: f64,
        cap: &Cap,
        now: Micros,
    ) -> Option<(BucketId, Micros, Undo)> {
        self.advance(now);
        if !cap.admits(self.sum, cost) {
            return None;
        }
        let i = self.head_slot;
        let undo = Undo(self.ring[i], self.sum);
        self.ring[i] = undo.0 + cost;
        self.sum = undo.1 + cost;
        Some((self.head, self.head_end, undo))
    }

    /// Takes back the last [`add_if_fits`](Self::add_if_fits), with nothing changed since.
    pub(crate) fn undo_add(&mut self, undo: Undo) {
        self.ring[self.head_slot] = undo.0;
        self.sum = undo.1;
    }

    /// The slow half of [`RollingWindow::fit`]: when, if ever.
    fn fit_later(&self, cost: f64, cap: f64) -> Fit {
        if !fits(0.0, cost, cap) {
            return Fit::Never;
        }
        // Walk from the newest bucket back: the first bucket that pushes the suffix sum
        // over the cap must leave the window first; it leaves at bucket k + n + 1.
        let mut acc = 0.0;
        for i in 0..=self.n.min(self.head) {
            let k = self.head - i;
            acc += self.ring[self.slot(k)];
            if !fits(acc, cost, cap) {
                return Fit::At((k + self.n + 1).saturating_mul(self.width));
            }
        }
        Fit::Now
    }

    /// Adds `cost` at `now`; returns the bucket it landed in.
    #[inline]
    pub fn add(&mut self, cost: f64, now: Micros) -> BucketId {
        self.advance(now);
        let i = self.head_slot;
        self.ring[i] += cost;
        self.sum += cost;
        self.head
    }

    /// End of the newest bucket: a reservation in it has nothing to move before then.
    #[inline]
    pub fn head_end(&self) -> Micros {
        self.head_end
    }

    /// Moves `amount`, reserved in `bucket`, to the bucket of `now` (the call leaves then, so
    /// it is counted from then); returns the bucket it is in now. A bucket that already left
    /// the window has nothing left to move: `amount` is counted again from `now`.
    pub fn restamp(&mut self, bucket: BucketId, amount: f64, now: Micros) -> BucketId {
        self.advance(now);
        if bucket >= self.head {
            return bucket;
        }
        let amount = amount.max(0.0);
        if bucket + self.n < self.head {
            self.ring[self.head_slot] += amount;
            self.sum += amount;
            return self.head;
        }
        let from = self.slot(bucket);
        let moved = amount.min(self.ring[from]);
        self.ring[from] -= moved;
        self.ring[self.head_slot] += moved;
        self.head
    }

    /// Adds `delta` (may be negative) to what `bucket` holds, if it is still counted.
    /// A bucket never goes below zero.
    pub fn adjust(&mut self, bucket: BucketId, delta: f64, now: Micros) {
        self.advance(now);
        if bucket > self.head || bucket + self.n < self.head {
            return;
        }
        let i = if bucket == self.head {
            self.head_slot
        } else {
            self.slot(bucket)
        };
        let old = self.ring[i];
        let new = (old + delta).max(0.0);
        self.ring[i] = new;
        self.sum += new - old;
    }

    /// Units counted in the window ending at `now`.
    pub fn used(&self, now: Micros) -> f64 {
        if now < self.head_end {
            // Still in the newest bucket: the whole ring counts, and `sum` holds it (the
            // figure admission decides on).
            return self.sum.max(0.0);
        }
        let b = (now / self.width).max(self.head);
        let oldest = b.saturating_sub(self.n);
        (oldest..=self.head)
            .map(|k| self.ring[self.slot(k)])
            .sum::<f64>()
            .max(0.0)
    }

    /// Sub-bucket width in µs.
    pub fn width(&self) -> Micros {
        self.width
    }

    /// The non-empty sub-buckets still counted at `now`, oldest first, as
    /// `(sub-bucket start µs, units)` (for the state file).
    pub fn buckets(&self, now: Micros) -> Vec<(Micros, f64)> {
        let b = (now / self.width).max(self.head);
        let oldest = b.saturating_sub(self.n);
        (oldest..=self.head)
            .map(|k| (k.saturating_mul(self.width), self.ring[self.slot(k)]))
            .filter(|&(_, v)| v != 0.0)
            .collect()
    }

    /// Counts `units` in the sub-bucket holding `at`, as seen at `now` (restoring a state
    /// file). Returns `false`, counting nothing, when that sub-bucket has left the window.
    pub fn restore(&mut self, at: Micros, units: f64, now: Micros) -> bool {
        self.advance(now);
        self.advance(at);
        let k = at / self.width;
        if k.saturating_add(self.n) < self.head {
            return false;
        }
        let i = self.slot(k);
        self.ring[i] += units;
        self.sum += units;
        true
    }

    /// When everything counted at `now` will have left the window (`None` when empty).
    pub fn resets_at(&self, now: Micros) -> Option<Micros> {
        let leaves = |k: u64| (k + self.n + 1).saturating_mul(self.width);
        if now < self.head_end && self.ring[self.head_slot] > 0.0 {
            // The common case, without a division: the newest bucket holds usage.
            return Some(leaves(self.head));
        }
        let b = (now / self.width).max(self.head);
        let oldest = b.saturating_sub(self.n);
        (oldest..=self.head)
            .rev()
            .find(|&k| self.ring[self.slot(k)] > 0.0)
            .map(leaves)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::clock::SECOND;
    use proptest::prelude::*;

    const MIN: Micros = 60 * SECOND;
    const T0: Micros = 1_780_000_000 * SECOND;

    #[test]
    fn geometry() {
        let w = RollingWindow::new(MIN);
        assert_eq!((w.width, w.n, w.ring.len()), (468_750, 129, 130));
        let w = RollingWindow::new(10);
        assert_eq!((w.width, w.n), (1, 11));
        let w = RollingWindow::new(0);
        assert_eq!((w.width, w.n), (1, 2));
        // The buckets counted before the current one span the window and one bucket more.
        for len in [1, 10, 127, 128, 129, SECOND, MIN, 3_600 * SECOND + 7] {
            let w = RollingWindow::new(len);
            assert!(w.n * w.width >= len + w.width, "{len}");
            assert!((w.n - 1) * w.width < len + w.width, "{len}");
        }
    }

    #[test]
    fn restamp_moves_a_reservation_to_the_bucket_it_leaves_in() {
        let mut w = RollingWindow::new(128 * SECOND); // 1 s buckets
        let b0 = w.add(5.0, T0);
        w.add(2.0, T0 + 500_000);
        // Still in its bucket: nothing moves.
        assert_eq!(w.restamp(b0, 5.0, T0 + 900_000), b0);
        assert_eq!(w.ring[w.slot(b0)], 7.0);
        // Ten buckets later: the 5 move to the head, the sum is unchanged.
        let b = w.restamp(b0, 5.0, T0 + 10 * SECOND);
        assert_eq!(b, b0 + 10);
        assert_eq!(
            (w.ring[w.slot(b0)], w.ring[w.slot(b)], w.sum),
            (2.0, 5.0, 7.0)
        );
        // So they leave the window ten seconds after the 2 that stayed (a window and the
        // margin bucket after their own bucket).
        assert_eq!(w.used(T0 + 129 * SECOND), 7.0);
        assert_eq!(w.used(T0 + 130 * SECOND), 5.0);
        assert_eq!(w.used(T0 + 140 * SECOND), 0.0);
        // A reservation whose bucket already left is counted again from now.
        let late = w.add(3.0, T0 + 100 * SECOND);
        let b = w.restamp(late, 3.0, T0 + 300 * SECOND);
        assert_eq!((b, w.used(T0 + 300 * SECOND)), (late + 200, 3.0));
        // Never more than the bucket holds (a clock that went backwards, say).
        let first = w.add(1.0, T0 + 301 * SECOND);
        let b = w.restamp(first, 4.0, T0 + 302 * SECOND);
        assert_eq!((w.ring[w.slot(first)], w.ring[w.slot(b)]), (0.0, 1.0));
    }

    #[test]
    fn head_slot_follows_the_head() {
        let mut w = RollingWindow::new(128 * SECOND); // 1 s buckets, ring of 130
        for step in [0, 1, 3, 128, 129, 130, 200, 1_000] {
            let t = T0 + step * SECOND;
            let b = w.add(1.0, t);
            assert_eq!(w.head_slot, w.slot(w.head), "step {step}");
            assert_eq!(b, t / SECOND);
            w.adjust(b, 1.0, t);
            assert_eq!(w.ring[w.slot(b)], 2.0, "step {step}");
        }
    }

    #[test]
    fn admits_up_to_amount_then_names_the_time() {
        let mut w = RollingWindow::new(MIN);
        for i in 0..5 {
            assert_eq!(w.fit(1.0, 5.0, T0 + i), Fit::Now);
            w.add(1.0, T0 + i);
        }
        let Fit::At(t) = w.fit(1.0, 5.0, T0 + 10) else {
            panic!("expected a time")
        };
        // The bucket holding T0 leaves a window and the margin bucket after it ends: more
        // than a window and a bucket after T0, at most a window and two buckets after it.
        assert!(t > T0 + MIN + w.width && t <= T0 + MIN + 2 * w.width, "{t}");
        assert_eq!(w.fit(1.0, 5.0, t - 1), Fit::At(t));
        assert_eq!(w.fit(1.0, 5.0, t), Fit::Now);
        assert_eq!(w.fit(6.0, 5.0, t), Fit::Never);
        assert_eq!(w.used(t), 0.0);
    }

    #[test]
    fn wait_skips_only_as_many_buckets_as_needed() {
        let mut w = RollingWindow::new(128 * SECOND); // 1 s buckets
        w.add(3.0, T0); // oldest
        w.add(3.0, T0 + 10 * SECOND);
        w.add(3.0, T0 + 20 * SECOND);
        // cap 10, cost 4: needs the oldest 3 gone only (its bucket's end, a window and the
        // margin bucket).
        assert_eq!(
            w.fit(4.0, 10.0, T0 + 30 * SECOND),
            Fit::At(T0 + 130 * SECOND)
        );
        // cost 7 needs the first two gone.
        assert_eq!(
            w.fit(7.0, 10.0, T0 + 30 * SECOND),
            Fit::At(T0 + 140 * SECOND)
        );
        assert_eq!(w.resets_at(T0 + 30 * SECOND), Some(T0 + 150 * SECOND));
    }

    /// Inside the newest bucket and after it, with the newest bucket used or emptied by a
    /// settlement: the time all usage has left is the newest used bucket's end + a window.
    #[test]
    fn resets_at_is_when_the_newest_used_bucket_leaves() {
        let mut w = RollingWindow::new(MIN);
        let reference = |w: &RollingWindow, now: Micros| {
            w.buckets(now)
                .last()
                .map(|&(start, _)| start + (w.n + 1) * w.width)
        };
        w.add(3.0, T0);
        let newest = w.add(2.0, T0 + 10 * SECOND);
        for now in [T0 + 10 * SECOND, T0 + 10 * SECOND + 1, T0 + 30 * SECOND] {
            assert_eq!(w.resets_at(now), reference(&w, now), "at {now}");
            assert!(w.resets_at(now).is_some());
        }
        w.adjust(newest, -2.0, T0 + 10 * SECOND);
        let now = T0 + 10 * SECOND + 1;
        assert_eq!(w.resets_at(now), reference(&w, now));
        assert_eq!(
            w.resets_at(now),
            Some(T0 / w.width * w.width + (w.n + 1) * w.width)
        );
    }

    #[test]
    fn adjust_only_touches_counted_buckets() {
        let mut w = RollingWindow::new(MIN);
        let b = w.add(10.0, T0);
        w.adjust(b, -4.0, T0 + SECOND);
        assert_eq!(w.used(T0 + SECOND), 6.0);
        w.adjust(b, -100.0, T0 + SECOND);
        assert_eq!(w.used(T0 + SECOND), 0.0);
        w.adjust(b, 5.0, T0 + 2 * SECOND);
        assert_eq!(w.used(T0 + 2 * SECOND), 5.0);
        // Rolled out: nothing changes, nothing panics.
        w.adjust(b, 50.0, T0 + 3 * MIN);
        assert_eq!(w.used(T0 + 3 * MIN), 0.0);
        assert_eq!(w.resets_at(T0 + 3 * MIN), None);
    }

    #[test]
    fn clock_going_backwards_is_tolerated() {
        let mut w = RollingWindow::new(MIN);
        w.add(2.0, T0 + MIN);
        assert_eq!(w.fit(3.0, 5.0, T0), Fit::Now);
        w.add(3.0, T0);
        assert!(matches!(w.fit(1.0, 5.0, T0), Fit::At(_)));
        assert_eq!(w.used(T0), 5.0);
    }

    /// Greedy client: admits whenever possible, otherwise jumps to the named time. Returns
    /// the share of the permitted rate used after the first window (the initial burst of a
    /// fresh window is excluded, as is the time before it).
    fn saturate(len: Micros, amount: f64, cost: impl Fn(u64) -> f64, windows: u64) -> f64 {
        let mut w = RollingWindow::new(len);
        let start = T0 + 12_345;
        let (from, end) = (start + len, start + windows * len);
        let (mut t, mut admitted, mut i) = (start, 0.0, 0u64);
        while t < end {
            let c = cost(i);
            match w.fit(c, amount, t) {
                Fit::Now => {
                    w.add(c, t);
                    if t >= from {
                        admitted += c;
                    }
                    i += 1;
                }
                Fit::At(u) => t = u.max(t + 1),
                other => panic!("{other:?}"),
            }
        }
        admitted / (amount * (windows - 1) as f64)
    }

    #[test]
    fn saturation_uses_at_least_97_percent() {
        // Long horizons so that whole-window bursts do not hide the 128/130 rate.
        let u = saturate(MIN, 500.0, |_| 1.0, 400);
        assert!((0.97..=1.0).contains(&u), "utilisation {u}");
        let u = saturate(SECOND, 200.0, |i| (i % 3 + 1) as f64, 400);
        assert!((0.97..=1.0).contains(&u), "utilisation {u}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Against the full admitted log: no interval of length `len` ever holds more than
        /// `amount`, including after downward settles and refunds.
        #[test]
        fn never_overshoots_any_interval(
            len_s in 1u64..120,
            amount in 1u32..40,
            ops in prop::collection::vec((0u64..4_000_000, 1u32..6, 0u32..3), 1..300),
        ) {
            let len = len_s * SECOND;
            let amount = f64::from(amount);
            let mut w = RollingWindow::new(len);
            let mut log: Vec<(Micros, f64)> = Vec::new();
            let mut t = T0;
            for (dt, cost, settle) in ops {
                t += dt;
                let cost = f64::from(cost);
                match w.fit(cost, amount, t) {
                    Fit::Now => {
                        let b = w.add(cost, t);
                        // settle 0: keep; 1: refund; 2: settle down by half.
                        let actual = match settle { 0 => cost, 1 => 0.0, _ => (cost / 2.0).floor() };
                        w.adjust(b, actual - cost, t);
                        log.push((t, actual));
                    }
                    Fit::At(u) => prop_assert!(u > t),
                    Fit::Never => prop_assert!(cost > amount),
                    Fit::OnRelease => prop_assert!(false),
                }
                prop_assert!(w.used(t) <= amount);
            }
            for (i, &(s, _)) in log.iter().enumerate() {
                let in_window: f64 = log[i..].iter().take_while(|(u, _)| *u < s + len).map(|(_, c)| c).sum();
                prop_assert!(in_window <= amount, "{in_window} > {amount} from {s}");
            }
        }

        /// Whenever it says "At(u)", the cost fits at `u` (nothing added meanwhile), and
        /// not one bucket earlier.
        #[test]
        fn named_time_is_exact_to_a_bucket(
            amount in 2u32..50,
            ops in prop::collection::vec((0u64..3_000_000, 1u32..5), 1..100),
            probe in 1u32..5,
        ) {
            let amount = f64::from(amount);
            let mut w = RollingWindow::new(MIN);
            let mut t = T0;
            for (dt, cost) in ops {
                t += dt;
                if w.fit(f64::from(cost), amount, t).is_now() {
                    w.add(f64::from(cost), t);
                }
            }
            let probe = f64::from(probe);
            if let Fit::At(u) = w.fit(probe, amount, t) {
                let mut later = w.clone();
                prop_assert_eq!(later.fit(probe, amount, u), Fit::Now);
                prop_assert!(matches!(w.clone().fit(probe, amount, u - w.width), Fit::At(_)));
            }
        }

    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        /// Costs up to 1% of the amount, any window length: ≥ 97% of the permitted rate.
        #[test]
        fn saturation_property(len_s in 1u64..3600, amount in 100u32..1000, pct in 1u32..=100) {
            let max_cost = u64::from((amount * pct / 10_000).max(1));
            let len = len_s * SECOND;
            let u = saturate(len, f64::from(amount), |i| (i % max_cost + 1) as f64, 200);
            prop_assert!((0.97..=1.0).contains(&u), "utilisation {}", u);
        }
    }
}
