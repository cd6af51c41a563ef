//! Grants: budget a replica takes from Redis ahead of its next admissions of the same
//! counters, so that while traffic is far from every limit most admissions are decided
//! here, with no round trip, and Redis is asked once per grant.
//!
//! A grant is an ordinary admission of `size` times the call's costs, counted in Redis
//! (atomically, on the server's clock) before any of it is used: whatever the replicas
//! do with their grants, Redis never counted less than they admit, so no limit is
//! overshot. What a grant holds beyond the call that took it is spent by the next
//! admissions of the same counters, at the grant's Redis time, and only while that time
//! is still exact for them:
//!
//! - a rolling window counts usage per sub-bucket, so a grant ends with its sub-bucket;
//! - a calendar counter is per period, so a grant ends with its period;
//! - a token bucket drained early is only stricter, but a grant still lives at most
//!   [`MAX_LIFE`];
//! - concurrency leases and client-shared counters are never granted (each call is its
//!   own, as before).
//!
//! What is left when a grant ends is refunded (an adjust op at the grant's time, as a
//! cancelled admission is). A grant is only taken when the counters have room for it many
//! times over ([`HEADROOM`]), so near a limit every admission is decided by Redis alone,
//! exactly as without grants, and no budget sits unused at one replica while another
//! waits. Its size follows the rate the counters were used at (enough for the grant's
//! life, at most [`MAX_SIZE`] admissions); the first admission of a set of counters, and
//! any made while another call is already asking for a grant, ask for themselves alone.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Mutex;

use crate::quota::clock::{Micros, SECOND};
use crate::quota::shared::backend::lock;
use crate::quota::shared::plan::{adjust_op, Item, Kind, Op};

/// A grant is used for at most this long after Redis counted it.
pub(crate) const MAX_LIFE: Micros = SECOND / 10;
/// Admissions one grant holds at most.
pub(crate) const MAX_SIZE: u32 = 256;
/// A grant takes at most this fraction of the room its counters had left.
pub(crate) const HEADROOM: f64 = 1.0 / 16.0;
/// A grant is not used this close to its end (the Redis time here is an estimate).
const GUARD: Micros = 1_000;
/// A call asking for a grant longer than this is taken for gone.
const ASKING: Micros = SECOND;
/// Grants ended this long ago (refunded, nothing in flight) are forgotten.
const FORGET: Micros = 60 * SECOND;

/// What the admission of some items should do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Take {
    /// Admitted from a grant: counted in Redis at `at`; `used`: each item's usage with
    /// this admission as this replica knows it.
    Local { at: Micros, used: Vec<f64> },
    /// Ask Redis for `size` admissions' worth (1: this one alone) and report the answer
    /// with [`Grants::granted`] or [`Grants::refused`].
    Ask { size: u32 },
    /// Ask Redis for this admission alone, and report nothing (not grantable, or another
    /// call is already asking).
    Exact,
}

/// What a replica holds of one set of counters.
#[derive(Debug)]
struct Grant {
    /// The items as admitted (keys, kinds, one admission's costs): for refunds.
    items: Vec<Item>,
    /// Redis time the grant was counted at, and until which it may be used.
    at: Micros,
    until: Micros,
    /// Per item: units left, and Redis's usage after the grant was counted.
    rest: Vec<f64>,
    used: Vec<f64>,
    /// Admissions the grant was for, and those it served (the one that took it included).
    size: u32,
    served: u32,
    /// Whether the grant ran out before its end.
    exhausted: bool,
    /// A call is asking Redis for the next grant of these counters (since Redis time
    /// `asked`; a call that never reports, its request cancelled, is forgotten after
    /// [`ASKING`]).
    asking: bool,
    asked: Micros,
}

/// The grants of one backend, by set of counters.
#[derive(Debug, Default)]
pub(crate) struct Grants {
    map: Mutex<HashMap<u64, Grant, foldhash::fast::FixedState>>,
}

fn grantable(items: &[Item]) -> bool {
    !items.is_empty()
        && items.iter().all(|it| {
            it.share.is_none()
                && it.cost > 0.0
                && it.cost.is_finite()
                && !matches!(it.kind, Kind::Concurrent { .. })
        })
}

/// Whether a grant of `a` may serve `b`: the same counters, with the same caps (a caller
/// of another priority has another cap under the same counters, and a reload may change
/// it), so a grant never lets a call past a cap its own admission would have met.
fn same_counters(a: &[Item], b: &[Item]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.key == y.key && x.kind == y.kind && x.cap.to_bits() == y.cap.to_bits())
}

