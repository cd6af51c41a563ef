//! Header normalisation [pure]: hop-by-hop and proxy-only headers are stripped in both
//! directions; the `x-quota-*` request headers are read into [`CallerHints`] and consumed.

use std::borrow::Cow;

use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderName};

use crate::quota::Priority;

/// Request headers the proxy reads and never forwards.
pub const CLIENT_HEADER: &str = "x-quota-client";
pub const PRIORITY_HEADER: &str = "x-quota-priority";
pub const MAX_DELAY_HEADER: &str = "x-quota-max-delay";
/// The client of a call that names none.
pub const ANONYMOUS: &str = "anonymous";

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including those named by `Connection`. `Transfer-Encoding` is
/// left to hyper, which re-frames bodies itself.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names is cheaper than nine
    // hashed removals. Counting the names present lets the removals below stop once all
    // are gone: a `Connection: close` request pays one removal, not nine.
    let present = headers.keys().filter(|k| is_hop_by_hop(k)).count();
    strip_counted(headers, present);
}

/// [`strip_hop_by_hop`] for a message the proxy then sets `own` on: also tells whether it
/// arrived with a header of that name, found in the same pass over the names (a hashed
/// lookup of a custom name costs more than that pass).
pub fn strip_hop_by_hop_noting(headers: &mut HeaderMap, own: &HeaderName) -> bool {
    let mut found = false;
    let present = headers
        .keys()
        .filter(|k| {
            found |= *k == own;
            is_hop_by_hop(k)
        })
        .count();
    strip_counted(headers, present);
    found
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == header::TRANSFER_ENCODING || HOP_BY_HOP.contains(name)
}

/// Removes the hop-by-hop headers, `present` of them found by a pass over the names.
fn strip_counted(headers: &mut HeaderMap, mut present: usize) {
    if present == 0 {
        return;
    }
    // Other headers `Connection` names. `close` and `keep-alive` are the usual tokens: the
    // first names no header, the second one removed below anyway, and skipping them spares
    // building (allocating) a header name for each.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.eq_ignore_ascii_case("close") && !t.eq_ignore_ascii_case("keep-alive"))
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    // Before the names `Connection` lists, which may be hop-by-hop ones too (and would
    // then no longer be found here, only make the loop try every name).
    for name in HOP_BY_HOP.into_iter().chain([header::TRANSFER_ENCODING]) {
        if present == 0 {
            break;
        }
        if headers.remove(&name).is_some() {
            present -= 1;
        }
    }
    for name in named {
        headers.remove(name);
    }
}

/// Who is calling and how patient they are, from the consumed request headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerHints {
    /// `anonymous` unless the caller named itself (borrowed then: no allocation per call).
    pub client: Cow<'static, str>,
    pub priority: Priority,
    pub max_delay: Option<std::time::Duration>,
    /// The password from `Proxy-Authorization: Basic`, if any.
    pub proxy_password: Option<String>,
}

/// Reads the caller hints and removes the `x-quota-*` headers. Hop-by-hop headers (including
/// `Proxy-Authorization`) are removed separately by [`strip_hop_by_hop`].
pub fn take_caller_hints(headers: &mut HeaderMap) -> Result<CallerHints, String> {
    // One pass over the names finds both kinds (a hashed lookup costs about as much).
    let hinted = headers
        .keys()
        .any(|k| *k == header::PROXY_AUTHORIZATION || k.as_str().starts_with("x-quota-"));
    if !hinted {
        return Ok(CallerHints {
            client: Cow::Borrowed(ANONYMOUS),
            priority: Priority::Normal,
            max_delay: None,
            proxy_password: None,
        });
    }
    let basic = headers
        .get(header::PROXY_AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_basic);
    let client = match headers.remove(CLIENT_HEADER) {
        Some(v) => {
            let v = v
                .to_str()
                .map_err(|_| format!("{CLIENT_HEADER} must be visible ASCII"))?
                .trim();
            if v.is_empty() || v.len() > 128 || !v.chars().all(is_id_char) {
                return Err(format!("{CLIENT_HEADER} must be 1 to 128 characters of letters, digits, `-`, `_`, `.`, `@` or `:`"));
            }
            Cow::Owned(v.to_string())
        }
        None => match &basic {
            Some((user, _))
                if !user.is_empty() && user.chars().all(is_id_char) && user.len() <= 128 =>
            {
                Cow::Owned(user.clone())
            }
            _ => Cow::Borrowed(ANONYMOUS),
        },
    };
    let priority = match headers.remove(PRIORITY_HEADER) {
        None => Priority::Normal,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                format!("{PRIORITY_HEADER} must be one of critical, high, normal, low")
            })?,
    };
    let max_delay = match headers.remove(MAX_DELAY_HEADER) {
        None => None,
        Some(v) => {
            let text = v.to_str().unwrap_or("").trim().to_string();
            let parsed = match text.parse::<f64>() {
                Ok(secs) if secs >= 0.0 && secs.is_finite() && secs < 1e9 => {
                    Ok(std::time::Duration::from_secs_f64(secs))
                }
                _ => crate::config::parse_duration(&text),
            };
            Some(parsed.map_err(|_| {
                format!("{MAX_DELAY_HEADER} must be a duration like \"5s\" or a number of seconds")
            })?)
        }
    };
    Ok(CallerHints {
        client,
        priority,
        max_delay,
        proxy_password: basic.map(|(_, p)| p),
    })
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | ':')
}

