//! Read-only views of the counters, for `/status`, metrics and the dashboard.

use crate::quota::calendar::period_bounds;
use crate::quota::clock::Micros;
use crate::quota::spec::{Scope, WindowKind};
use crate::quota::state::{Entry, ProviderState, Slot, NONE};
use crate::quota::unit::Unit;

/// One limit for one scope id at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitStatus {
    /// The limit's name.
    pub name: String,
    /// What it counts.
    pub unit: Unit,
    /// Its scope.
    pub scope: Scope,
    /// The scope id (`""` for the provider).
    pub scope_id: String,
    /// Used now (token bucket: missing from a full bucket; concurrency: in flight).
    pub used: f64,
    /// Capacity (token bucket: `burst`).
    pub amount: f64,
    /// `amount - used`, never negative.
    pub remaining: f64,
    /// The window in words (`"1m"`, `"day (UTC)"`, `"token_bucket/1m"`, `"concurrent"`).
    pub window: String,
    /// When usage next resets (see [`Meter::resets_at`](crate::quota::meter::Meter::resets_at)).
    pub resets_at: Option<Micros>,
    /// Per share group usage, for provider-scope calendar limits with client shares.
    pub shares: Vec<ShareStatus>,
}

/// One client-share group's usage of a limit.
#[derive(Debug, Clone, PartialEq)]
pub struct ShareStatus {
    /// The client, or `None` for every client not listed.
    pub client: Option<String>,
    /// Used in the current period.
    pub used: f64,
    /// Guaranteed in the period.
    pub guaranteed: f64,
}

/// The limit with the least remaining fraction among those that apply to one call: what
/// the `RateLimit` response headers advertise.
#[derive(Debug, Clone, PartialEq)]
pub struct Headroom {
    /// The limit's name.
    pub name: std::sync::Arc<str>,
    /// Capacity (token bucket: `burst`).
    pub amount: f64,
    /// Left now, never negative.
    pub remaining: f64,
    /// A rolling window's length in whole seconds (at least 1); `None` for other windows.
    pub window_secs: Option<u64>,
    /// When usage next resets.
    pub resets_at: Option<Micros>,
}

impl ProviderState {
    /// The counter with the smallest `remaining / amount` among those that apply to a call by
    /// `client` with `key` of `account` (concurrency limits and zero amounts left out; the
    /// first in limit order on a tie). The same answer as filtering [`snapshot`] by scope,
    /// without building it: one lookup per limit, one allocation (the name).
    ///
    /// [`snapshot`]: ProviderState::snapshot
    pub fn tightest(
        &self,
        client: &str,
        key: Option<&str>,
        account: Option<&str>,
        now: Micros,
    ) -> Option<Headroom> {
        // (fraction, entry, its counter if it has one, amount, remaining); when usage
        // resets is read for the winner only.
        let mut best: Option<(f64, &Entry, Option<&Slot>, f64, f64)> = None;
        for (ei, e) in self.entries.iter().enumerate() {
            if e.spec.unit == Unit::Concurrent {
                continue;
            }
            let (slot, amount, remaining) =
                if e.spec.scope == Scope::Provider && e.provider_slot.is_none() {
                    let amount = unused_amount(e);
                    (None, amount, amount.max(0.0))
                } else {
                    let slot = match e.spec.scope {
                        Scope::Provider => e.provider_slot,
                        Scope::Client => e.by_scope.get(client).copied(),
                        Scope::Key => key.and_then(|k| e.by_scope.get(k).copied()),
                        Scope::Account => account.and_then(|a| e.by_scope.get(a).copied()),
                    };
                    let Some(s) = slot
                        .and_then(|i| self.slots.get(i as usize))
                        .filter(|s| s.entry == ei as u32)
                    else {
                        continue;
                    };
                    let amount = s.meter.capacity(e.spec.amount);
                    let used = s.meter.used(now);
                    (Some(s), amount, (amount - used).max(0.0))
                };
            if amount <= 0.0 {
                continue;
            }
            let fraction = remaining / amount;
            if best
                .as_ref()
                .is_none_or(|b| fraction.total_cmp(&b.0) == std::cmp::Ordering::Less)
            {
                best = Some((fraction, e, slot, amount, remaining));
            }
        }
        best.map(|(_, e, slot, amount, remaining)| Headroom {
            name: std::sync::Arc::clone(&e.name),
            amount,
            remaining,
            window_secs: match e.spec.window {
                WindowKind::Rolling { len } => Some((len / crate::quota::clock::SECOND).max(1)),
                _ => None,
            },
            resets_at: match slot {
                Some(s) => s.meter.resets_at(now),
                None => unused_resets_at(e, now),
            },
        })
    }

    /// Every counter that exists, in limit order (scope ids sorted); provider-scope limits
    /// are listed even before their first use.
    pub fn snapshot(&self, now: Micros) -> Vec<LimitStatus> {
        let mut out = Vec::new();
        for (ei, e) in self.entries.iter().enumerate() {
            if e.spec.scope == Scope::Provider && e.provider_slot.is_none() {
                out.push(self.unused_status(e, now));
                continue;
            }
            let mut slots: Vec<&Slot> = self
                .slots
                .iter()
                .filter(|s| s.entry == ei as u32 && s.entry != NONE)
                .collect();
            slots.sort_by(|a, b| a.scope_id.cmp(&b.scope_id));
            out.extend(slots.into_iter().map(|s| self.slot_status(e, s, now)));
        }
        out
    }

    fn unused_status(&self, e: &Entry, now: Micros) -> LimitStatus {
        let (amount, resets_at) = (unused_amount(e), unused_resets_at(e, now));
        LimitStatus {
            name: e.spec.name.clone(),
            unit: e.spec.unit,
            scope: e.spec.scope,
            scope_id: String::new(),
            used: 0.0,
            amount,
            remaining: amount.max(0.0),
            window: e.spec.window.to_string(),
            resets_at,
            shares: Vec::new(),
        }
    }

    fn slot_status(&self, e: &Entry, s: &Slot, now: Micros) -> LimitStatus {
        let amount = s.meter.capacity(e.spec.amount);
        let used = s.meter.used(now);
        let shares = match (&self.shares, &s.book) {
            (Some(t), Some(book)) => (0..t.groups())
                .map(|g| ShareStatus {
                    client: t.name(g).map(str::to_string),
                    used: if s.meter.period_start() == Some(book.period) {
                        book.used.get(g).copied().unwrap_or(0.0).min(used)
                    } else {
                        0.0
                    },
                    guaranteed: t.fraction(g) * amount,
                })
                .collect(),
            _ => Vec::new(),
        };
        LimitStatus {
            name: e.spec.name.clone(),
            unit: e.spec.unit,
            scope: e.spec.scope,
            scope_id: s.scope_id.to_string(),
            used,
            amount,
            remaining: (amount - used).max(0.0),
            window: e.spec.window.to_string(),
            resets_at: s.meter.resets_at(now),
            shares,
        }
    }
}

/// The amount of a provider-scope limit not used yet (a bucket's burst).
fn unused_amount(e: &Entry) -> f64 {
    match e.spec.window {
        WindowKind::TokenBucket { burst, .. } => burst,
        _ => e.spec.amount,
    }
}

/// When a provider-scope limit not used yet resets: a calendar period's end, else never.
fn unused_resets_at(e: &Entry, now: Micros) -> Option<Micros> {
    match e.spec.window {
        WindowKind::Calendar { period, tz } => Some(period_bounds(period, tz, now).1),
        _ => None,
    }
}
