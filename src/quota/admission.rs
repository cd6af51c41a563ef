//! The admission decision (pure): does a call fit EVERY applicable limit now? If so reserve
//! its estimate in all of them at once; if not, say when all would fit, or that one never
//! will.

use crate::quota::clock::Micros;
use crate::quota::fit::{Fit, Undo};
use crate::quota::priority::Priority;
use crate::quota::reservation::{Item, Reservation, NO_GROUP};
use crate::quota::shares::ShareFit;
use crate::quota::spec::Scope;
use crate::quota::state::{Entry, ProviderState, Slot};
use crate::quota::unit::Costs;
use crate::quota::verdict::{Admission, TooLarge, Verdict, Wait, WarnEvent};

/// One call asking to be admitted.
#[derive(Debug, Clone, Copy)]
pub struct Demand<'a> {
    /// Client id (scope `client`, share groups).
    pub client: &'a str,
    /// Key id (scope `key`); key-scope limits are skipped when `None`.
    pub key: Option<&'a str>,
    /// Account (scope `account`); account-scope limits are skipped when `None`.
    pub account: Option<&'a str>,
    /// Priority (reserves).
    pub priority: Priority,
    /// Estimated costs.
    pub costs: Costs,
    /// Alternative keys, in preference order: the first whose key- and account-scope
    /// limits admit the call is chosen (empty: `key`/`account` above are used as given).
    pub keys: &'a [KeyOption<'a>],
}

/// One key a call may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyOption<'a> {
    pub key: &'a str,
    pub account: Option<&'a str>,
}

impl<'a> Demand<'a> {
    /// A normal-priority demand of `client` with no key or account.
    pub fn new(client: &'a str, costs: Costs) -> Self {
        Self {
            client,
            key: None,
            account: None,
            priority: Priority::Normal,
            costs,
            keys: &[],
        }
    }

    /// Builder: the keys the call may use, in preference order.
    pub fn with_keys(mut self, keys: &'a [KeyOption<'a>]) -> Self {
        self.keys = keys;
        self
    }

    /// Builder: sets the key id.
    pub fn with_key(mut self, key: &'a str) -> Self {
        self.key = Some(key);
        self
    }

    /// Builder: sets the account.
    pub fn with_account(mut self, account: &'a str) -> Self {
        self.account = Some(account);
        self
    }

    /// Builder: sets the priority.
    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }
}

/// A call counted by [`ProviderState::count_if_fits`], not yet made a [`Reservation`].
#[must_use = "counted items must become a reservation"]
pub(crate) struct Counted {
    items: Vec<Item>,
    restamp_after: Micros,
}

impl Counted {
    /// The reservation in the state `state_id` at `generation`, admitted at `now`.
    #[inline]
    pub(crate) fn into_reservation(
        self,
        state_id: u64,
        generation: u64,
        now: Micros,
    ) -> Reservation {
        let mut res = Reservation::new(state_id, generation, self.items, now);
        res.restamp_after = self.restamp_after;
        res
    }
}

/// Warnings kept for [`ProviderState::take_warnings`] before new ones are dropped.
const MAX_PENDING_WARNINGS: usize = 1024;

/// The scope id a limit counts this demand under, or `None` when it does not apply.
#[inline]
pub(crate) fn scope_id<'d>(e: &Entry, d: &Demand<'d>) -> Option<&'d str> {
    match e.spec.scope {
        Scope::Provider => Some(""),
        Scope::Account => d.account,
        Scope::Client => Some(d.client),
        Scope::Key => {
            let key = d.key?;
            let applies = match &e.only_key {
                Some(only) => **only == *key,
                None => !e.except_keys.iter().any(|k| **k == *key),
            };
            applies.then_some(key)
        }
    }
}

/// The slot of a limit of another scope than the provider's for this demand: `None` when
/// the limit does not apply to it, `Some(None)` when its counter does not exist yet.
#[inline(never)]
fn scoped_slot(e: &Entry, d: &Demand<'_>) -> Option<Option<u32>> {
    let sid = scope_id(e, d)?;
    Some(e.by_scope.get(sid).copied())
}

