//! Reading signals from response headers: the dispatcher over families, the always-on
//! `Retry-After`, the status-code verdict, and the small tolerant accessors the family
//! parsers share.
//!
//! Tolerance rule: a header that is absent is silence; a header that is present but cannot
//! be parsed increments [`Signals::malformed`] and is otherwise ignored.

use std::borrow::Cow;

use http::HeaderMap;

use crate::signals::time::{parse_number, parse_retry_after};
use crate::signals::types::{CustomSignal, Family, SignalUnit, Signals, Verdict};
use crate::signals::{anthropic, custom, github, ietf, odds_api, openai, Micros};

/// Read every signal the configured `families` and `custom` mappings find in `headers`.
///
/// `status` sets the baseline verdict (429 → rate limited, 401/403 → invalid, 402 → out of
/// credit), which families may refine: a GitHub 403 with nothing remaining is a rate limit,
/// an Odds API answer with 0 credits remaining is out of credit.
pub fn from_headers(
    families: &[Family],
    custom: &[CustomSignal],
    status: u16,
    headers: &HeaderMap,
    now: Micros,
) -> Signals {
    let mut s = Signals::default();
    // RFC 9110 gives `Retry-After` a meaning on 3xx, 429 and 503 answers (and upstreams send
    // it on other refusals); on a success it says nothing, and two header lookups per
    // successful call were the most of this function's cost.
    if status >= 300 {
        retry_after(headers, now, &mut s);
    }
    status_verdict(status, &mut s);
    for family in families {
        match family {
            Family::OpenAi => openai::headers(headers, now, &mut s),
            Family::Anthropic => anthropic::headers(headers, &mut s),
            Family::Ietf => ietf::headers(headers, now, &mut s),
            Family::Github => github::headers(status, headers, now, &mut s),
            Family::OddsApi => odds_api::headers(headers, &mut s),
            Family::Gemini | Family::Keepa => {}
        }
    }
    custom::headers(custom, headers, now, &mut s);
    if matches!(status, 401 | 403) && s.retry_after.is_some() {
        // A refusal that says when to come back is a rate limit (GitHub secondary limits).
        s.raise_verdict(Verdict::RateLimited);
    }
    s.prune();
    s
}

/// The verdict a bare status code implies.
fn status_verdict(status: u16, s: &mut Signals) {
    match status {
        429 => s.raise_verdict(Verdict::RateLimited),
        402 => s.raise_verdict(Verdict::OutOfCredit),
        401 | 403 => s.raise_verdict(Verdict::Invalid),
        _ => {}
    }
}

/// `retry-after-ms` (OpenAI, Azure; more precise) else `Retry-After`.
fn retry_after(h: &HeaderMap, now: Micros, s: &mut Signals) {
    // Named by constants: a `&str` name is parsed again at every lookup.
    static RETRY_AFTER_MS: http::HeaderName = http::HeaderName::from_static("retry-after-ms");
    let ms = parse_with(h, &RETRY_AFTER_MS, s, parse_number)
        .filter(|v| *v >= 0.0)
        .and_then(|ms| crate::signals::time::secs_to_micros(ms / 1000.0));
    if let Some(d) = ms {
        s.retry_after = Some(now.saturating_add(d));
        return;
    }
    if let Some(at) = parse_with(h, http::header::RETRY_AFTER, s, |v| {
        parse_retry_after(v, now)
    }) {
        s.retry_after = Some(at);
    }
}

/// The header's value(s) as text, several lines joined by `", "` as RFC 9110 allows.
///
/// Present but not visible ASCII counts as malformed.
pub(crate) fn text<'a>(
    h: &'a HeaderMap,
    name: impl http::header::AsHeaderName,
    s: &mut Signals,
) -> Option<Cow<'a, str>> {
    let mut values = h.get_all(name).iter();
    let first = values.next()?;
    let Ok(first) = first.to_str() else {
        s.malformed += 1;
        return None;
    };
    let mut out = Cow::Borrowed(first);
    for v in values {
        match v.to_str() {
            Ok(v) => {
                let o = out.to_mut();
                o.push_str(", ");
                o.push_str(v);
            }
            Err(_) => {
                s.malformed += 1;
                return None;
            }
        }
    }
    Some(out)
}

