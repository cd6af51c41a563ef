//! Anthropic signals: `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-
//! {limit,remaining,reset}` headers (resets are RFC 3339 timestamps) and the `error.type`
//! of error bodies (`rate_limit_error`, `billing_error`, "credit balance is too low").

use http::HeaderMap;
use serde_json::Value;

use crate::signals::headers::{read_unit, UnitHeaders};
use crate::signals::time::parse_rfc3339;
use crate::signals::types::{SignalUnit, Signals, Verdict};

/// Read the `anthropic-ratelimit-*` headers.
pub(crate) fn headers(h: &HeaderMap, s: &mut Signals) {
    for names in &UNITS {
        read_unit(h, names, s, parse_rfc3339);
    }
}

const fn unit(
    unit: SignalUnit,
    limit: &'static str,
    remaining: &'static str,
    reset: &'static str,
) -> UnitHeaders<'static> {
    UnitHeaders {
        unit,
        limit,
        remaining,
        reset,
    }
}

const UNITS: [UnitHeaders<'static>; 4] = [
    unit(
        SignalUnit::Requests,
        "anthropic-ratelimit-requests-limit",
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-requests-reset",
    ),
    unit(
        SignalUnit::Tokens,
        "anthropic-ratelimit-tokens-limit",
        "anthropic-ratelimit-tokens-remaining",
        "anthropic-ratelimit-tokens-reset",
    ),
    unit(
        SignalUnit::InputTokens,
        "anthropic-ratelimit-input-tokens-limit",
        "anthropic-ratelimit-input-tokens-remaining",
        "anthropic-ratelimit-input-tokens-reset",
    ),
    unit(
        SignalUnit::OutputTokens,
        "anthropic-ratelimit-output-tokens-limit",
        "anthropic-ratelimit-output-tokens-remaining",
        "anthropic-ratelimit-output-tokens-reset",
    ),
];

/// Read the verdict from an error body: `{"type":"error","error":{"type":"rate_limit_error"}}`.
pub(crate) fn body(json: &Value, s: &mut Signals) {
    let Some(err) = json.get("error") else {
        return;
    };
    let kind = err.get("type").and_then(Value::as_str).unwrap_or("");
    let message = err.get("message").and_then(Value::as_str).unwrap_or("");
    match kind {
        "rate_limit_error" => s.raise_verdict(Verdict::RateLimited),
        "billing_error" => s.raise_verdict(Verdict::OutOfCredit),
        "authentication_error" | "permission_error" => s.raise_verdict(Verdict::Invalid),
        _ => {}
    }
    if message.contains("credit balance is too low") {
        s.raise_verdict(Verdict::OutOfCredit);
    }
}
