//! Upstream quota signals from response headers and error bodies, every built-in family at
//! once (`quota_proxy::signals::{from_headers, from_body}`) and the time parsers they use.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use quota_proxy::signals::{self, time, Family};

const NOW: u64 = 1_750_000_000_000_000;

fuzz_target!(|data: &[u8]| {
    // Input: header lines `name: value\n`, then an empty line, then the body.
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let mut headers = HeaderMap::new();
    for line in head.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    for status in [200, 401, 403, 429] {
        let mut s = signals::from_headers(&Family::ALL, &[], status, &headers, NOW);
        signals::from_body(&Family::ALL, &[], status, body, NOW, &mut s);
        let _ = s.cooling_until();
    }
    if let Ok(text) = std::str::from_utf8(head) {
        let _ = time::parse_retry_after(text, NOW);
        let _ = time::parse_duration(text);
        let _ = time::parse_rfc3339(text);
        let _ = time::parse_http_date(text);
        let _ = time::parse_number(text);
    }
});