/// Until when a grant counted at `at` stays exact for `items`.
fn end_of(items: &[Item], at: Micros) -> Micros {
    let mut until = at.saturating_add(MAX_LIFE);
    for it in items {
        match it.kind {
            Kind::Rolling { width, .. } if width > 0 => {
                until = until.min((at / width + 1).saturating_mul(width));
            }
            Kind::Calendar { end, .. } => until = until.min(end),
            _ => {}
        }
    }
    until
}

/// The refund of what `g` has left.
fn refund(g: &mut Grant, ops: &mut Vec<Op>) {
    for (it, rest) in g.items.iter().zip(g.rest.iter_mut()) {
        if *rest > 0.0 {
            ops.extend(adjust_op(it, g.at, -*rest, false));
        }
        *rest = 0.0;
    }
}

impl Grants {
    fn key_of(&self, items: &[Item]) -> u64 {
        let mut h = foldhash::fast::FixedState::default().build_hasher();
        for it in items {
            it.key.hash(&mut h);
            it.cap.to_bits().hash(&mut h);
        }
        h.finish()
    }

    /// Decides how to admit `items` at Redis time `now`: from a grant when one holds
    /// them, else by asking Redis. Refunds of grants that ended are added to `ops`.
    pub(crate) fn take(&self, items: &[Item], now: Micros, ops: &mut Vec<Op>) -> Take {
        if !grantable(items) {
            return Take::Exact;
        }
        let key = self.key_of(items);
        let mut map = lock(&self.map);
        let Some(g) = map.get_mut(&key) else {
            map.insert(key, Grant::asking(items, now));
            return Take::Ask { size: 1 };
        };
        if !same_counters(&g.items, items) {
            // Another set of counters (or caps) with the same hash: asked for alone.
            return Take::Exact;
        }
        if g.asking && now < g.asked.saturating_add(ASKING) {
            return Take::Exact;
        }
        let live = now.saturating_add(GUARD) < g.until;
        if live && g.rest.iter().zip(items).all(|(r, it)| *r >= it.cost) {
            let mut used = Vec::with_capacity(items.len());
            for ((rest, u), it) in g.rest.iter_mut().zip(&g.used).zip(items) {
                *rest -= it.cost;
                used.push(u - *rest);
            }
            g.served += 1;
            return Take::Local { at: g.at, used };
        }
        if live {
            g.exhausted = true;
        }
        let size = g.next_size(items, now);
        refund(g, ops);
        g.asking = true;
        g.asked = now;
        Take::Ask { size }
    }

    /// Redis admitted `size` admissions of `items` at `at` (`used`: its usage per item):
    /// keeps what is beyond this call as the grant (what a grant it replaces still held
    /// goes to `ops`). Returns this admission's usage per item.
    pub(crate) fn granted(
        &self,
        items: &[Item],
        size: u32,
        at: Micros,
        used: &[f64],
        ops: &mut Vec<Op>,
    ) -> Vec<f64> {
        let key = self.key_of(items);
        let extra = f64::from(size.saturating_sub(1));
        let rest: Vec<f64> = items.iter().map(|it| it.cost * extra).collect();
        let mine = used.iter().zip(&rest).map(|(u, r)| u - r).collect();
        let mut map = lock(&self.map);
        if let Some(g) = map.get_mut(&key).filter(|g| same_counters(&g.items, items)) {
            // Only when the call asking took longer than `ASKING` and another asked
            // meanwhile: the older grant is given back, not lost.
            refund(g, ops);
            g.items.clone_from_slice(items);
            g.at = at;
            g.until = end_of(items, at);
            g.rest = rest;
            g.used = used.to_vec();
            g.size = size.max(1);
            g.served = 1;
            g.exhausted = false;
            g.asking = false;
        }
        mine
    }

    /// The call asking for a grant of `items` got none (refused, or Redis failed): the
    /// counters are taken to have no room until an answer says otherwise, so the next
    /// admissions ask for themselves alone (near a limit, a refused grant would otherwise
    /// cost every call a second round trip).
    pub(crate) fn refused(&self, items: &[Item]) {
        let key = self.key_of(items);
        if let Some(g) = lock(&self.map)
            .get_mut(&key)
            .filter(|g| same_counters(&g.items, items))
        {
            for (u, it) in g.used.iter_mut().zip(items) {
                *u = it.cap;
            }
            g.asking = false;
            g.size = 1;
            g.served = 1;
            g.exhausted = false;
            g.until = 0;
        }
    }

