//! IETF rate-limit fields, in all the shapes met in the wild:
//!
//! - `RateLimit-Limit` / `RateLimit-Remaining` / `RateLimit-Reset` (delta seconds), and the
//!   same under `X-RateLimit-*` when the unprefixed ones are absent. Values may be comma
//!   lists, one entry per window (Brave: `X-RateLimit-Limit: 1, 15000` with
//!   `X-RateLimit-Reset: 1, 1419704`): the entry with the least remaining governs. A reset
//!   above 10^9 is taken as epoch seconds, as many `X-RateLimit-Reset` senders mean.
//! - The structured fields of draft-ietf-httpapi-ratelimit-headers:
//!   `RateLimit: "default";r=50;t=30` with `RateLimit-Policy: "default";q=100;w=60` (names
//!   may be strings or tokens), and the older `RateLimit: limit=100, remaining=50, reset=30`.
//!
//! Everything maps to [`SignalUnit::Requests`]; policies with a quota unit other than
//! `requests` are skipped.

use http::HeaderMap;

use crate::signals::headers::text;
use crate::signals::time::{epoch_to_micros, parse_number, secs_to_micros};
use crate::signals::types::{SignalUnit, Signals};
use crate::signals::Micros;

/// Read the IETF fields (structured ones override the older triple).
pub(crate) fn headers(h: &HeaderMap, now: Micros, s: &mut Signals) {
    let names = if h.contains_key("ratelimit-limit") || h.contains_key("ratelimit-remaining") {
        ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"]
    } else {
        [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ]
    };
    triple(h, names, now, s);
    structured(h, now, s);
}

/// A reset value: delta seconds, or epoch seconds when implausibly large for a delta.
fn reset_at(v: f64, now: Micros) -> Option<Micros> {
    if v > 1e9 {
        epoch_to_micros(v)
    } else {
        secs_to_micros(v).map(|d| now.saturating_add(d))
    }
}

/// A header holding a list of numbers (parameters ignored); present but bad is malformed.
fn number_list(h: &HeaderMap, name: &str, s: &mut Signals) -> Option<Vec<f64>> {
    let v = text(h, name, s)?;
    let list: Option<Vec<f64>> = split_top(&v, b',')
        .into_iter()
        .map(|m| parse_number(split_top(m, b';').first().copied().unwrap_or("")))
        .collect();
    if list.is_none() {
        s.malformed += 1;
    }
    list
}

fn triple(h: &HeaderMap, [limit, remaining, reset]: [&str; 3], now: Micros, s: &mut Signals) {
    let limit = number_list(h, limit, s);
    let remaining = number_list(h, remaining, s);
    let reset = number_list(h, reset, s);
    let n = remaining.as_ref().map_or(0, Vec::len);
    let pick = |list: &Option<Vec<f64>>, i: usize| -> Option<f64> {
        let list = list.as_ref()?;
        if list.len() == n {
            list.get(i).copied()
        } else {
            list.first().copied()
        }
    };
    // The tightest window: least remaining, then the longest wait.
    let idx = (0..n)
        .min_by(|&a, &b| {
            let ra = pick(&remaining, a).unwrap_or(f64::MAX);
            let rb = pick(&remaining, b).unwrap_or(f64::MAX);
            let ta = pick(&reset, a).unwrap_or(0.0);
            let tb = pick(&reset, b).unwrap_or(0.0);
            ra.total_cmp(&rb).then(tb.total_cmp(&ta))
        })
        .unwrap_or(0);
    let (l, r) = (pick(&limit, idx), pick(&remaining, idx));
    let t = pick(&reset, idx).and_then(|v| reset_at(v, now));
    if l.is_none() && r.is_none() && t.is_none() {
        return;
    }
    let u = s.unit_mut(SignalUnit::Requests);
    u.limit = l.or(u.limit);
    u.remaining = r.or(u.remaining);
    u.reset_at = t.or(u.reset_at);
}

