//! Table tests for [`from_headers`] on header values as the providers' docs show them.

use proptest::prelude::*;

use crate::signals::headers::header_map;
use crate::signals::*;

pub(crate) const NOW: Micros = 1_712_340_000_000_000; // 2024-04-05T18:00:00Z
pub(crate) const S: u64 = 1_000_000;

pub(crate) fn unit(
    unit: SignalUnit,
    limit: Option<f64>,
    remaining: Option<f64>,
    reset: Option<u64>,
) -> UnitSignal {
    UnitSignal {
        unit,
        limit,
        remaining,
        reset_at: reset,
    }
}

pub(crate) fn read(families: &[Family], status: u16, pairs: &[(&str, &str)]) -> Signals {
    from_headers(families, &[], status, &header_map(pairs), NOW)
}

#[test]
fn openai_docs_example() {
    let s = read(
        &[Family::OpenAi],
        200,
        &[
            ("x-ratelimit-limit-requests", "60"),
            ("x-ratelimit-limit-tokens", "150000"),
            ("x-ratelimit-remaining-requests", "59"),
            ("x-ratelimit-remaining-tokens", "149984"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ],
    );
    assert_eq!(
        s.units,
        vec![
            unit(SignalUnit::Requests, Some(60.0), Some(59.0), Some(NOW + S)),
            unit(
                SignalUnit::Tokens,
                Some(150000.0),
                Some(149984.0),
                Some(NOW + 360 * S)
            ),
        ]
    );
    assert_eq!((s.verdict, s.malformed, s.retry_after), (None, 0, None));
}

#[test]
fn openai_reset_variants_and_garbage() {
    let cases: &[(&str, Option<u64>, u32)] = &[
        ("20ms", Some(NOW + 20_000), 0),
        ("1h2m3.5s", Some(NOW + 3_723_500_000), 0),
        ("0.5s", Some(NOW + S / 2), 0),
        ("8.64s", Some(NOW + 8_640_000), 0),
        ("tomorrow", None, 1),
        ("", None, 1),
    ];
    for (value, want, malformed) in cases {
        let s = read(
            &[Family::OpenAi],
            200,
            &[
                ("x-ratelimit-reset-tokens", value),
                ("x-ratelimit-remaining-tokens", "12"),
            ],
        );
        let u = s.unit(SignalUnit::Tokens).unwrap();
        assert_eq!((u.reset_at, s.malformed), (*want, *malformed), "{value:?}");
    }
    let s = read(
        &[Family::OpenAi],
        200,
        &[("x-ratelimit-limit-requests", "lots")],
    );
    assert_eq!((s.units.len(), s.malformed), (0, 1));
}

#[test]
fn anthropic_docs_example() {
    let s = read(
        &[Family::Anthropic],
        429,
        &[
            ("retry-after", "20"),
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", "2024-04-05T18:00:20Z"),
            ("anthropic-ratelimit-tokens-limit", "90000"),
            ("anthropic-ratelimit-tokens-remaining", "88000"),
            ("anthropic-ratelimit-tokens-reset", "2024-04-05T18:00:01.5Z"),
            ("anthropic-ratelimit-input-tokens-limit", "40000"),
            ("anthropic-ratelimit-input-tokens-remaining", "39000"),
            (
                "anthropic-ratelimit-input-tokens-reset",
                "2024-04-05T18:00:02Z",
            ),
            ("anthropic-ratelimit-output-tokens-limit", "8000"),
            ("anthropic-ratelimit-output-tokens-remaining", "7000"),
            ("anthropic-ratelimit-output-tokens-reset", "not a date"),
        ],
    );
    assert_eq!(s.retry_after, Some(NOW + 20 * S));
    assert_eq!(s.verdict, Some(Verdict::RateLimited));
    assert_eq!(s.malformed, 1);
    assert_eq!(
        s.units,
        vec![
            unit(
                SignalUnit::Requests,
                Some(50.0),
                Some(0.0),
                Some(NOW + 20 * S)
            ),
            unit(
                SignalUnit::Tokens,
                Some(90000.0),
                Some(88000.0),
                Some(NOW + 3 * S / 2)
            ),
            unit(
                SignalUnit::InputTokens,
                Some(40000.0),
                Some(39000.0),
                Some(NOW + 2 * S)
            ),
            unit(SignalUnit::OutputTokens, Some(8000.0), Some(7000.0), None),
        ]
    );
    assert_eq!(s.cooling_until(), Some(NOW + 20 * S));
}

#[test]
fn github_docs_example() {
    let pairs = [
        ("x-ratelimit-limit", "5000"),
        ("x-ratelimit-remaining", "4999"),
        ("x-ratelimit-used", "1"),
        ("x-ratelimit-reset", "1712343600"),
        ("x-ratelimit-resource", "core"),
    ];
    let s = read(&[Family::Github], 200, &pairs);
    assert_eq!(
        s.units,
        vec![unit(
            SignalUnit::Requests,
            Some(5000.0),
            Some(4999.0),
            Some(NOW + 3600 * S)
        )]
    );
    // Primary limit hit: 403 with nothing remaining is a rate limit, not a bad key.
    let s = read(
        &[Family::Github],
        403,
        &[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-used", "60"),
            ("x-ratelimit-reset", "1712340600"),
        ],
    );
    assert_eq!(s.verdict, Some(Verdict::RateLimited));
    assert_eq!(s.units[0].limit, Some(60.0));
    assert_eq!(s.cooling_until(), Some(NOW + 600 * S));
    assert_eq!(
        read(&[Family::Github], 403, &[]).verdict,
        Some(Verdict::Invalid)
    );
}

#[test]
fn odds_api_credits() {
    let s = read(
        &[Family::OddsApi],
        200,
        &[
            ("x-requests-remaining", "19853"),
            ("x-requests-used", "147"),
            ("x-requests-last", "3"),
        ],
    );
    assert_eq!(
        s.units,
        vec![unit(
            SignalUnit::Credits,
            Some(20000.0),
            Some(19853.0),
            None
        )]
    );
    assert_eq!((s.cost, s.verdict), (Some(3.0), None));
    let s = read(
        &[Family::OddsApi],
        401,
        &[("x-requests-remaining", "0"), ("x-requests-used", "500")],
    );
    assert_eq!(s.verdict, Some(Verdict::OutOfCredit));
}

#[test]
fn custom_header_formats() {
    let custom = |name: &str, field, format| CustomSignal {
        source: Source::Header(name.into()),
        field,
        unit: SignalUnit::Credits,
        format,
    };
    let mappings = vec![
        custom("x-credits-left", Field::Remaining, Format::Number),
        custom("x-credits-quota", Field::Limit, Format::Number),
        custom("x-credits-reset", Field::Reset, Format::Duration),
        custom("x-credits-cost", Field::Cost, Format::Number),
        custom("x-absent", Field::Limit, Format::Number),
    ];
    let h = header_map(&[
        ("x-credits-left", "42.5"),
        ("x-credits-quota", "1000"),
        ("x-credits-reset", "1m30s"),
        ("x-credits-cost", "2"),
    ]);
    let s = from_headers(&[], &mappings, 200, &h, NOW);
    assert_eq!(
        s.units,
        vec![unit(
            SignalUnit::Credits,
            Some(1000.0),
            Some(42.5),
            Some(NOW + 90 * S)
        )]
    );
    assert_eq!((s.cost, s.malformed), (Some(2.0), 0));

    let resets: &[(Format, &str, Option<u64>)] = &[
        (Format::Seconds, "12.5", Some(NOW + 12_500_000)),
        (Format::Number, "3", Some(NOW + 3 * S)),
        (Format::Epoch, "1712340100", Some(NOW + 100 * S)),
        (Format::Epoch, "1712340100000", Some(NOW + 100 * S)),
        (Format::Rfc3339, "2024-04-05T18:01:00Z", Some(NOW + 60 * S)),
        (Format::Rfc3339, "12", None),
        (Format::Duration, "soon", None),
    ];
    for (format, value, want) in resets {
        let m = vec![custom("x-reset", Field::Reset, *format)];
        let s = from_headers(&[], &m, 200, &header_map(&[("x-reset", value)]), NOW);
        let got = s.unit(SignalUnit::Credits).and_then(|u| u.reset_at);
        assert_eq!(got, *want, "{format:?} {value:?}");
        assert_eq!(s.malformed, u32::from(want.is_none()));
    }
}

#[test]
fn families_parse_by_name() {
    for f in Family::ALL {
        assert_eq!(f.name().parse::<Family>(), Ok(f));
    }
    assert!("OpenAI".parse::<Family>().is_err());
    let err = "tavily".parse::<Family>().unwrap_err().to_string();
    assert!(err.contains("odds_api"), "{err}");
}

proptest! {
    #[test]
    fn garbage_headers_never_panic(
        values in prop::collection::vec("[ -~]{0,40}", 1..8),
        status in 100u16..600,
        now in any::<u64>(),
    ) {
        let names = [
            "retry-after", "retry-after-ms", "x-ratelimit-reset-tokens", "x-ratelimit-limit",
            "x-ratelimit-remaining", "x-ratelimit-reset", "ratelimit", "ratelimit-policy",
            "anthropic-ratelimit-requests-reset", "x-requests-remaining", "ratelimit-limit",
        ];
        let pairs: Vec<(&str, &str)> = values
            .iter()
            .enumerate()
            .map(|(i, v)| (names[i % names.len()], v.as_str()))
            .collect();
        let s = from_headers(&Family::ALL, &[], status, &header_map(&pairs), now);
        prop_assert!(s.units.iter().all(|u| !u.is_empty()));
    }
}
