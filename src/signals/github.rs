//! GitHub signals: `x-ratelimit-{limit,remaining,used,reset}` with the reset in epoch
//! seconds. A 403 or 429 with nothing remaining is GitHub's primary rate limit, not a bad
//! key.

use http::HeaderMap;

use crate::signals::headers::parse_with;
use crate::signals::time::{epoch_to_micros, parse_number};
use crate::signals::types::{SignalUnit, Signals, Verdict};
use crate::signals::Micros;

/// Read the `x-ratelimit-*` headers and refine a 403/429 verdict.
pub(crate) fn headers(status: u16, h: &HeaderMap, now: Micros, s: &mut Signals) {
    let limit = parse_with(h, "x-ratelimit-limit", s, parse_number);
    let remaining = parse_with(h, "x-ratelimit-remaining", s, parse_number);
    let used = parse_with(h, "x-ratelimit-used", s, parse_number);
    let reset = parse_with(h, "x-ratelimit-reset", s, |v| {
        // Epoch seconds by GitHub's docs; a small value can only be a delta.
        let v = parse_number(v)?;
        if v > 1e9 {
            epoch_to_micros(v)
        } else {
            crate::signals::time::secs_to_micros(v).map(|d| now.saturating_add(d))
        }
    });
    let limit = limit.or_else(|| Some(remaining? + used?));
    if limit.is_none() && remaining.is_none() && reset.is_none() {
        return;
    }
    let u = s.unit_mut(SignalUnit::Requests);
    u.limit = limit.or(u.limit);
    u.remaining = remaining.or(u.remaining);
    u.reset_at = reset.or(u.reset_at);
    if matches!(status, 403 | 429) && remaining.is_some_and(|r| r <= 0.0) {
        s.raise_verdict(Verdict::RateLimited);
    }
}