/// One member of a structured `RateLimit` or `RateLimit-Policy` field.
#[derive(Debug, Default)]
struct Member {
    name: String,
    quota: Option<f64>,
    remaining: Option<f64>,
    reset: Option<f64>,
    requests_unit: bool,
}

fn parse_members(v: &str) -> Option<Vec<Member>> {
    let mut out = Vec::new();
    let mut legacy = Member {
        requests_unit: true,
        ..Member::default()
    };
    let mut has_legacy = false;
    for raw in split_top(v, b',') {
        let parts = split_top(raw, b';');
        let head = parts.first().copied().unwrap_or("");
        if let Some((k, val)) = head.split_once('=').filter(|_| !head.starts_with('"')) {
            // Older dictionary form: `limit=100, remaining=50, reset=30`.
            has_legacy = true;
            set_param(&mut legacy, k.trim(), val.trim())?;
            continue;
        }
        let mut m = Member {
            name: unquote(head).to_string(),
            requests_unit: true,
            ..Member::default()
        };
        for p in &parts[1..] {
            let (k, val) = p.split_once('=').unwrap_or((p, "?1"));
            set_param(&mut m, k.trim(), val.trim())?;
        }
        out.push(m);
    }
    if has_legacy {
        out.push(legacy);
    }
    Some(out)
}

fn set_param(m: &mut Member, key: &str, val: &str) -> Option<()> {
    let slot = match key {
        "q" | "limit" => &mut m.quota,
        "r" | "remaining" => &mut m.remaining,
        "t" | "reset" => &mut m.reset,
        "qu" => {
            m.requests_unit = unquote(val) == "requests";
            return Some(());
        }
        _ => return Some(()), // w, pk and extensions: not needed
    };
    *slot = Some(parse_number(val)?);
    Some(())
}

fn structured(h: &HeaderMap, now: Micros, s: &mut Signals) {
    let parse = |name: &str, s: &mut Signals| {
        let v = text(h, name, s)?;
        let members = parse_members(&v);
        if members.is_none() {
            s.malformed += 1;
        }
        members
    };
    let policies = parse("ratelimit-policy", s).unwrap_or_default();
    let current = parse("ratelimit", s).unwrap_or_default();
    let policy = |name: &str| policies.iter().find(|p| p.name == name);
    let requests = |m: &&Member| policy(&m.name).is_none_or(|p| p.requests_unit);
    let tightest = current
        .iter()
        .filter(|m| m.requests_unit && m.remaining.is_some())
        .filter(requests)
        .min_by(|a, b| {
            let r = |m: &Member| m.remaining.unwrap_or(f64::MAX);
            r(a).total_cmp(&r(b))
        });
    let (limit, remaining, reset) = match tightest {
        Some(m) => {
            let only = (policies.len() == 1).then(|| &policies[0]);
            let quota = m.quota.or_else(|| policy(&m.name).or(only)?.quota);
            (quota, m.remaining, m.reset)
        }
        None => {
            let first = policies.iter().find(|p| p.requests_unit);
            (first.and_then(|p| p.quota), None, None)
        }
    };
    if limit.is_none() && remaining.is_none() && reset.is_none() {
        return;
    }
    let u = s.unit_mut(SignalUnit::Requests);
    u.limit = limit.or(u.limit);
    u.remaining = remaining.or(u.remaining);
    u.reset_at = reset
        .and_then(|t| secs_to_micros(t).map(|d| now.saturating_add(d)))
        .or(u.reset_at);
}

/// Split on `sep` outside double-quoted strings; members are trimmed.
fn split_top(s: &str, sep: u8) -> Vec<&str> {
    let (mut out, mut start, mut in_quote, mut escaped) = (Vec::new(), 0, false, false);
    for (i, b) in s.bytes().enumerate() {
        if in_quote {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_quote = false,
                _ => {}
            }
        } else if b == b'"' {
            in_quote = true;
        } else if b == sep {
            out.push(s.get(start..i).unwrap_or("").trim());
            start = i + 1;
        }
    }
    out.push(s.get(start..).unwrap_or("").trim());
    out
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
}