/// Reports a first crossing of `warn_at` in this window; re-arms below it.
pub(crate) fn check_warn(e: &Entry, s: &mut Slot, out: &mut Vec<WarnEvent>, now: Micros) {
    let Some(fraction) = e.spec.warn_at else {
        return;
    };
    let amount = s.meter.capacity(e.spec.amount);
    let used = s.meter.used(now);
    let period = s.meter.period_start().unwrap_or(0);
    if used > 0.0 && used >= fraction * amount {
        if s.warned != Some(period) {
            s.warned = Some(period);
            if out.len() >= MAX_PENDING_WARNINGS {
                return;
            }
            out.push(WarnEvent {
                limit: e.spec.name.clone(),
                scope: e.spec.scope,
                scope_id: s.scope_id.to_string(),
                used,
                amount,
                warn_at: fraction,
            });
        }
    } else {
        s.warned = None;
    }
}

impl ProviderState {
    /// Admits `demand` at `now` if every applicable limit has room, reserving its estimate
    /// in all of them (all or nothing); otherwise reserves nothing and says when it would
    /// fit or that it never will. In shadow mode the call is always admitted and counted,
    /// and the would-be refusal is kept in [`Reservation::shadow_verdict`].
    pub fn try_admit(&mut self, demand: &Demand<'_>, now: Micros) -> Admission {
        if let Some(counted) = self.count_if_fits(demand, now) {
            return Admission::Admitted(counted.into_reservation(self.id, self.generation, now));
        }
        let mut items = self.take_items();
        let verdict = self.decide(demand, now, &mut items);
        let shadow_verdict = match verdict {
            None => None,
            Some(v) if self.spec.shadow => Some(Box::new(v)),
            Some(v) => {
                self.recycle(items);
                return match v {
                    Verdict::Wait(w) => Admission::Wait(w),
                    Verdict::TooLarge(t) => Admission::TooLarge(t),
                };
            }
        };
        let restamp_after = self.apply(&mut items, now);
        let mut res = Reservation::new(self.id, self.generation, items, now);
        res.shadow_verdict = shadow_verdict;
        res.restamp_after = restamp_after;
        Admission::Admitted(res)
    }

