//! Gemini signals, from 429 (and other error) bodies: `error.details[]` entries typed
//! `type.googleapis.com/google.rpc.RetryInfo` (`retryDelay: "12s"`) and
//! `google.rpc.QuotaFailure`, plus `ErrorInfo` reason `API_KEY_INVALID`.
//!
//! Simplification: a per-day quota (`quotaId` containing `PerDay`) is treated like any other
//! rate limit, cooling the key until `retryDelay`, not until the next Pacific midnight.

use serde_json::Value;

use crate::signals::time::parse_duration;
use crate::signals::types::{Signals, Verdict};
use crate::signals::Micros;

/// Read the verdict and retry delay from a Google RPC error body (object or one-item array).
pub(crate) fn body(json: &Value, now: Micros, s: &mut Signals) {
    let json = match json.as_array() {
        Some(items) => match items.first() {
            Some(first) => first,
            None => return,
        },
        None => json,
    };
    let Some(err) = json.get("error") else {
        return;
    };
    let status = err.get("status").and_then(Value::as_str).unwrap_or("");
    if status == "RESOURCE_EXHAUSTED" || err.get("code").and_then(Value::as_u64) == Some(429) {
        s.raise_verdict(Verdict::RateLimited);
    }
    let details = err.get("details").and_then(Value::as_array);
    for d in details.into_iter().flatten() {
        let kind = d.get("@type").and_then(Value::as_str).unwrap_or("");
        if kind.ends_with("google.rpc.RetryInfo") {
            retry_info(d, now, s);
        } else if kind.ends_with("google.rpc.QuotaFailure") {
            s.raise_verdict(Verdict::RateLimited);
        } else if kind.ends_with("google.rpc.ErrorInfo")
            && d.get("reason").and_then(Value::as_str) == Some("API_KEY_INVALID")
        {
            s.raise_verdict(Verdict::Invalid);
        }
    }
}

fn retry_info(detail: &Value, now: Micros, s: &mut Signals) {
    let Some(delay) = detail.get("retryDelay") else {
        return;
    };
    match delay.as_str().and_then(parse_duration) {
        Some(d) => {
            let at = now.saturating_add(d);
            s.retry_after = Some(s.retry_after.map_or(at, |cur| cur.max(at)));
        }
        None => s.malformed += 1,
    }
}
