//! The vocabulary of upstream signals: what a response said about a key's quota.
//!
//! These types are produced by [`crate::signals::from_headers`] and
//! [`crate::signals::from_body`] and consumed by the quota engine and the state store, so
//! they are plain data (serde-serialisable) with a few merge helpers.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::signals::Micros;

/// The unit an upstream counts a limit in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalUnit {
    /// Calls.
    Requests,
    /// Tokens, input and output together (OpenAI `tokens`, Anthropic `tokens`).
    Tokens,
    /// Input (prompt) tokens only.
    InputTokens,
    /// Output (completion) tokens only.
    OutputTokens,
    /// A provider-defined unit: Keepa tokens, Odds API credits, Tavily credits.
    Credits,
}

/// What the upstream said about one unit: its limit, what is left, and when it refills.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitSignal {
    /// The unit this describes.
    pub unit: SignalUnit,
    /// The size of the upstream's window for this unit.
    pub limit: Option<f64>,
    /// What is left in the upstream's window. May be negative (Keepa).
    pub remaining: Option<f64>,
    /// When the window resets (absolute µs since the UNIX epoch).
    pub reset_at: Option<Micros>,
}

impl UnitSignal {
    /// An empty signal for `unit`.
    pub fn new(unit: SignalUnit) -> Self {
        UnitSignal {
            unit,
            limit: None,
            remaining: None,
            reset_at: None,
        }
    }

    /// True when no field is set.
    pub fn is_empty(&self) -> bool {
        self.limit.is_none() && self.remaining.is_none() && self.reset_at.is_none()
    }
}

/// What the upstream's answer means for the key as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// 429 `rate_limit_exceeded` and the like: the key cools until `retry_after` or the reset.
    RateLimited,
    /// OpenAI `insufficient_quota`, Odds API remaining 0, 402: the key is out of credit.
    OutOfCredit,
    /// 401/403: the key is not accepted.
    Invalid,
}

/// Everything read from one upstream response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Signals {
    /// Absolute time before which the upstream asked not to be called again.
    pub retry_after: Option<Micros>,
    /// Per-unit limits, remainders and resets, at most one entry per unit.
    pub units: Vec<UnitSignal>,
    /// Credits this call consumed, when the upstream says (`x-requests-last`, `tokensConsumed`).
    pub cost: Option<f64>,
    /// What the answer means for the key, if anything.
    pub verdict: Option<Verdict>,
    /// Signals that were present but could not be parsed: counted, otherwise ignored.
    pub malformed: u32,
}

impl Signals {
    /// The entry for `unit`, created empty if absent.
    pub fn unit_mut(&mut self, unit: SignalUnit) -> &mut UnitSignal {
        let idx = match self.units.iter().position(|u| u.unit == unit) {
            Some(i) => i,
            None => {
                self.units.push(UnitSignal::new(unit));
                self.units.len() - 1
            }
        };
        &mut self.units[idx]
    }

    /// The entry for `unit`, if any.
    pub fn unit(&self, unit: SignalUnit) -> Option<&UnitSignal> {
        self.units.iter().find(|u| u.unit == unit)
    }

    /// Drop units for which nothing was learned.
    pub(crate) fn prune(&mut self) {
        self.units.retain(|u| !u.is_empty());
    }

    /// Set the verdict unless a more specific one is already set.
    ///
    /// Specificity: `OutOfCredit` > `RateLimited` > `Invalid`. A 403 that also says "rate
    /// limited" (GitHub) is a rate limit, and a 429 that says "insufficient_quota" is out of
    /// credit.
    pub fn raise_verdict(&mut self, v: Verdict) {
        let rank = |v: Verdict| match v {
            Verdict::Invalid => 0,
            Verdict::RateLimited => 1,
            Verdict::OutOfCredit => 2,
        };
        if self.verdict.is_none_or(|cur| rank(v) > rank(cur)) {
            self.verdict = Some(v);
        }
    }