    /// The common case of [`try_admit`](Self::try_admit): every applicable limit has room
    /// now, and the call is counted in each. `None` (nothing counted) sends the caller to
    /// `try_admit`'s full decision. A caller holding this state under a lock builds the
    /// reservation after releasing it: the lock's release then waits on fewer stores.
    ///
    /// One pass over the limits checks and counts each (then `items` is exactly what
    /// `decide` would fill). At the first that has no room now, or that is governed by
    /// client shares, the counts taken so far are put back exactly and `decide` answers.
    /// It never creates a counter: a limit+scope seen for the first time goes to `decide`.
    #[inline(always)]
    pub(crate) fn count_if_fits(&mut self, d: &Demand<'_>, now: Micros) -> Option<Counted> {
        let mut items = self.take_items();
        let priority = d.priority as usize;
        let mut restamp_after = Micros::MAX;
        let Self {
            entries,
            slots,
            undo,
            ..
        } = self;
        // One undo per limit, written by item index: no length to keep.
        if undo.len() < entries.len() {
            undo.resize(entries.len(), Undo::default());
        }
        let counted_all = 'all: {
            for e in entries.iter() {
                // A provider-scope limit (the common case) is one field away; the others
                // look their scope id up out of line, which keeps this loop's registers free.
                let found = if e.spec.scope == Scope::Provider {
                    e.provider_slot
                } else {
                    match scoped_slot(e, d) {
                        Some(found) => found,
                        None => continue,
                    }
                };
                let cost = d.costs.raw(e.spec.unit);
                // Zero, negative and NaN costs (0 to `Costs::get`) count nothing here.
                if cost.is_nan() || cost <= 0.0 {
                    continue;
                }
                // An infinite one (`f64::MAX` to `get`) is too large: `decide` says so.
                if cost == f64::INFINITY {
                    break 'all false;
                }
                let Some(slot) = found.filter(|_| !e.shared) else {
                    break 'all false;
                };
                let Some(s) = slots.get_mut(slot as usize) else {
                    break 'all false;
                };
                let cap = &e.caps[priority];
                debug_assert_eq!(
                    cap.cap.to_bits(),
                    (s.meter.capacity(e.spec.amount) * (1.0 - e.spec.reserve.fraction(d.priority)))
                        .to_bits()
                );
                let Some((tag, ends, u)) = s.meter.add_if_fits(cost, cap, now) else {
                    break 'all false;
                };
                // Not saturating: four billion calls in flight in one slot cannot be held.
                s.outstanding += 1;
                undo[items.len()] = u;
                items.push(Item {
                    slot,
                    cost,
                    tag,
                    group: NO_GROUP,
                });
                restamp_after = restamp_after.min(ends);
            }
            true
        };
        if !counted_all {
            self.put_back(items);
            return None;
        }
        // No item is charged to a share group: only warnings may be left to do.
        if self.warns {
            self.count_shares_and_warn(&items, now);
        }
        Some(Counted {
            items,
            restamp_after,
        })
    }

    /// Takes back what [`count_if_fits`](Self::count_if_fits) counted before a limit without
    /// room stopped it, and recycles the list.
    #[cold]
    #[inline(never)]
    fn put_back(&mut self, items: Vec<Item>) {
        for (item, undo) in items.iter().zip(&self.undo).rev() {
            let s = &mut self.slots[item.slot as usize];
            s.meter.undo_add(*undo);
            s.outstanding -= 1;
        }
        self.recycle(items);
    }

    /// The decision `try_admit` would take, reserving nothing (even in shadow mode):
    /// `None` when the call fits now. Useful to pick a key that has room.
    pub fn check(&mut self, demand: &Demand<'_>, now: Micros) -> Option<Verdict> {
        let mut items = self.take_items();
        let verdict = self.decide(demand, now, &mut items);
        self.recycle(items);
        verdict
    }

    /// Fills `items` with every applicable limit+scope and its cost; returns the refusal,
    /// if any. Counts nothing.
    fn decide(&mut self, d: &Demand<'_>, now: Micros, items: &mut Vec<Item>) -> Option<Verdict> {
        let group = self.shares.as_ref().map(|t| t.group_of(d.client));
        let mut latest: Option<(Micros, usize)> = None;
        let mut release: Option<usize> = None;
        let mut never: Option<(usize, f64, f64)> = None;
        for ei in 0..self.entries.len() {
            let Some(sid) = scope_id(&self.entries[ei], d) else {
                continue;
            };
            let cost = d.costs.get(self.entries[ei].spec.unit);
            if cost <= 0.0 {
                continue;
            }
            let slot = self.slot_for(ei, sid) as usize;
            let (fit, cap) = self.fit_slot(ei, slot, group, cost, d.priority, now);
            match fit {
                Fit::Now => {}
                Fit::At(t) => {
                    if latest.is_none_or(|(u, _)| t > u) {
                        latest = Some((t, slot));
                    }
                }
                Fit::OnRelease => release = release.or(Some(slot)),
                Fit::Never => never = never.or(Some((slot, cost, cap))),
            }
            let shared = self.entries[ei].shared;
            items.push(Item {
                slot: slot as u32,
                cost,
                tag: 0,
                group: match group {
                    Some(g) if shared => g as u32,
                    _ => NO_GROUP,
                },
            });
        }
        if let Some((slot, cost, cap)) = never {
            let (limit, scope, scope_id) = self.describe(slot);
            let amount = self.amount_of(slot);
            return Some(Verdict::TooLarge(TooLarge {
                limit,
                scope,
                scope_id,
                cost,
                cap,
                amount,
            }));
        }
        let slot = release.or(latest.map(|(_, s)| s))?;
        let (limit, scope, scope_id) = self.describe(slot);
        Some(Verdict::Wait(Wait {
            until: latest.map_or(now, |(t, _)| t),
            on_release: release.is_some(),
            limit,
            scope,
            scope_id,
        }))
    }

    /// Fit of one limit+scope under the priority cap and the client-share rule.
    fn fit_slot(
        &mut self,
        ei: usize,
        slot: usize,
        group: Option<usize>,
        cost: f64,
        priority: Priority,
        now: Micros,
    ) -> (Fit, f64) {
        let e = &self.entries[ei];
        let s = &mut self.slots[slot];
        let capacity = s.meter.capacity(e.spec.amount);
        let cap = capacity * (1.0 - e.spec.reserve.fraction(priority));
        let fit = s.meter.fit(cost, cap, now);
        let (Some(table), Some(g), true) = (&self.shares, group, e.shared) else {
            return (fit, cap);
        };
        if fit == Fit::Never {
            return (fit, cap);
        }
        let period = s.meter.period_start().unwrap_or(0);
        let book = s.book.get_or_insert_with(|| table.book(period));
        if book.period != period {
            *book = table.book(period);
        }
        match table.check(book, g, s.meter.used(now), cost, capacity) {
            ShareFit::Ok => (fit, cap),
            ShareFit::Never => (Fit::Never, cap.min(table.max_for(g, capacity))),
            ShareFit::Later => {
                let end = s.meter.resets_at(now).unwrap_or(now);
                match fit {
                    Fit::At(t) => (Fit::At(t.max(end)), cap),
                    _ => (Fit::At(end), cap),
                }
            }
        }
    }

    /// Counts every item of a decided reservation; returns when sending it would first
    /// move a count (the reservation's `restamp_after`).
    fn apply(&mut self, items: &mut [Item], now: Micros) -> Micros {
        let mut restamp_after = Micros::MAX;
        let mut grouped = false;
        for item in items.iter_mut() {
            let s = &mut self.slots[item.slot as usize];
            let (tag, ends) = s.meter.add_until(item.cost, now);
            item.tag = tag;
            restamp_after = restamp_after.min(ends);
            s.outstanding = s.outstanding.saturating_add(1);
            grouped |= item.group != NO_GROUP;
        }
        if grouped || self.warns {
            self.count_shares_and_warn(items, now);
        }
        restamp_after
    }

    /// The rest of [`apply`](Self::apply), for the calls that need it: the client-share
    /// books of the items charged to a share group, and the `warn_at` crossings.
    #[inline(never)]
    fn count_shares_and_warn(&mut self, items: &[Item], now: Micros) {
        for item in items {
            let s = &mut self.slots[item.slot as usize];
            let e = &self.entries[s.entry as usize];
            if let (true, Some(book)) = (item.group != NO_GROUP, &mut s.book) {
                if book.period == item.tag {
                    if let Some(u) = book.used.get_mut(item.group as usize) {
                        *u += item.cost;
                    }
                }
            }
            if e.spec.warn_at.is_some() {
                check_warn(e, s, &mut self.warnings, now);
            }
        }
    }

    /// Name, scope and scope id of a slot's limit.
    pub(crate) fn describe(&self, slot: usize) -> (String, Scope, String) {
        let s = &self.slots[slot];
        let e = &self.entries[s.entry as usize];
        (e.spec.name.clone(), e.spec.scope, s.scope_id.to_string())
    }

    fn amount_of(&self, slot: usize) -> f64 {
        let s = &self.slots[slot];
        s.meter.capacity(self.entries[s.entry as usize].spec.amount)
    }
}

#[cfg(test)]
#[path = "admission_tests.rs"]
pub(crate) mod tests;
