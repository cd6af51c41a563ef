//! What a limit counts ([`Unit`]) and what one call costs in each unit ([`Costs`]).

use std::fmt;
use std::str::FromStr;

use crate::quota::fit::non_negative;

/// The unit a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// One per call.
    Requests,
    /// Input plus output tokens.
    Tokens,
    /// Prompt tokens only.
    InputTokens,
    /// Completion tokens only.
    OutputTokens,
    /// A provider-defined unit (Keepa tokens, Tavily credits, Odds API credits).
    Credits,
    /// US dollars.
    Usd,
    /// Calls in flight; implicitly 1 per call, released when the call ends.
    Concurrent,
}

impl Unit {
    /// The config spelling (`"requests"`, `"input_tokens"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Requests => "requests",
            Unit::Tokens => "tokens",
            Unit::InputTokens => "input_tokens",
            Unit::OutputTokens => "output_tokens",
            Unit::Credits => "credits",
            Unit::Usd => "usd",
            Unit::Concurrent => "concurrent",
        }
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A unit name that is not one of the config spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown unit {0:?} (expected requests, tokens, input_tokens, output_tokens, credits, usd or concurrent)")]
pub struct UnknownUnit(pub String);

impl FromStr for Unit {
    type Err = UnknownUnit;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "requests" => Unit::Requests,
            "tokens" => Unit::Tokens,
            "input_tokens" => Unit::InputTokens,
            "output_tokens" => Unit::OutputTokens,
            "credits" => Unit::Credits,
            "usd" => Unit::Usd,
            "concurrent" => Unit::Concurrent,
            other => return Err(UnknownUnit(other.to_string())),
        })
    }
}

/// What one call costs in every countable unit (concurrency is implicitly 1 per call).
///
/// `Default` is one request and nothing else.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Costs {
    /// Requests (normally 1).
    pub requests: f64,
    /// Input plus output tokens.
    pub tokens: f64,
    /// Input tokens.
    pub input_tokens: f64,
    /// Output tokens.
    pub output_tokens: f64,
    /// Provider credits.
    pub credits: f64,
    /// US dollars.
    pub usd: f64,
}

impl Default for Costs {
    fn default() -> Self {
        Self::ZERO.with(Unit::Requests, 1.0)
    }
}

impl Costs {
    /// Nothing at all (not even the request).
    pub const ZERO: Costs = Costs {
        requests: 0.0,
        tokens: 0.0,
        input_tokens: 0.0,
        output_tokens: 0.0,
        credits: 0.0,
        usd: 0.0,
    };

    /// The cost in `unit`; `Concurrent` is always 1. Negative or NaN values read as 0,
    /// infinity as `f64::MAX` (too large for any limit).
    #[inline]
    pub fn get(&self, unit: Unit) -> f64 {
        non_negative(self.raw(unit))
    }

    /// The field of `unit` as it is, unsanitised (`Concurrent`: 1).
    #[inline]
    pub(crate) fn raw(&self, unit: Unit) -> f64 {
        // The fields by reference: the match becomes a table of offsets, not of jumps.
        let field = match unit {
            Unit::Requests => &self.requests,
            Unit::Tokens => &self.tokens,
            Unit::InputTokens => &self.input_tokens,
            Unit::OutputTokens => &self.output_tokens,
            Unit::Credits => &self.credits,
            Unit::Usd => &self.usd,
            Unit::Concurrent => return 1.0,
        };
        *field
    }

    /// Sets the cost in `unit` (ignored for `Concurrent`).
    pub fn set(&mut self, unit: Unit, value: f64) {
        match unit {
            Unit::Requests => self.requests = value,
            Unit::Tokens => self.tokens = value,
            Unit::InputTokens => self.input_tokens = value,
            Unit::OutputTokens => self.output_tokens = value,
            Unit::Credits => self.credits = value,
            Unit::Usd => self.usd = value,
            Unit::Concurrent => {}
        }
    }

    /// Builder form of [`Costs::set`].
    pub fn with(mut self, unit: Unit, value: f64) -> Self {
        self.set(unit, value);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_round_trip_and_costs_read_safely() {
        for u in [
            Unit::Requests,
            Unit::Tokens,
            Unit::InputTokens,
            Unit::OutputTokens,
            Unit::Credits,
            Unit::Usd,
            Unit::Concurrent,
        ] {
            assert_eq!(u.as_str().parse::<Unit>(), Ok(u));
        }
        assert!("bytes".parse::<Unit>().is_err());
        let c = Costs::default()
            .with(Unit::Tokens, f64::NAN)
            .with(Unit::Usd, -1.0);
        assert_eq!(c.get(Unit::Requests), 1.0);
        assert_eq!(c.get(Unit::Tokens), 0.0);
        assert_eq!(c.get(Unit::Usd), 0.0);
        assert_eq!(
            c.with(Unit::Credits, f64::INFINITY).get(Unit::Credits),
            f64::MAX
        );
        assert_eq!(c.get(Unit::Concurrent), 1.0);
        assert_eq!(Costs::ZERO.get(Unit::Concurrent), 1.0);
    }
}
