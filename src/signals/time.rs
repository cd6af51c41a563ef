//! Parsing the ways upstreams write times: delta seconds, Go-style durations (`6m0s`),
//! HTTP dates (IMF-fixdate, RFC 850, asctime), RFC 3339 and epoch seconds.
//!
//! Every function returns `None` on anything it does not understand; callers count that as
//! malformed. All results are µs, absolute ones since the UNIX epoch; nothing reads a clock.

use chrono::{DateTime, NaiveDate};

use crate::signals::Micros;

/// Largest delta or epoch we accept, in seconds (about 31,700 years): beyond is garbage.
const MAX_SECS: f64 = 1e12;

/// Seconds (finite, non-negative, sane) to µs.
pub fn secs_to_micros(secs: f64) -> Option<Micros> {
    if secs.is_finite() && (0.0..MAX_SECS).contains(&secs) {
        Some((secs * 1e6).round() as Micros)
    } else {
        None
    }
}

/// A plain decimal number: digits with an optional sign, fraction and exponent.
///
/// Stricter than `f64::from_str`, which also takes `inf` and `NaN`.
pub fn parse_number(s: &str) -> Option<f64> {
    let s = s.trim();
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
        && s.bytes().any(|b| b.is_ascii_digit());
    if !ok {
        return None;
    }
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Non-negative delta seconds (`"30"`, `"1.5"`) to µs.
pub fn parse_delta_seconds(s: &str) -> Option<Micros> {
    parse_number(s).and_then(secs_to_micros)
}

/// A Go-style duration (`1s`, `6m0s`, `20ms`, `1h2m3.5s`, `0.5s`, `1.5µs`) to µs.
///
/// A bare number is taken as seconds. Units: `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`, `d`.
pub fn parse_duration(s: &str) -> Option<Micros> {
    let s = s.trim();
    if let Some(v) = parse_number(s) {
        return secs_to_micros(v);
    }
    let mut rest = s;
    let mut total = 0.0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        if num_len == 0 {
            return None;
        }
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(rest.len(), |(i, _)| i);
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    secs_to_micros(total)
}

/// An RFC 3339 timestamp (`2024-04-05T18:01:00Z`, fractions and offsets allowed) to µs.
pub fn parse_rfc3339(s: &str) -> Option<Micros> {
    let dt = DateTime::parse_from_rfc3339(s.trim()).ok()?;
    Micros::try_from(dt.timestamp_micros()).ok()
}

/// Seconds since the UNIX epoch to µs; values above 10^12 are taken as milliseconds.
pub fn epoch_to_micros(v: f64) -> Option<Micros> {
    if v > MAX_SECS {
        secs_to_micros(v / 1000.0)
    } else {
        secs_to_micros(v)
    }
}

/// An HTTP date: IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), RFC 850
/// (`Sunday, 06-Nov-94 08:49:37 GMT`) or asctime (`Sun Nov  6 08:49:37 1994`), to µs.
pub fn parse_http_date(s: &str) -> Option<Micros> {
    let s = s.trim();
    if let Ok(dt) = DateTime::parse_from_rfc2822(s) {
        return Micros::try_from(dt.timestamp_micros()).ok();
    }
    let cleaned = s.replace(',', " ");
    let tokens: Vec<&str> = cleaned.split_whitespace().collect();
    let (day, month, year, time) = match tokens.as_slice() {
        // IMF-fixdate with a zone chrono refused, e.g. "UTC".
        [_, d, m, y, t, zone] if is_utc(zone) => (*d, *m, *y, *t),
        // RFC 850: "Sunday, 06-Nov-94 08:49:37 GMT".
        [_, dmy, t, zone] if is_utc(zone) => {
            let mut parts = dmy.split('-');
            let (d, m, y) = (parts.next()?, parts.next()?, parts.next()?);
            (d, m, y, *t)
        }
        // asctime: "Sun Nov  6 08:49:37 1994".
        [_, m, d, t, y] => (*d, *m, *y, *t),
        _ => return None,
    };
    civil_to_micros(day, month, year, time)
}

fn is_utc(zone: &str) -> bool {
    matches!(zone, "GMT" | "UTC" | "Z" | "+0000")
}

fn civil_to_micros(day: &str, month: &str, year: &str, time: &str) -> Option<Micros> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let month = month.get(..3)?.to_ascii_lowercase();
    let month = MONTHS.iter().position(|m| *m == month)? as u32 + 1;
    let day: u32 = day.parse().ok()?;
    let mut year: i32 = year.parse().ok()?;
    if year < 100 {
        // RFC 850 two-digit years: the closest century, as RFC 9110 §5.6.7 suggests.
        year += if year < 70 { 2000 } else { 1900 };
    }
    let mut hms = time.split(':').map(|p| p.parse::<u32>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    let dt = NaiveDate::from_ymd_opt(year, month, day)?.and_hms_opt(h, m, sec)?;
    Micros::try_from(dt.and_utc().timestamp_micros()).ok()
}

/// A `Retry-After` value: delta seconds (decimals tolerated) or an HTTP date; absolute µs.
///
/// A date in the past means "now".
pub fn parse_retry_after(s: &str, now: Micros) -> Option<Micros> {
    if let Some(d) = parse_delta_seconds(s) {
        return Some(now.saturating_add(d));
    }
    parse_http_date(s).map(|t| t.max(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    #[test]
    fn durations() {
        let cases: &[(&str, Option<u64>)] = &[
            ("1s", Some(S)),
            ("6m0s", Some(360 * S)),
            ("20ms", Some(20_000)),
            ("1h2m3.5s", Some(3723 * S + S / 2)),
            ("0.5s", Some(S / 2)),
            ("8.64s", Some(8_640_000)),
            ("17ms", Some(17_000)),
            ("2m59.56s", Some(179_560_000)),
            ("1.5µs", Some(2)),
            ("250us", Some(250)),
            ("30", Some(30 * S)),
            ("1d", Some(86_400 * S)),
            ("", None),
            ("s", None),
            ("1x", None),
            ("-1s", None),
            ("1s2", None),
            ("inf", None),
            ("NaN", None),
            ("1..2s", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_duration(input), *want, "{input:?}");
        }
    }

    #[test]
    fn http_dates() {
        let want = Some(784_111_777 * S);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), want);
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), want);
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), want);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 UTC"), want);
        assert_eq!(
            parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(1_445_412_480 * S)
        );
        for bad in [
            "",
            "yesterday",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun Foo 6 08:49:37 1994",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after() {
        let now = 1_700_000_000 * S;
        assert_eq!(parse_retry_after("120", now), Some(now + 120 * S));
        assert_eq!(parse_retry_after("1.5", now), Some(now + 3 * S / 2));
        assert_eq!(parse_retry_after(" 0 ", now), Some(now));
        assert_eq!(
            parse_retry_after("Fri, 31 Dec 1999 23:59:59 GMT", now),
            Some(now)
        );
        assert_eq!(
            parse_retry_after("Tue, 14 Nov 2023 22:13:40 GMT", now),
            Some(now + 20 * S)
        );
        for bad in ["-5", "soon", "1e400", "NaN", ""] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn rfc3339_and_epoch() {
        assert_eq!(
            parse_rfc3339("2024-04-05T18:01:00Z"),
            Some(1_712_340_060 * S)
        );
        assert_eq!(
            parse_rfc3339("2024-04-05T18:01:00.5+00:00"),
            Some(1_712_340_060 * S + S / 2)
        );
        assert_eq!(parse_rfc3339("1960-01-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2024-04-05"), None);
        assert_eq!(epoch_to_micros(1_691_591_363.0), Some(1_691_591_363 * S));
        assert_eq!(
            epoch_to_micros(1_691_591_363_000.0),
            Some(1_691_591_363 * S)
        );
        assert_eq!(epoch_to_micros(-1.0), None);
    }
}
