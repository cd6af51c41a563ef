//! What the engine's counters look like in a state file ([`EngineExport`]), and how one
//! provider's counters are exported [pure].
//!
//! Counters are named by the same identity a config reload uses to keep them (limit name,
//! unit, window and scope, plus the key of a per-key limit) and by scope id, never by slot
//! index, so a restart with a changed config restores exactly the limits that still exist.
//! Times are absolute (µs since the epoch): a restart inside a window continues it.
//!
//! Not exported: concurrency (calls in flight belong to the process that made them), warning
//! state, and empty or finished counters (a fresh counter is the same thing). Reservations
//! in flight are counted at their estimate, which is what the counters hold until a settle:
//! conservative, since the settle never reaches a restarted process.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::quota::clock::Micros;
use crate::quota::meter::Meter;
use crate::quota::spec::{CalendarPeriod, Scope, WindowKind};
use crate::quota::state::{Entry, ProviderState, Slot};
use crate::quota::unit::Unit;

/// Every provider's counters, by provider name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineExport {
    /// Counters by provider name.
    pub providers: BTreeMap<String, ProviderExport>,
}

/// One provider's counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProviderExport {
    /// Limits with at least one non-empty counter, in config order.
    pub limits: Vec<LimitExport>,
}

/// One limit's identity and its counters by scope id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LimitExport {
    /// The limit's name.
    pub name: String,
    /// What it counts.
    pub unit: Unit,
    /// Whose usage it counts.
    pub scope: Scope,
    /// How usage is forgotten.
    pub window: WindowExport,
    /// The key of a per-key limit (`keys.pool[].limits`); `None` for provider-level limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Non-empty counters, sorted by scope id.
    pub counters: Vec<CounterExport>,
}

/// A limit's window, as part of its identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WindowExport {
    /// Rolling window of `len` µs.
    Rolling {
        /// Window length in µs.
        len: Micros,
    },
    /// Token bucket refilled every `len` µs, holding at most `burst`.
    TokenBucket {
        /// Refill period in µs.
        len: Micros,
        /// Capacity.
        burst: f64,
    },
    /// Calendar period in an IANA zone.
    Calendar {
        /// Hour, day, week or month.
        period: CalendarPeriod,
        /// The zone's IANA name.
        tz: String,
    },
}

impl WindowExport {
    /// The exported form of `window` (`None` for concurrency, which is never exported).
    pub fn of(window: &WindowKind) -> Option<Self> {
        Some(match *window {
            WindowKind::Rolling { len } => WindowExport::Rolling { len },
            WindowKind::TokenBucket { len, burst } => WindowExport::TokenBucket { len, burst },
            WindowKind::Calendar { period, tz } => WindowExport::Calendar {
                period,
                tz: tz.name().to_string(),
            },
            WindowKind::None => return None,
        })
    }
}

/// One limit's counter for one scope id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CounterExport {
    /// Key id, account, client id, or `""` for the provider.
    pub scope_id: String,
    /// The counter's state.
    pub meter: MeterExport,
    /// Client-share usage in the same calendar period (shared limits only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<ShareUse>,
}

/// A counter's state with absolute times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MeterExport {
    /// Rolling window: non-empty sub-buckets still counted, oldest first.
    Rolling {
        /// Sub-bucket width in µs.
        width: Micros,
        /// `(sub-bucket start in µs, units)`.
        buckets: Vec<(Micros, f64)>,
    },
    /// Token bucket: the level at the last refill (negative: a debt).
    TokenBucket {
        /// Tokens available at `last`.
        level: f64,
        /// Time of the last refill, µs.
        last: Micros,
    },
    /// Calendar counter: usage of the period starting at `start`.
    Calendar {
        /// Period start, µs.
        start: Micros,
        /// Units used in the period.
        used: f64,
    },
}

/// One client-share group's usage of a shared calendar limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShareUse {
    /// The listed client, or `None` for every client not listed.
    pub client: Option<String>,
    /// Units used in the period.
    pub used: f64,
}

/// A counter value as it can be written: NaN and +∞ read as "full" (`f64::MAX`), the
/// conservative meaning, since JSON has no spelling for them.
fn usage_value(v: f64) -> f64 {
    if v.is_finite() {
        v
    } else if v == f64::NEG_INFINITY {
        f64::MIN
    } else {
        f64::MAX
    }
}

/// A token-bucket level as it can be written: NaN and -∞ read as the deepest debt.
fn level_value(v: f64) -> f64 {
    if v.is_finite() {
        v
    } else if v == f64::INFINITY {
        f64::MAX
    } else {
        f64::MIN
    }
}

fn export_meter(meter: &Meter, now: Micros) -> Option<MeterExport> {
    match meter {
        Meter::Rolling(w) => {
            let buckets: Vec<(Micros, f64)> = w
                .buckets(now)
                .into_iter()
                .map(|(t, v)| (t, usage_value(v)))
                .collect();
            (!buckets.is_empty()).then(|| MeterExport::Rolling {
                width: w.width(),
                buckets,
            })
        }
        Meter::Bucket(b) => {
            (b.used(now) > 0.0 || !b.level().is_finite()).then(|| MeterExport::TokenBucket {
                level: level_value(b.level()),
                last: b.last_refill(),
            })
        }
        Meter::Calendar(c) => (now < c.period_end()).then(|| MeterExport::Calendar {
            start: c.period_start(),
            used: usage_value(c.used(now)),
        }),
        Meter::Concurrent(_) => None,
    }
}

impl ProviderState {
    /// The provider's non-empty counters at `now` (see the module docs for what is left out).
    pub fn export(&self, now: Micros) -> ProviderExport {
        let limits = self
            .entries
            .iter()
            .filter_map(|e| self.export_entry(e, now))
            .collect();
        ProviderExport { limits }
    }

    fn export_entry(&self, e: &Entry, now: Micros) -> Option<LimitExport> {
        if e.spec.unit == Unit::Concurrent {
            return None;
        }
        let window = WindowExport::of(&e.spec.window)?;
        let mut counters: Vec<CounterExport> = e
            .provider_slot
            .into_iter()
            .chain(e.by_scope.values().copied())
            .filter_map(|i| self.slots.get(i as usize))
            .filter_map(|s| self.export_slot(s, now))
            .collect();
        if counters.is_empty() {
            return None;
        }
        counters.sort_by(|a, b| a.scope_id.cmp(&b.scope_id));
        Some(LimitExport {
            name: e.spec.name.clone(),
            unit: e.spec.unit,
            scope: e.spec.scope,
            window,
            key: e.only_key.as_deref().map(str::to_string),
            counters,
        })
    }

    fn export_slot(&self, s: &Slot, now: Micros) -> Option<CounterExport> {
        let meter = export_meter(&s.meter, now)?;
        let shares = self.export_shares(s);
        if let MeterExport::Calendar { used, .. } = meter {
            if used <= 0.0 && shares.is_empty() {
                return None;
            }
        }
        Some(CounterExport {
            scope_id: s.scope_id.to_string(),
            meter,
            shares,
        })
    }

    fn export_shares(&self, s: &Slot) -> Vec<ShareUse> {
        let (Some(table), Some(book)) = (&self.shares, &s.book) else {
            return Vec::new();
        };
        if s.meter.period_start() != Some(book.period) {
            return Vec::new();
        }
        (0..table.groups())
            .filter_map(|g| {
                let used = book.used.get(g).copied().unwrap_or(0.0);
                (used != 0.0).then(|| ShareUse {
                    client: table.name(g).map(str::to_string),
                    used: usage_value(used),
                })
            })
            .collect()
    }
}