    /// Refunds of every grant that ended by Redis time `now` with budget left; forgets
    /// those ended long ago.
    pub(crate) fn sweep(&self, now: Micros) -> Vec<Op> {
        let mut ops = Vec::new();
        lock(&self.map).retain(|_, g| {
            if g.asking && now < g.asked.saturating_add(ASKING) {
                return true;
            }
            if now >= g.until {
                refund(g, &mut ops);
            }
            now < g.until.saturating_add(FORGET)
        });
        ops
    }

    /// Budget held in grants (units, summed over items), for tests.
    #[cfg(test)]
    pub(crate) fn held(&self) -> f64 {
        lock(&self.map).values().flat_map(|g| g.rest.iter()).sum()
    }
}

impl Grant {
    fn asking(items: &[Item], now: Micros) -> Grant {
        Grant {
            items: items.to_vec(),
            at: 0,
            until: 0,
            rest: vec![0.0; items.len()],
            used: vec![0.0; items.len()],
            size: 1,
            served: 0,
            exhausted: false,
            asking: true,
            asked: now,
        }
    }

    /// The size of the next grant, asked at `now`: the admissions the last one served per
    /// unit of time, over the new grant's likely life, with half again as margin (twice
    /// the last size if it ran out early); bounded by [`MAX_SIZE`] and by [`HEADROOM`] of
    /// the room each counter had at the last answer.
    fn next_size(&self, items: &[Item], now: Micros) -> u32 {
        let elapsed = now.saturating_sub(self.at).max(1) as f64;
        let life = end_of(items, now).saturating_sub(now) as f64;
        let mut size = (f64::from(self.served) / elapsed * life * 1.5).ceil();
        if self.exhausted {
            size = size.max(f64::from(self.size) * 2.0);
        }
        for (it, used) in items.iter().zip(&self.used) {
            let room = (it.cap - used).max(0.0) * HEADROOM / it.cost;
            size = size.min(room.floor());
        }
        size.clamp(1.0, f64::from(MAX_SIZE)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::spec::Scope;
    use crate::quota::unit::Unit;

    const MS: Micros = 1_000;

    fn item(key: &str, kind: Kind, cost: f64, cap: f64) -> Item {
        Item {
            key: key.to_string(),
            kind,
            unit: Unit::Requests,
            cost,
            cap,
            capacity: cap,
            limit: key.to_string(),
            scope: Scope::Provider,
            scope_id: String::new(),
            share: None,
        }
    }

    fn rolling(key: &str, cap: f64) -> Item {
        // A 64 s window: 1 s sub-buckets.
        item(
            key,
            Kind::Rolling {
                width: SECOND,
                n: 64,
            },
            1.0,
            cap,
        )
    }

    /// Serves `n` admissions at `now` on, `step` apart; returns how many were local.
    fn serve(g: &Grants, items: &[Item], now: Micros, step: Micros, n: u32) -> u32 {
        let mut local = 0;
        let mut ops = Vec::new();
        for i in 0..n {
            let t = now + Micros::from(i) * step;
            match g.take(items, t, &mut ops) {
                Take::Local { .. } => local += 1,
                Take::Ask { size } => {
                    let used = vec![100.0; items.len()];
                    g.granted(items, size, t, &used, &mut ops);
                }
                Take::Exact => {}
            }
        }
        local
    }

    #[test]
    fn the_first_admission_asks_alone_and_a_busy_set_of_counters_then_grows_its_grants() {
        let g = Grants::default();
        let items = [rolling("a", 1e9)];
        let mut ops = Vec::new();
        assert_eq!(g.take(&items, 10 * SECOND, &mut ops), Take::Ask { size: 1 });
        g.granted(&items, 1, 10 * SECOND, &[1.0], &mut ops);
        // Nothing held: the next asks, for more (the last one ran out at once).
        match g.take(&items, 10 * SECOND + MS, &mut ops) {
            Take::Ask { size } => assert!(size >= 2, "{size}"),
            other => panic!("{other:?}"),
        }
        g.granted(&items, 8, 10 * SECOND + MS, &[9.0], &mut ops);
        // Seven left, each counted at the grant's time with the usage known here.
        for k in 1..=7 {
            match g.take(&items, 10 * SECOND + MS + k * 10, &mut ops) {
                Take::Local { at, used } => {
                    assert_eq!(at, 10 * SECOND + MS);
                    assert_eq!(used, vec![2.0 + k as f64]);
                }
                other => panic!("admission {k}: {other:?}"),
            }
        }
        assert!(
            matches!(g.take(&items, 10 * SECOND + 2 * MS, &mut ops), Take::Ask { size } if size >= 16)
        );
        assert!(ops.is_empty(), "nothing to refund: {ops:?}");
        // At 1k admissions/s, most are served here.
        let local = serve(&g, &items, 11 * SECOND, MS, 2000);
        assert!(local > 1900, "{local} of 2000 served locally");
    }

    #[test]
    fn a_grant_ends_with_its_sub_bucket_and_its_rest_is_refunded_at_its_time() {
        let g = Grants::default();
        // A 1 s window: 50 ms sub-buckets.
        let items = [item(
            "a",
            Kind::Rolling {
                width: 50 * MS,
                n: 20,
            },
            1.0,
            1e9,
        )];
        let mut ops = Vec::new();
        g.take(&items, 5 * SECOND, &mut ops);
        g.granted(&items, 1, 5 * SECOND, &[1.0], &mut ops);
        g.take(&items, 5 * SECOND + 100 * MS, &mut ops);
        g.granted(&items, 10, 5 * SECOND + 100 * MS, &[11.0], &mut ops);
        assert_eq!(g.held(), 9.0);
        // Inside its sub-bucket (5.10-5.15 s): local. From its end (well before its
        // 100 ms life): asked again, and the six left are refunded into that sub-bucket.
        for t in [120, 140, 148] {
            let take = g.take(&items, 5 * SECOND + t * MS, &mut ops);
            assert!(matches!(take, Take::Local { .. }), "at {t} ms: {take:?}");
        }
        assert!(matches!(
            g.take(&items, 5 * SECOND + 149 * MS + 1, &mut ops),
            Take::Ask { .. }
        ));
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].0, "a");
        assert_eq!(ops[0].1[1], "-6");
        assert_eq!(
            ops[0].1[2], "102",
            "refunded into sub-bucket 102 (5.1 s / 50 ms)"
        );
        assert_eq!(g.held(), 0.0);
    }