/// `Basic base64(user:password)` → (user, password).
fn parse_basic(value: &str) -> Option<(String, String)> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, pass) = text.split_once(':').unwrap_or((&text, ""));
    Some((user.to_string(), pass.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic abc"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("transfer-encoding", "chunked"),
            ("content-type", "application/json"),
            ("authorization", "Bearer app"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "content-type"]);

        // Each alone, with `close`, a named header after `keep-alive`, and repeated
        // `Connection` headers.
        for (hop, value) in [
            ("connection", "close"),
            ("connection", "Keep-Alive"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic abc"),
            ("upgrade", "h2c"),
            ("trailer", "x-checksum"),
        ] {
            let mut h = map(&[(hop, value), ("content-type", "text/plain")]);
            strip_hop_by_hop(&mut h);
            let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
            assert_eq!(left, ["content-type"], "{hop}: {value}");
        }
        let mut h = map(&[
            ("connection", "close"),
            ("connection", "keep-alive , x-one,x-two"),
            ("x-one", "1"),
            ("x-two", "2"),
            ("x-three", "3"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-three"]);

        // A hop-by-hop name repeated, and one that `Connection` also lists.
        let mut h = map(&[
            ("te", "trailers"),
            ("te", "gzip"),
            ("connection", "upgrade"),
            ("upgrade", "h2c"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn client_identity_rules() {
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("europe:pw")
        );
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (vec![("x-quota-client", "batch-1")], "batch-1"),
            (
                vec![
                    ("x-quota-client", "batch-1"),
                    ("proxy-authorization", &basic),
                ],
                "batch-1",
            ),
            (vec![("proxy-authorization", &basic)], "europe"),
            (vec![], "anonymous"),
            (vec![("proxy-authorization", "Bearer xyz")], "anonymous"),
        ];
        for (headers, want) in cases {
            let mut h = map(&headers);
            let hints = take_caller_hints(&mut h).unwrap();
            assert_eq!(hints.client, want);
            assert!(h.get(CLIENT_HEADER).is_none());
        }
        let mut h = map(&[("proxy-authorization", &basic)]);
        assert_eq!(
            take_caller_hints(&mut h).unwrap().proxy_password.as_deref(),
            Some("pw")
        );
    }

    #[test]
    fn priority_and_max_delay() {
        let mut h = map(&[("x-quota-priority", "LOW"), ("x-quota-max-delay", "2.5")]);
        let hints = take_caller_hints(&mut h).unwrap();
        assert_eq!(hints.priority, Priority::Low);
        assert_eq!(
            hints.max_delay,
            Some(std::time::Duration::from_millis(2500))
        );
        assert!(h.is_empty());
        let mut h = map(&[("x-quota-max-delay", "1m")]);
        assert_eq!(
            take_caller_hints(&mut h).unwrap().max_delay,
            Some(std::time::Duration::from_secs(60))
        );
        for bad in [
            ("x-quota-priority", "urgent"),
            ("x-quota-max-delay", "soon"),
            ("x-quota-client", "a b"),
        ] {
            assert!(take_caller_hints(&mut map(&[bad])).is_err(), "{bad:?}");
        }
    }
}