    /// True when nothing at all was learned.
    pub fn is_empty(&self) -> bool {
        self.retry_after.is_none()
            && self.units.is_empty()
            && self.cost.is_none()
            && self.verdict.is_none()
    }

    /// Until when a key should rest after this answer, if it should: the `Retry-After`;
    /// else the latest reset of a unit with nothing remaining; else, for a rate-limited
    /// answer, the earliest reset of any unit (something ran out; the soonest refill is the
    /// optimistic guess).
    pub fn cooling_until(&self) -> Option<Micros> {
        if self.retry_after.is_some() {
            return self.retry_after;
        }
        let exhausted = self
            .units
            .iter()
            .filter(|u| u.remaining.is_some_and(|r| r <= 0.0))
            .filter_map(|u| u.reset_at)
            .max();
        if exhausted.is_some() || self.verdict != Some(Verdict::RateLimited) {
            return exhausted;
        }
        self.units.iter().filter_map(|u| u.reset_at).min()
    }
}

/// A built-in family of signals, chosen by `preset` or `signals = [...]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// `x-ratelimit-*-{requests,tokens}`, error codes in 429 bodies.
    #[serde(rename = "openai")]
    OpenAi,
    /// `anthropic-ratelimit-*`.
    Anthropic,
    /// `RetryInfo` / `QuotaFailure` in 429 bodies.
    Gemini,
    /// `RateLimit-*`, structured `RateLimit` / `RateLimit-Policy`, `X-RateLimit-*` lists.
    Ietf,
    /// `x-ratelimit-{limit,remaining,reset,used}` with epoch-second resets.
    Github,
    /// `x-requests-{remaining,used,last}` credits.
    OddsApi,
    /// `tokensLeft` / `refillIn` / `refillRate` / `tokensConsumed` in JSON bodies.
    Keepa,
}

impl Family {
    /// Every family, in config-name order.
    pub const ALL: [Family; 7] = [
        Family::OpenAi,
        Family::Anthropic,
        Family::Gemini,
        Family::Ietf,
        Family::Github,
        Family::OddsApi,
        Family::Keepa,
    ];

    /// The config name (`"openai"`, `"odds_api"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Family::OpenAi => "openai",
            Family::Anthropic => "anthropic",
            Family::Gemini => "gemini",
            Family::Ietf => "ietf",
            Family::Github => "github",
            Family::OddsApi => "odds_api",
            Family::Keepa => "keepa",
        }
    }
}

/// A family name that is not one of [`Family::ALL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownFamily(pub String);

impl fmt::Display for UnknownFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown signal family {:?}; expected one of ", self.0)?;
        let names: Vec<&str> = Family::ALL.iter().map(|f| f.name()).collect();
        f.write_str(&names.join(", "))
    }
}

impl std::error::Error for UnknownFamily {}

impl FromStr for Family {
    type Err = UnknownFamily;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Family::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| UnknownFamily(s.to_string()))
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a custom signal is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A response header (any case).
    Header(String),
    /// A JSON pointer into the response body (`/usage/total`), for bodies the proxy reads.
    Json(String),
}

/// Which field of a [`UnitSignal`] (or the call's cost) a custom signal fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The window size.
    Limit,
    /// What is left.
    Remaining,
    /// When it resets; interpreted with the [`Format`].
    Reset,
    /// What this call cost (credits).
    Cost,
}

/// How a custom signal's value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A plain number; as a reset, seconds from now.
    Number,
    /// Seconds from now (decimals allowed).
    Seconds,
    /// Seconds since the UNIX epoch (values above 10^12 are taken as milliseconds).
    Epoch,
    /// A duration like `1s`, `6m0s`, `20ms`, `1h2m3.5s`, from now.
    Duration,
    /// An RFC 3339 timestamp.
    Rfc3339,
}

/// A configured `[[providers.X.signals.custom]]` mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomSignal {
    /// Header or JSON pointer.
    pub source: Source,
    /// What it fills.
    pub field: Field,
    /// The unit it belongs to (ignored for [`Field::Cost`]).
    pub unit: SignalUnit,
    /// How the value is written.
    pub format: Format,
}