    #[test]
    fn a_grant_is_not_used_within_the_guard_of_its_end_nor_past_its_life() {
        let g = Grants::default();
        let bucket = [item(
            "b",
            Kind::Bucket {
                rate: 1.0,
                burst: 1e9,
            },
            1.0,
            1e9,
        )];
        let mut ops = Vec::new();
        g.take(&bucket, SECOND, &mut ops);
        g.granted(&bucket, 50, SECOND, &[50.0], &mut ops);
        assert!(matches!(
            g.take(&bucket, SECOND + MAX_LIFE - GUARD - 1, &mut ops),
            Take::Local { .. }
        ));
        assert!(matches!(
            g.take(&bucket, SECOND + MAX_LIFE - GUARD, &mut ops),
            Take::Ask { .. }
        ));
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].1[1], "-48");
    }

    #[test]
    fn near_a_limit_every_admission_asks_redis_alone() {
        let g = Grants::default();
        // 20 left of 100: a sixteenth of the room is 1.25 admissions, so none are granted.
        let items = [rolling("a", 100.0)];
        let mut ops = Vec::new();
        g.take(&items, SECOND, &mut ops);
        g.granted(&items, 1, SECOND, &[80.0], &mut ops);
        for i in 0..20 {
            let size = match g.take(&items, SECOND + i * 10, &mut ops) {
                Take::Ask { size } => size,
                other => panic!("{other:?}"),
            };
            assert_eq!(size, 1);
            g.granted(&items, size, SECOND + i * 10, &[81.0 + i as f64], &mut ops);
        }
        assert_eq!(g.held(), 0.0);
        // With plenty of room the same counters are granted again.
        g.take(&items, 3 * SECOND, &mut ops);
        g.granted(&items, 1, 3 * SECOND, &[0.0], &mut ops);
        assert!(
            matches!(g.take(&items, 3 * SECOND + 10, &mut ops), Take::Ask { size } if size > 1)
        );
    }

    #[test]
    fn calls_beside_one_asking_ask_alone_and_a_refusal_starts_over_at_one() {
        let g = Grants::default();
        let items = [rolling("a", 1e9)];
        let mut ops = Vec::new();
        assert_eq!(g.take(&items, SECOND, &mut ops), Take::Ask { size: 1 });
        assert_eq!(g.take(&items, SECOND, &mut ops), Take::Exact);
        g.refused(&items);
        assert_eq!(g.take(&items, SECOND + 10, &mut ops), Take::Ask { size: 1 });
        g.granted(&items, 1, SECOND + 10, &[5.0], &mut ops);
        // Busy far from the limit: the next asks for a grant; refused (another replica
        // took the room), the calls after it ask alone until an answer shows room again.
        let size = match g.take(&items, SECOND + 20, &mut ops) {
            Take::Ask { size } => size,
            other => panic!("{other:?}"),
        };
        assert!(size > 1, "{size}");
        g.refused(&items);
        for t in 0..5 {
            assert_eq!(
                g.take(&items, SECOND + 30 + t, &mut ops),
                Take::Ask { size: 1 }
            );
            g.refused(&items);
        }
        assert_eq!(g.take(&items, SECOND + 40, &mut ops), Take::Ask { size: 1 });
        g.granted(&items, 1, SECOND + 40, &[6.0], &mut ops);
        assert!(matches!(g.take(&items, SECOND + 50, &mut ops), Take::Ask { size } if size > 1));
        assert_eq!(g.take(&items, SECOND + 60, &mut ops), Take::Exact);
        g.refused(&items);
        assert_eq!(g.take(&items, SECOND + 70, &mut ops), Take::Ask { size: 1 });
        // A call that never reports (its request cancelled) blocks grants for a while only.
        assert_eq!(g.take(&items, SECOND + 20, &mut ops), Take::Exact);
        assert!(matches!(
            g.take(&items, SECOND + 70 + ASKING, &mut ops),
            Take::Ask { .. }
        ));
    }

    #[test]
    fn a_caller_with_another_cap_on_the_same_counters_has_its_own_grant() {
        // A low-priority caller's cap (a reserve held back for higher priorities) is not
        // served from a grant taken under the whole amount.
        let g = Grants::default();
        let high = [rolling("a", 1e6)];
        let mut low = high.clone();
        low[0].cap = 8e5;
        let mut ops = Vec::new();
        g.take(&high, SECOND, &mut ops);
        g.granted(&high, 1, SECOND, &[1.0], &mut ops);
        g.take(&high, SECOND + 10, &mut ops);
        g.granted(&high, 50, SECOND + 10, &[51.0], &mut ops);
        assert!(matches!(
            g.take(&high, SECOND + 20, &mut ops),
            Take::Local { .. }
        ));
        assert_eq!(g.take(&low, SECOND + 30, &mut ops), Take::Ask { size: 1 });
        assert!(matches!(
            g.take(&high, SECOND + 40, &mut ops),
            Take::Local { .. }
        ));
        assert!(ops.is_empty());
    }

    #[test]
    fn concurrency_shares_and_zero_costs_are_never_granted() {
        let g = Grants::default();
        let mut ops = Vec::new();
        let lease = item(
            "k",
            Kind::Concurrent {
                lease: SECOND,
                member: "m".into(),
            },
            1.0,
            5.0,
        );
        assert_eq!(
            g.take(&[rolling("a", 1e9), lease], SECOND, &mut ops),
            Take::Exact
        );
        let mut shared = item(
            "c",
            Kind::Calendar {
                start: 0,
                end: 100 * SECOND,
            },
            1.0,
            1e9,
        );
        shared.share = Some(crate::quota::shared::plan::ShareArgs {
            group: 0,
            borrow: false,
            groups: vec![("*".into(), 1.0)],
        });
        assert_eq!(g.take(&[shared], SECOND, &mut ops), Take::Exact);
        let mut free = rolling("a", 1e9);
        free.cost = 0.0;
        assert_eq!(g.take(&[free], SECOND, &mut ops), Take::Exact);
    }

    #[test]
    fn a_calendar_grant_ends_with_its_period_and_the_sweep_refunds_idle_grants() {
        let g = Grants::default();
        let items = [item(
            "c",
            Kind::Calendar {
                start: 0,
                end: 10 * SECOND,
            },
            2.0,
            1e9,
        )];
        let mut ops = Vec::new();
        g.take(&items, 10 * SECOND - 50 * MS, &mut ops);
        g.granted(&items, 1, 10 * SECOND - 50 * MS, &[2.0], &mut ops);
        g.take(&items, 10 * SECOND - 40 * MS, &mut ops);
        g.granted(&items, 4, 10 * SECOND - 40 * MS, &[10.0], &mut ops);
        assert!(g.sweep(10 * SECOND - 1).is_empty());
        let ops = g.sweep(10 * SECOND);
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].1[1], "-6");
        assert!(g.sweep(10 * SECOND + 1).is_empty(), "refunded once");
        // Long idle: forgotten.
        assert!(g.sweep(10 * SECOND + FORGET).is_empty());
        assert_eq!(
            g.take(&items, 10 * SECOND + FORGET, &mut Vec::new()),
            Take::Ask { size: 1 }
        );
    }
}
