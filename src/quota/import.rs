//! Restoring exported counters ([`ProviderExport`]) into a provider's state [pure].
//!
//! A counter is restored only when a limit with the same identity (name, unit, window,
//! scope, and key for a per-key limit) is configured now; it replaces that counter. A
//! rolling sub-bucket or calendar period already over at `now` is dropped (a restart after
//! the window starts fresh). Nothing is clamped: a negative, NaN or infinite usage, a
//! token-bucket level above the burst, or a time far in the future is an [`ImportProblem`]
//! in the [`ImportReport`] and that counter is left as it was, so the caller can refuse to
//! run on it rather than read it as zero.

use crate::quota::clock::{Micros, SECOND};
use crate::quota::meter::Meter;
use crate::quota::persist::WindowExport;
use crate::quota::persist::{CounterExport, LimitExport, MeterExport, ProviderExport, ShareUse};
use crate::quota::shares::ShareBook;
use crate::quota::spec::{LimitSpec, Scope};
use crate::quota::state::ProviderState;

/// Exported times may run this far ahead of `now`: the clocks of two runs disagree a little.
pub const MAX_CLOCK_SKEW: Micros = 5 * 60 * SECOND;

/// What an import restored, dropped and refused.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportReport {
    /// Counters restored.
    pub restored: usize,
    /// Counters whose window or period was over at `now` (they start fresh).
    pub expired: usize,
    /// Providers in the export that are not configured now.
    pub unknown_providers: Vec<String>,
    /// `provider/limit` of exported limits whose identity is not configured now.
    pub unknown_limits: Vec<String>,
    /// Counters that could not be restored, and why.
    pub errors: Vec<ImportProblem>,
}

impl ImportReport {
    /// Whether every exported counter was either restored, expired or dropped with its limit.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }
}

/// One counter that could not be restored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("provider {provider:?}, limit {limit:?}, scope id {scope_id:?}: {problem}")]
pub struct ImportProblem {
    /// The provider.
    pub provider: String,
    /// The limit's name.
    pub limit: String,
    /// The counter's scope id.
    pub scope_id: String,
    /// What is wrong with it.
    pub problem: String,
}

fn check_usage(what: &str, v: f64) -> Result<(), String> {
    if v.is_nan() {
        Err(format!("{what} is not a number"))
    } else if v < 0.0 {
        Err(format!("{what} is negative ({v})"))
    } else if v.is_infinite() {
        Err(format!("{what} is infinite"))
    } else {
        Ok(())
    }
}

fn check_time(what: &str, t: Micros, now: Micros) -> Result<(), String> {
    if t > now.saturating_add(MAX_CLOCK_SKEW) {
        let ahead = (t - now) / SECOND;
        return Err(format!(
            "{what} {t} µs is {ahead} s after now (is the clock behind?)"
        ));
    }
    Ok(())
}

fn restore_rolling(
    meter: &mut Meter,
    width: Micros,
    buckets: &[(Micros, f64)],
    now: Micros,
) -> Result<bool, String> {
    let Meter::Rolling(w) = meter else {
        return Err("a rolling counter does not fit this limit's window".into());
    };
    if width == 0 {
        return Err("rolling sub-bucket width is 0".into());
    }
    for &(start, units) in buckets {
        check_usage("rolling sub-bucket usage", units)?;
        check_time("rolling sub-bucket start", start, now)?;
    }
    let mut any = false;
    for &(start, units) in buckets {
        // Another geometry: count each sub-bucket at its last instant, so it stays in the
        // window at least as long as it did (conservative).
        let at = if width == w.width() {
            start
        } else {
            start.saturating_add(width - 1)
        };
        any |= w.restore(at, units, now);
    }
    Ok(any)
}

fn restore_bucket(
    meter: &mut Meter,
    level: f64,
    last: Micros,
    now: Micros,
) -> Result<bool, String> {
    let Meter::Bucket(b) = meter else {
        return Err("a token-bucket counter does not fit this limit's window".into());
    };
    if !level.is_finite() {
        return Err(format!("token-bucket level {level} is not a finite number"));
    }
    if level > b.burst() {
        return Err(format!(
            "token-bucket level {level} exceeds the burst {}",
            b.burst()
        ));
    }
    check_time("token-bucket refill time", last, now)?;
    b.restore(level, last);
    Ok(b.used(now) > 0.0)
}

