//! Settling a reservation to what the call actually cost, or cancelling it.

use crate::quota::admission::check_warn;
use crate::quota::clock::Micros;
use crate::quota::meter::Meter;
use crate::quota::reservation::{Reservation, Settled, NO_GROUP};
use crate::quota::state::ProviderState;
use crate::quota::unit::Costs;

impl ProviderState {
    /// Corrects every limit the reservation holds from its estimate to `actual` (larger or
    /// smaller) and releases its concurrency. Where the reservation's rolling bucket or
    /// calendar period has already left the window only what is still counted changes
    /// (nothing). Reservations from another state, or from before a reload that dropped
    /// their limit, are ignored for that limit. Never panics.
    ///
    /// Counters never move backwards in time, so any `now` at or after the admission gives
    /// the same counts: a bucket or period that ended meanwhile is either already dropped
    /// (the correction is ignored) or dropped at the next advance (it is harmless).
    pub fn settle(&mut self, reservation: Reservation, actual: &Costs, now: Micros) {
        self.finish(reservation, Settled::Actual(actual), now);
    }

    /// Nothing was sent: every reserved unit is returned and concurrency released.
    pub fn cancel(&mut self, reservation: Reservation, now: Micros) {
        self.finish(reservation, Settled::Nothing, now);
    }

    /// Settles at the estimate: keeps what was reserved, releases concurrency.
    pub fn settle_at_estimate(&mut self, reservation: Reservation, now: Micros) {
        self.finish(reservation, Settled::Estimate, now);
    }

    /// The call is leaving now (`now`, later than its admission): its rolling-window counts
    /// move to the buckets of `now`, so a window counts the call from when the upstream
    /// gets it, not from its admission. What it waited for in between (a new upstream
    /// connection, a TLS handshake) would otherwise end its window that much early, and a
    /// call admitted then could reach the upstream less than a window after it. Other kinds
    /// count the call where it was admitted: a calendar period does not end in the time a
    /// connection takes (at its edge the call counts in the earlier period), and a token
    /// bucket or concurrency gauge does not depend on it. Cheap to call early: nothing moves
    /// before the reservation's newest bucket ends.
    pub fn restamp(&mut self, res: &mut Reservation, now: Micros) {
        if res.state_id != self.id || now < res.restamp_after {
            return;
        }
        let mut after = Micros::MAX;
        for item in res.items.iter_mut() {
            let Some(slot) = self.resolve(res.generation, item.slot) else {
                continue;
            };
            if let Meter::Rolling(w) = &mut self.slots[slot].meter {
                item.tag = w.restamp(item.tag, item.cost, now);
                after = after.min(w.head_end());
            }
        }
        res.restamp_after = after;
    }

    pub(crate) fn finish(&mut self, res: Reservation, how: Settled<'_>, now: Micros) {
        if res.state_id != self.id {
            return;
        }
        let same_generation = res.generation == self.generation;
        for item in &res.items {
            let Some(slot) = self.resolve(res.generation, item.slot) else {
                continue;
            };
            let s = &mut self.slots[slot];
            let e = &self.entries[s.entry as usize];
            let actual = how.amount(e.spec.unit, item.cost);
            // An exact estimate changes no counter (concurrency is still released).
            if actual != item.cost || matches!(s.meter, Meter::Concurrent(_)) {
                s.meter.settle(item.tag, item.cost, actual, now);
            }
            s.outstanding = s.outstanding.saturating_sub(1);
            if let (Some(book), true) = (&mut s.book, item.group != NO_GROUP && same_generation) {
                if book.period == item.tag {
                    if let Some(u) = book.used.get_mut(item.group as usize) {
                        *u = (*u + actual - item.cost).max(0.0);
                    }
                }
            }
            if e.spec.warn_at.is_some() {
                check_warn(e, s, &mut self.warnings, now);
            }
        }
        self.recycle(res.items);
    }
}
