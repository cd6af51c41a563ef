//! The validated description of limits and providers that the engine enforces.
//!
//! These types are built by the config layer; they cannot express a window of length 0
//! only by convention (a zero length is treated as 1 µs), so validate before building.

use std::fmt;

use crate::quota::clock::{Micros, SECOND};
use crate::quota::priority::PriorityReserve;
use crate::quota::unit::Unit;

/// Whose usage a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// One counter for the whole provider (scope id `""`).
    Provider,
    /// One counter per API key (scope id = key id); skipped when the call has no key.
    Key,
    /// One counter per upstream account (keys sharing `account`); skipped without one.
    Account,
    /// One counter per client identity.
    Client,
}

impl Scope {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Provider => "provider",
            Scope::Key => "key",
            Scope::Account => "account",
            Scope::Client => "client",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A calendar period; weeks start on Monday.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CalendarPeriod {
    /// Resets at every hour boundary of the zone.
    Hour,
    /// Resets at 00:00.
    Day,
    /// Resets at 00:00 on Monday.
    Week,
    /// Resets at 00:00 on the 1st.
    Month,
}

impl CalendarPeriod {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CalendarPeriod::Hour => "hour",
            CalendarPeriod::Day => "day",
            CalendarPeriod::Week => "week",
            CalendarPeriod::Month => "month",
        }
    }
}

/// How a limit's usage is forgotten over time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WindowKind {
    /// Never more than `amount` in any interval of `len` µs.
    Rolling {
        /// Window length in µs.
        len: Micros,
    },
    /// A bucket of capacity `burst` refilled by `amount` every `len` µs.
    TokenBucket {
        /// Refill period in µs.
        len: Micros,
        /// Capacity (the config's `burst`, default `amount`).
        burst: f64,
    },
    /// A counter reset at each `period` boundary in `tz`.
    Calendar {
        /// Hour, day, week or month.
        period: CalendarPeriod,
        /// The zone whose midnight (or hour) resets the counter.
        tz: chrono_tz::Tz,
    },
    /// No time component (`unit = "concurrent"`).
    None,
}

impl fmt::Display for WindowKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WindowKind::Rolling { len } => f.write_str(&format_duration(*len)),
            WindowKind::TokenBucket { len, .. } => {
                write!(f, "token_bucket/{}", format_duration(*len))
            }
            WindowKind::Calendar { period, tz } => write!(f, "{} ({})", period.as_str(), tz),
            WindowKind::None => f.write_str("concurrent"),
        }
    }
}

/// `90s` → `"90s"`, `60 s` → `"1m"`, `3600 s` → `"1h"`, sub-second → `"250ms"`.
pub fn format_duration(us: Micros) -> String {
    const MINUTE: Micros = 60 * SECOND;
    const HOUR: Micros = 60 * MINUTE;
    match us {
        0 => "0s".to_string(),
        u if u % HOUR == 0 => format!("{}h", u / HOUR),
        u if u % MINUTE == 0 => format!("{}m", u / MINUTE),
        u if u % SECOND == 0 => format!("{}s", u / SECOND),
        u if u % 1000 == 0 => format!("{}ms", u / 1000),
        u => format!("{u}us"),
    }
}

/// One configured limit.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitSpec {
    /// The limit's name (`rpm`, `monthly-usd`); named in refusals and status.
    pub name: String,
    /// What it counts.
    pub unit: Unit,
    /// How much per window (for `Concurrent`: calls in flight).
    pub amount: f64,
    /// How usage is forgotten.
    pub window: WindowKind,
    /// Whose usage it counts.
    pub scope: Scope,
    /// Fraction of `amount` at which one warning is reported per window.
    pub warn_at: Option<f64>,
    /// Fractions held back from lower priorities.
    pub reserve: PriorityReserve,
}

impl LimitSpec {
    /// A provider-scope limit with no warning and no reserve.
    pub fn new(name: impl Into<String>, unit: Unit, amount: f64, window: WindowKind) -> Self {
        Self {
            name: name.into(),
            unit,
            amount,
            window,
            scope: Scope::Provider,
            warn_at: None,
            reserve: PriorityReserve::default(),
        }
    }

    /// Builder: sets the scope.
    pub fn with_scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// Builder: sets `warn_at`.
    pub fn with_warn_at(mut self, fraction: f64) -> Self {
        self.warn_at = Some(fraction);
        self
    }

    /// Builder: sets the priority reserve.
    pub fn with_reserve(mut self, reserve: PriorityReserve) -> Self {
        self.reserve = reserve;
        self
    }

    /// The state-preserving identity used by reloads: name, unit, window and scope.
    pub(crate) fn same_identity(&self, other: &LimitSpec) -> bool {
        self.name == other.name
            && self.unit == other.unit
            && self.window == other.window
            && self.scope == other.scope
    }
}

/// Guaranteed shares of every provider-scope calendar limit, by client.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClientShares {
    /// `(client id, fraction)`; fractions should sum to at most 1.
    pub shares: Vec<(String, f64)>,
    /// Whether a client may use capacity no other client's unused guarantee holds.
    pub borrow: bool,
}

/// What to do when a call does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnLimitAction {
    /// Wait (FIFO) until it fits, within `max_delay`.
    #[default]
    Delay,
    /// Refuse at once with a retry-after.
    Reject,
}

/// The provider's `on_limit` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnLimit {
    /// Delay or reject.
    pub action: OnLimitAction,
    /// Longest wait before refusing instead.
    pub max_delay: Micros,
    /// Most calls waiting at once; beyond that, refuse.
    pub max_queue: usize,
}

impl Default for OnLimit {
    fn default() -> Self {
        Self {
            action: OnLimitAction::Delay,
            max_delay: 30 * SECOND,
            max_queue: 1000,
        }
    }
}

/// Everything the engine needs to know about one provider.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProviderSpec {
    /// The provider's name.
    pub name: String,
    /// Limits of the provider (any scope).
    pub limits: Vec<LimitSpec>,
    /// Per-key limits (scope `Key` for that key only). One with the same name as a
    /// provider-level limit replaces it for that key; others are added.
    pub key_limits: Vec<(String, Vec<LimitSpec>)>,
    /// Client shares of provider-scope calendar limits.
    pub shares: Option<ClientShares>,
    /// Shadow mode: decide and record, never delay or reject.
    pub shadow: bool,
    /// Delay or reject when a call does not fit.
    pub on_limit: OnLimit,
}

impl ProviderSpec {
    /// A provider with these limits and default behaviour.
    pub fn new(name: impl Into<String>, limits: Vec<LimitSpec>) -> Self {
        Self {
            name: name.into(),
            limits,
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_format() {
        let cases: &[(WindowKind, &str)] = &[
            (WindowKind::Rolling { len: 60 * SECOND }, "1m"),
            (WindowKind::Rolling { len: 90 * SECOND }, "90s"),
            (WindowKind::Rolling { len: 7200 * SECOND }, "2h"),
            (WindowKind::Rolling { len: 250_000 }, "250ms"),
            (WindowKind::Rolling { len: 7 }, "7us"),
            (
                WindowKind::TokenBucket {
                    len: SECOND,
                    burst: 5.0,
                },
                "token_bucket/1s",
            ),
            (
                WindowKind::Calendar {
                    period: CalendarPeriod::Day,
                    tz: chrono_tz::Europe::Berlin,
                },
                "day (Europe/Berlin)",
            ),
            (WindowKind::None, "concurrent"),
        ];
        for (w, s) in cases {
            assert_eq!(w.to_string(), *s);
        }
    }
}