fn restore_calendar(
    meter: &mut Meter,
    start: Micros,
    used: f64,
    now: Micros,
) -> Result<bool, String> {
    let Meter::Calendar(c) = meter else {
        return Err("a calendar counter does not fit this limit's window".into());
    };
    check_usage("calendar usage", used)?;
    check_time("calendar period start", start, now)?;
    Ok(c.restore(start, used, now))
}

/// A meter for `spec` holding the exported state: `Ok(None)` when it is over at `now`.
fn restore_meter(spec: &LimitSpec, m: &MeterExport, now: Micros) -> Result<Option<Meter>, String> {
    let mut meter = Meter::new(spec);
    let live = match m {
        MeterExport::Rolling { width, buckets } => {
            restore_rolling(&mut meter, *width, buckets, now)?
        }
        MeterExport::TokenBucket { level, last } => restore_bucket(&mut meter, *level, *last, now)?,
        MeterExport::Calendar { start, used } => restore_calendar(&mut meter, *start, *used, now)?,
    };
    Ok(live.then_some(meter))
}

impl ProviderState {
    /// Restores exported counters at `now` (see the module docs), adding what happened to
    /// `report`. Meant for a state that has not served calls yet; a restored counter
    /// replaces the live one (reservations still in flight settle harmlessly).
    pub fn import(&mut self, export: ProviderExport, now: Micros, report: &mut ImportReport) {
        let mut taken = vec![false; self.entries.len()];
        for limit in export.limits {
            let found = (0..self.entries.len()).find(|&i| !taken[i] && self.matches(i, &limit));
            let Some(ei) = found else {
                report
                    .unknown_limits
                    .push(format!("{}/{}", self.spec.name, limit.name));
                continue;
            };
            taken[ei] = true;
            for counter in limit.counters {
                let scope_id = counter.scope_id.clone();
                if let Err(problem) = self.import_counter(ei, counter, now, report) {
                    report.errors.push(ImportProblem {
                        provider: self.spec.name.clone(),
                        limit: limit.name.clone(),
                        scope_id,
                        problem,
                    });
                }
            }
        }
    }

    fn matches(&self, ei: usize, limit: &LimitExport) -> bool {
        let e = &self.entries[ei];
        e.spec.name == limit.name
            && e.spec.unit == limit.unit
            && e.spec.scope == limit.scope
            && e.only_key.as_deref() == limit.key.as_deref()
            && WindowExport::of(&e.spec.window).as_ref() == Some(&limit.window)
    }

    fn import_counter(
        &mut self,
        ei: usize,
        c: CounterExport,
        now: Micros,
        report: &mut ImportReport,
    ) -> Result<(), String> {
        let spec = &self.entries[ei].spec;
        if spec.scope == Scope::Provider && !c.scope_id.is_empty() {
            return Err("a provider-scope counter has a scope id".into());
        }
        let Some(meter) = restore_meter(spec, &c.meter, now)? else {
            report.expired += 1;
            return Ok(());
        };
        let book = self.restore_book(ei, &meter, &c.shares)?;
        let warned = self.entries[ei].spec.warn_at.and_then(|fraction| {
            let used = meter.used(now);
            let amount = meter.capacity(self.entries[ei].spec.amount);
            (used > 0.0 && used >= fraction * amount).then(|| meter.period_start().unwrap_or(0))
        });
        let slot = self.slot_for(ei, &c.scope_id) as usize;
        let s = &mut self.slots[slot];
        s.meter = meter;
        s.book = book;
        s.warned = warned;
        report.restored += 1;
        Ok(())
    }

    /// The share book of a restored shared counter (groups matched by client name, as on a
    /// reload; usage of a client no longer listed stays in the limit's total only).
    fn restore_book(
        &self,
        ei: usize,
        meter: &Meter,
        shares: &[ShareUse],
    ) -> Result<Option<ShareBook>, String> {
        for s in shares {
            check_usage("client-share usage", s.used)?;
        }
        let (Some(table), true) = (&self.shares, self.entries[ei].shared) else {
            return Ok(None);
        };
        let mut book = table.book(meter.period_start().unwrap_or(0));
        for s in shares {
            let group = match &s.client {
                Some(name) => (0..table.groups()).find(|&g| table.name(g) == Some(name)),
                None => table.groups().checked_sub(1),
            };
            if let Some(u) = group.and_then(|g| book.used.get_mut(g)) {
                *u += s.used;
            }
        }
        Ok(Some(book))
    }
}
