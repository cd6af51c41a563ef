//! Table tests for the IETF family: the `RateLimit-*` triple, comma lists (Brave), epoch
//! resets under `X-RateLimit-*`, and the structured `RateLimit` / `RateLimit-Policy` fields.

use crate::signals::tests_headers::{read, unit, NOW, S};
use crate::signals::*;

#[test]
fn ietf_triple_and_lists() {
    let cases: &[(&[(&str, &str)], UnitSignal)] = &[
        (
            &[
                ("RateLimit-Limit", "100"),
                ("RateLimit-Remaining", "50"),
                ("RateLimit-Reset", "30"),
            ],
            unit(
                SignalUnit::Requests,
                Some(100.0),
                Some(50.0),
                Some(NOW + 30 * S),
            ),
        ),
        (
            // draft-03: quota policies after the current limit.
            &[
                ("RateLimit-Limit", "10, 10;w=1, 50;w=60"),
                ("RateLimit-Remaining", "9"),
                ("RateLimit-Reset", "1"),
            ],
            unit(SignalUnit::Requests, Some(10.0), Some(9.0), Some(NOW + S)),
        ),
        (
            // Brave: per-second and per-month windows; the second is the tighter here.
            &[
                ("X-RateLimit-Limit", "1, 15000"),
                ("X-RateLimit-Policy", "1;w=1, 15000;w=2592000"),
                ("X-RateLimit-Remaining", "1, 0"),
                ("X-RateLimit-Reset", "1, 1419704"),
            ],
            unit(
                SignalUnit::Requests,
                Some(15000.0),
                Some(0.0),
                Some(NOW + 1_419_704 * S),
            ),
        ),
        (
            &[
                ("X-RateLimit-Limit", "1, 15000"),
                ("X-RateLimit-Remaining", "0, 14999"),
                ("X-RateLimit-Reset", "1, 1419704"),
            ],
            unit(SignalUnit::Requests, Some(1.0), Some(0.0), Some(NOW + S)),
        ),
        (
            // An epoch-second reset under the X- names.
            &[
                ("X-RateLimit-Limit", "30"),
                ("X-RateLimit-Remaining", "29"),
                ("X-RateLimit-Reset", "1712340060"),
            ],
            unit(
                SignalUnit::Requests,
                Some(30.0),
                Some(29.0),
                Some(NOW + 60 * S),
            ),
        ),
    ];
    for (pairs, want) in cases {
        let s = read(&[Family::Ietf], 200, pairs);
        assert_eq!(s.units, vec![want.clone()], "{pairs:?}");
        assert_eq!(s.malformed, 0);
    }
}

#[test]
fn ietf_structured_fields() {
    let cases: &[(&[(&str, &str)], UnitSignal)] = &[
        (
            &[
                ("RateLimit", "\"default\";r=50;t=30"),
                ("RateLimit-Policy", "\"default\";q=100;w=60"),
            ],
            unit(
                SignalUnit::Requests,
                Some(100.0),
                Some(50.0),
                Some(NOW + 30 * S),
            ),
        ),
        (
            // Dictionary form of later drafts, two policies; the daily one is tighter.
            &[
                ("RateLimit-Policy", "burst;q=100;w=60, daily;q=1000;w=86400"),
                ("RateLimit", "burst;r=80;t=10, daily;r=3;t=7200"),
            ],
            unit(
                SignalUnit::Requests,
                Some(1000.0),
                Some(3.0),
                Some(NOW + 7200 * S),
            ),
        ),
        (
            &[("RateLimit", "limit=100, remaining=50, reset=30")],
            unit(
                SignalUnit::Requests,
                Some(100.0),
                Some(50.0),
                Some(NOW + 30 * S),
            ),
        ),
        (
            // A policy counted in bytes does not limit requests.
            &[
                (
                    "RateLimit-Policy",
                    "\"b\";q=1000;qu=\"content-bytes\", \"r\";q=10",
                ),
                ("RateLimit", "\"b\";r=0;t=5, \"r\";r=4;t=9"),
            ],
            unit(
                SignalUnit::Requests,
                Some(10.0),
                Some(4.0),
                Some(NOW + 9 * S),
            ),
        ),
        (
            &[("RateLimit-Policy", "\"default\";q=100;w=60")],
            unit(SignalUnit::Requests, Some(100.0), None, None),
        ),
    ];
    for (pairs, want) in cases {
        let s = read(&[Family::Ietf], 200, pairs);
        assert_eq!(s.units, vec![want.clone()], "{pairs:?}");
        assert_eq!(s.malformed, 0, "{pairs:?}");
    }
    let bad = read(
        &[Family::Ietf],
        200,
        &[("RateLimit", "\"default\";r=lots;t=30")],
    );
    assert_eq!((bad.units.len(), bad.malformed), (0, 1));
}
