//! Random bytes at the parsers peers can reach, so every CI run exercises what `fuzz/` does
//! at length (see docs/reliability.md): the listener's first-head check, the upstream signal
//! parsers (headers and error bodies, every family), the SSE parser and usage readers, and the
//! config loader. Pass: no panic, and the verdicts that must hold do.

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use quota_proxy::listener::{sniff, Sniff};
use quota_proxy::signals::{self, time, usage_from_json, Family, SseParser, UsageFormat};

const NOW: u64 = 1_750_000_000_000_000;

/// Bytes biased towards HTTP: mostly printable, with CR, LF, colons, NUL and high bytes.
fn http_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        8 => 0x20u8..0x7f,
        2 => Just(b'\r'),
        2 => Just(b'\n'),
        2 => Just(b':'),
        1 => Just(0u8),
        1 => 0x80u8..=0xff,
    ];
    prop::collection::vec(byte, 0..max)
}

/// A request head built from parts, some of them hostile.
fn request_heads() -> impl Strategy<Value = Vec<u8>> {
    let method = prop_oneof![
        Just("GET"),
        Just("POST"),
        Just("CONNECT"),
        Just("G\u{0}T"),
        Just("")
    ];
    let target = prop_oneof![
        Just("http://api.mock.test/v1/x".to_string()),
        Just("/mock/v1".to_string()),
        Just("api.mock.test:443".to_string()),
        "[ -~]{0,40}",
    ];
    let version = prop_oneof![
        Just("HTTP/1.1"),
        Just("HTTP/1.0"),
        Just("HTTP/2.0"),
        Just("HTTP/x")
    ];
    let header = prop_oneof![
        Just("Host: a".to_string()),
        Just("Content-Length: 3".to_string()),
        Just("Content-Length: 4".to_string()),
        Just("Transfer-Encoding: chunked".to_string()),
        Just("Transfer-Encoding: gzip".to_string()),
        "[!-~]{1,10}: [ -~]{0,20}",
    ];
    (
        method,
        target,
        version,
        prop::collection::vec(header, 0..6),
        http_bytes(64),
    )
        .prop_map(|(m, t, v, hs, tail)| {
            let mut s = format!("{m} {t} {v}\r\n").into_bytes();
            for h in hs {
                s.extend_from_slice(h.as_bytes());
                s.extend_from_slice(b"\r\n");
            }
            s.extend_from_slice(b"\r\n");
            s.extend(tail);
            s
        })
}

fn header_map(bytes: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in bytes.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) {
            headers.append(n, v);
        }
    }
    headers
}

/// Header lines with names the signal families read and values of every shape.
fn signal_headers() -> impl Strategy<Value = Vec<u8>> {
    let name = prop_oneof![
        Just("retry-after"),
        Just("retry-after-ms"),
        Just("x-ratelimit-remaining-requests"),
        Just("x-ratelimit-reset-tokens"),
        Just("anthropic-ratelimit-tokens-reset"),
        Just("ratelimit"),
        Just("ratelimit-policy"),
        Just("ratelimit-reset"),
        Just("x-ratelimit-reset"),
        Just("x-requests-remaining"),
        Just("x-requests-last"),
    ];
    let value = prop_oneof![
        "[0-9]{0,25}",
        "-?[0-9]{1,5}(\\.[0-9]{0,5})?(e[0-9]{1,4})?",
        "[0-9]{1,4}(ms|s|m|h)([0-9]{1,3}(ms|s|m))?",
        "[ -~]{0,40}",
        Just("\"default\";r=0;t=99999999999999999999".to_string()),
        Just("Wed, 21 Oct 2015 07:28:00 GMT".to_string()),
        Just("2024-99-99T99:99:99Z".to_string()),
    ];
    prop::collection::vec((name, value), 0..8).prop_map(|hs| {
        hs.iter()
            .flat_map(|(n, v)| format!("{n}: {v}\n").into_bytes())
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn first_head_check_never_panics_and_refuses_only_with_4xx(
        bytes in prop_oneof![http_bytes(512), request_heads()],
        max in prop_oneof![Just(64usize), Just(1024usize), Just(65536usize)],
    ) {
        if let Sniff::Invalid(err) = sniff(&bytes, max) {
            let status = err.status().as_u16();
            prop_assert!((400..500).contains(&status), "status {}", status);
        }
    }

    #[test]
    fn signal_parsers_never_panic(
        head in prop_oneof![signal_headers(), http_bytes(256)],
        body in http_bytes(256),
        status in prop_oneof![Just(200u16), Just(401u16), Just(403u16), Just(429u16), 100u16..600],
    ) {
        let headers = header_map(&head);
        let mut s = signals::from_headers(&Family::ALL, &[], status, &headers, NOW);
        signals::from_body(&Family::ALL, &[], status, &body, NOW, &mut s);
        let _ = s.cooling_until();
        let text = String::from_utf8_lossy(&head);
        let _ = time::parse_retry_after(&text, NOW);
        let _ = time::parse_duration(&text);
        let _ = time::parse_rfc3339(&text);
        let _ = time::parse_http_date(&text);
    }

    #[test]
    fn sse_and_usage_readers_never_panic(
        body in prop_oneof![
            http_bytes(512),
            "(data: \\{\"usage\":\\{\"prompt_tokens\":-?[0-9e.]{0,8}[,}\\]]{0,3}\n{0,2}|event: [a-z_]{0,10}\n|: ping\n|\n)*"
                .prop_map(String::into_bytes),
        ],
        step in 1usize..32,
    ) {
        let formats = [UsageFormat::OpenAi, UsageFormat::Anthropic, UsageFormat::Gemini, UsageFormat::Keepa];
        let mut parser = SseParser::new(256);
        let mut datas: Vec<Vec<u8>> = Vec::new();
        for chunk in body.chunks(step) {
            parser.feed(chunk, |_, ev| {
                if let Some(ev) = ev {
                    datas.push(ev.data.to_vec());
                }
            });
        }
        parser.finish(|ev| datas.push(ev.data.to_vec()));
        datas.push(body.clone());
        for d in &datas {
            for f in &formats {
                let _ = usage_from_json(f, d);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn config_loader_answers_every_text_with_a_config_or_an_error(
        text in prop_oneof![
            "[ -~\n]{0,300}",
            // Near-valid configs: real sections and keys with random values.
            (
                prop::sample::select(vec!["[proxy]", "[admin]", "[state]", "[providers.x]", "[[providers.x.limits]]", "[providers.x.keys]"]),
                prop::collection::vec(
                    (
                        prop::sample::select(vec!["listen", "unmatched", "hosts", "amount", "window", "unit", "scope", "route", "upstream", "max_h2_streams", "max_header_bytes", "pool", "inject", "timezone", "drain_timeout"]),
                        prop_oneof![
                            "\"[ -!#-~]{0,20}\"",
                            "-?[0-9]{1,20}(\\.[0-9]{1,3})?",
                            Just("[\"*.\", \"\"]".to_string()),
                            Just("{ header = \"\" }".to_string()),
                            Just("\"${NOPE_UNSET_VAR}\"".to_string()),
                        ],
                    ),
                    0..6,
                ),
            )
                .prop_map(|(section, kvs)| {
                    let mut s = format!("{section}\n");
                    for (k, v) in kvs {
                        s.push_str(&format!("{k} = {v}\n"));
                    }
                    s
                }),
        ],
    ) {
        // The loader reads key files; random text must not point it at devices.
        prop_assume!(!text.contains("file"));
        let _ = quota_proxy::config::parse(std::path::Path::new("prop.toml"), &text);
    }
}
