//! The Odds API signals: `x-requests-remaining`, `x-requests-used` and `x-requests-last`
//! (the credits this call cost), all in [`SignalUnit::Credits`]; 0 remaining means the
//! key is out of credit until its monthly reset. Error bodies carry an `error_code`.

use http::HeaderMap;
use serde_json::Value;

use crate::signals::headers::parse_with;
use crate::signals::time::parse_number;
use crate::signals::types::{SignalUnit, Signals, Verdict};

/// Read the `x-requests-*` headers.
pub(crate) fn headers(h: &HeaderMap, s: &mut Signals) {
    let remaining = parse_with(h, "x-requests-remaining", s, parse_number);
    let used = parse_with(h, "x-requests-used", s, parse_number);
    let last = parse_with(h, "x-requests-last", s, parse_number);
    if let Some(last) = last {
        s.cost = Some(last);
    }
    if remaining.is_none() && used.is_none() {
        return;
    }
    let u = s.unit_mut(SignalUnit::Credits);
    u.remaining = remaining.or(u.remaining);
    if let (Some(r), Some(used)) = (remaining, used) {
        u.limit = Some(r + used);
    }
    if remaining.is_some_and(|r| r <= 0.0) {
        s.raise_verdict(Verdict::OutOfCredit);
    }
}

/// Read the verdict from an error body: `{"message":"...","error_code":"EXCEEDED_FREQ_LIMIT"}`.
pub(crate) fn body(json: &Value, s: &mut Signals) {
    match json.get("error_code").and_then(Value::as_str).unwrap_or("") {
        "OUT_OF_USAGE_CREDITS" => s.raise_verdict(Verdict::OutOfCredit),
        "EXCEEDED_FREQ_LIMIT" => s.raise_verdict(Verdict::RateLimited),
        "INVALID_KEY" | "DEACTIVATED_KEY" => s.raise_verdict(Verdict::Invalid),
        _ => {}
    }
}