/// Parse a header with `parse`; present but unparseable counts as malformed.
pub(crate) fn parse_with<T>(
    h: &HeaderMap,
    name: impl http::header::AsHeaderName,
    s: &mut Signals,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Option<T> {
    let v = text(h, name, s)?;
    let parsed = parse(&v);
    if parsed.is_none() {
        s.malformed += 1;
    }
    parsed
}

/// Header names for one unit's limit, remaining and reset.
pub(crate) struct UnitHeaders<'a> {
    pub unit: SignalUnit,
    pub limit: &'a str,
    pub remaining: &'a str,
    pub reset: &'a str,
}

/// Read limit and remaining as numbers and reset with `reset`, into the unit's entry.
pub(crate) fn read_unit(
    h: &HeaderMap,
    names: &UnitHeaders<'_>,
    s: &mut Signals,
    reset: impl FnOnce(&str) -> Option<Micros>,
) {
    let limit = parse_with(h, names.limit, s, parse_number);
    let remaining = parse_with(h, names.remaining, s, parse_number);
    let reset_at = parse_with(h, names.reset, s, reset);
    let u = s.unit_mut(names.unit);
    u.limit = limit.or(u.limit);
    u.remaining = remaining.or(u.remaining);
    u.reset_at = reset_at.or(u.reset_at);
}

#[cfg(test)]
pub(crate) fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        let name = http::header::HeaderName::from_bytes(k.as_bytes()).unwrap();
        h.append(name, http::HeaderValue::from_str(v).unwrap());
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Micros = 1_700_000_000_000_000;
    const S: u64 = 1_000_000;

    fn sig(status: u16, pairs: &[(&str, &str)]) -> Signals {
        from_headers(&[], &[], status, &header_map(pairs), NOW)
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(
            sig(429, &[("retry-after", "20")]).retry_after,
            Some(NOW + 20 * S)
        );
        assert_eq!(
            sig(429, &[("Retry-After", "0.5")]).retry_after,
            Some(NOW + S / 2)
        );
        assert_eq!(
            sig(503, &[("retry-after", "Tue, 14 Nov 2023 22:14:20 GMT")]).retry_after,
            Some(NOW + 60 * S)
        );
        let ms = sig(429, &[("retry-after-ms", "1500"), ("retry-after", "2")]);
        assert_eq!(ms.retry_after, Some(NOW + 1_500_000));
        let bad = sig(429, &[("retry-after", "soon")]);
        assert_eq!((bad.retry_after, bad.malformed), (None, 1));
    }

    /// A success's `Retry-After` means nothing (RFC 9110 §10.2.3): it cools no key.
    #[test]
    fn retry_after_is_read_on_answers_other_than_success() {
        for status in [200, 201, 204, 299] {
            let s = sig(status, &[("retry-after", "20"), ("retry-after-ms", "5")]);
            assert_eq!((s.retry_after, s.malformed), (None, 0), "{status}");
        }
        for status in [301, 400, 403, 429, 500, 503] {
            assert_eq!(
                sig(status, &[("retry-after", "20")]).retry_after,
                Some(NOW + 20 * S),
                "{status}"
            );
        }
    }

    #[test]
    fn status_verdicts() {
        assert_eq!(sig(200, &[]).verdict, None);
        assert_eq!(sig(429, &[]).verdict, Some(Verdict::RateLimited));
        assert_eq!(sig(401, &[]).verdict, Some(Verdict::Invalid));
        assert_eq!(sig(403, &[]).verdict, Some(Verdict::Invalid));
        assert_eq!(sig(402, &[]).verdict, Some(Verdict::OutOfCredit));
        assert_eq!(
            sig(403, &[("retry-after", "60")]).verdict,
            Some(Verdict::RateLimited)
        );
        assert_eq!(sig(500, &[]).verdict, None);
    }

    #[test]
    fn non_ascii_header_is_malformed() {
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            http::HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        );
        let s = from_headers(&[], &[], 429, &h, NOW);
        assert_eq!((s.retry_after, s.malformed), (None, 1));
    }
}
