//! OpenAI signals: `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` headers, whose
//! resets are Go-style durations (`1s`, `6m0s`, `20ms`), and the `error.code` of error
//! bodies, which tells a rate limit (`rate_limit_exceeded`) from an empty account
//! (`insufficient_quota`).

use http::HeaderMap;
use serde_json::Value;

use crate::signals::headers::{read_unit, UnitHeaders};
use crate::signals::time::parse_duration;
use crate::signals::types::{SignalUnit, Signals, Verdict};
use crate::signals::Micros;

/// Read the `x-ratelimit-*-{requests,tokens}` headers.
pub(crate) fn headers(h: &HeaderMap, now: Micros, s: &mut Signals) {
    let units = [
        UnitHeaders {
            unit: SignalUnit::Requests,
            limit: "x-ratelimit-limit-requests",
            remaining: "x-ratelimit-remaining-requests",
            reset: "x-ratelimit-reset-requests",
        },
        UnitHeaders {
            unit: SignalUnit::Tokens,
            limit: "x-ratelimit-limit-tokens",
            remaining: "x-ratelimit-remaining-tokens",
            reset: "x-ratelimit-reset-tokens",
        },
    ];
    for names in &units {
        read_unit(h, names, s, |v| {
            parse_duration(v).map(|d| now.saturating_add(d))
        });
    }
}

/// Read the verdict from an error body: `{"error":{"code":"insufficient_quota",...}}`.
pub(crate) fn body(json: &Value, s: &mut Signals) {
    let Some(err) = json.get("error") else {
        return;
    };
    let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("");
    for code in [field("code"), field("type")] {
        match code {
            "insufficient_quota" | "billing_hard_limit_reached" | "billing_not_active" => {
                s.raise_verdict(Verdict::OutOfCredit)
            }
            "rate_limit_exceeded" | "requests" | "tokens" => s.raise_verdict(Verdict::RateLimited),
            "invalid_api_key" => s.raise_verdict(Verdict::Invalid),
            _ => {}
        }
    }
}
