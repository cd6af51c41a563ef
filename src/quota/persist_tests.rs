//! Export and import of the engine's counters: round trips per kind, windows over at the
//! restart, identity changes, invalid values, and a property test that a restored engine
//! decides exactly like the one that kept running.

use std::sync::Arc;

use proptest::prelude::*;

use crate::quota::admission::tests::{admitted, bucket, daily, rolling, used, T0};
use crate::quota::clock::{Clock, ManualClock, Micros, SECOND};
use crate::quota::spec::{ClientShares, LimitSpec, ProviderSpec, Scope, WindowKind};
use crate::quota::unit::{Costs, Unit};
use crate::quota::{
    Demand, Engine, EngineExport, ImportReport, KeyOption, MeterExport, Permit, ProviderState,
    Refusal, MAX_CLOCK_SKEW,
};

const MIN64: Micros = 64 * SECOND;
const DAY: Micros = 86_400 * SECOND;

fn credits(n: f64) -> Costs {
    Costs::ZERO.with(Unit::Credits, n)
}

/// Everything a provider can count, with client shares and a per-key override.
fn full_spec(borrow: bool) -> ProviderSpec {
    let mut spec = ProviderSpec::new(
        "p",
        vec![
            rolling("rpm", Unit::Requests, 6.0, MIN64),
            bucket("tpm", Unit::Tokens, 120.0, 60 * SECOND, 100.0),
            daily("credits", Unit::Credits, 40.0).with_warn_at(0.5),
            rolling("per-key", Unit::Requests, 3.0, 30 * SECOND).with_scope(Scope::Key),
            daily("per-client", Unit::Requests, 9.0).with_scope(Scope::Client),
            LimitSpec::new("conc", Unit::Concurrent, 2.0, WindowKind::None),
        ],
    );
    spec.key_limits = vec![(
        "k1".into(),
        vec![rolling("per-key", Unit::Requests, 2.0, 30 * SECOND)],
    )];
    spec.shares = Some(ClientShares {
        shares: vec![("a".into(), 0.5), ("b".into(), 0.25)],
        borrow,
    });
    spec
}

fn round_trip_json(e: &EngineExport) -> EngineExport {
    let text = serde_json::to_string(e).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn import_into(
    spec: ProviderSpec,
    export: &EngineExport,
    now: Micros,
) -> (ProviderState, ImportReport) {
    let mut st = ProviderState::new(spec);
    let mut report = ImportReport::default();
    if let Some(p) = export.providers.get("p") {
        st.import(p.clone(), now, &mut report);
    }
    (st, report)
}

fn export_of(st: &ProviderState, now: Micros) -> EngineExport {
    let mut e = EngineExport::default();
    e.providers.insert("p".into(), st.export(now));
    e
}

#[test]
fn every_kind_round_trips_through_json() {
    let mut st = ProviderState::new(full_spec(true));
    let t = T0 + 10 * SECOND;
    let d = Demand::new(
        "a",
        Costs::default()
            .with(Unit::Tokens, 30.0)
            .with(Unit::Credits, 7.0),
    );
    let r = admitted(st.try_admit(&d.with_key("k1"), t));
    st.settle(
        r,
        &Costs::default()
            .with(Unit::Tokens, 40.0)
            .with(Unit::Credits, 7.0),
        t,
    );
    let d = Demand::new("zed", Costs::default().with(Unit::Credits, 3.0));
    let r = admitted(st.try_admit(&d.with_key("k2"), t + SECOND));
    st.settle(r, &Costs::default().with(Unit::Credits, 3.0), t + SECOND);

    let export = round_trip_json(&export_of(&st, t + 2 * SECOND));
    assert_eq!(
        export,
        export_of(&st, t + 2 * SECOND),
        "JSON keeps every value"
    );
    let names: Vec<&str> = export.providers["p"]
        .limits
        .iter()
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["rpm", "tpm", "credits", "per-key", "per-client", "per-key"]
    );

    let now = t + 5 * SECOND;
    let (back, report) = import_into(full_spec(true), &export, now);
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.restored, 7);
    let (mut a, mut b) = (st.snapshot(now), back.snapshot(now));
    // Concurrency is never exported; both are idle here anyway.
    a.sort_by(|x, y| (&x.name, &x.scope_id).cmp(&(&y.name, &y.scope_id)));
    b.sort_by(|x, y| (&x.name, &x.scope_id).cmp(&(&y.name, &y.scope_id)));
    a.retain(|s| s.unit != Unit::Concurrent);
    b.retain(|s| s.unit != Unit::Concurrent);
    assert_eq!(a, b);
    assert_eq!(used(&back, "credits", "", now), 10.0);
    let shares = &back
        .snapshot(now)
        .iter()
        .find(|s| s.name == "credits")
        .unwrap()
        .shares
        .clone();
    assert_eq!(shares[0].used, 7.0, "client a");
    assert_eq!(shares[2].used, 3.0, "everyone else");
}

#[test]
fn restart_inside_a_window_continues_it_and_after_it_starts_fresh() {
    let spec = || {
        ProviderSpec::new(
            "p",
            vec![
                rolling("rpm", Unit::Requests, 2.0, MIN64),
                bucket("tb", Unit::Requests, 1.0, 60 * SECOND, 2.0),
                daily("day", Unit::Requests, 5.0),
            ],
        )
    };
    let mut st = ProviderState::new(spec());
    for _ in 0..2 {
        drop(admitted(
            st.try_admit(&Demand::new("c", Costs::default()), T0),
        ));
    }
    let export = export_of(&st, T0 + SECOND);

    // 30 s later: the rolling window and the bucket still hold the calls.
    let (mut inside, report) = import_into(spec(), &export, T0 + 30 * SECOND);
    assert_eq!((report.restored, report.expired), (3, 0));
    let now = T0 + 30 * SECOND;
    assert_eq!(used(&inside, "rpm", "", now), 2.0);
    assert_eq!(used(&inside, "day", "", now), 2.0);
    let d = Demand::new("c", Costs::default());
    assert_eq!(inside.check(&d, now), st.check(&d, now));
    assert!(inside.check(&d, now).is_some(), "rpm is full");

    // Two minutes later the rolling window and the bucket are over; the day is not.
    let later = T0 + 2 * MIN64;
    let (after, report) = import_into(spec(), &export, later);
    assert_eq!((report.restored, report.expired), (1, 2), "{report:?}");
    assert_eq!(used(&after, "rpm", "", later), 0.0);
    assert_eq!(used(&after, "day", "", later), 2.0);

    // The next day nothing is left.
    let (_, report) = import_into(spec(), &export, T0 + DAY);
    assert_eq!((report.restored, report.expired), (0, 3));
}

#[test]
fn only_limits_whose_identity_remains_are_restored() {
    let mut st = ProviderState::new(ProviderSpec::new(
        "p",
        vec![
            rolling("rpm", Unit::Requests, 5.0, MIN64),
            rolling("tpm", Unit::Tokens, 500.0, MIN64),
            daily("day", Unit::Requests, 5.0),
        ],
    ));
    let r = admitted(st.try_admit(
        &Demand::new("c", Costs::default().with(Unit::Tokens, 9.0)),
        T0,
    ));
    drop(r);
    let export = export_of(&st, T0);
    // rpm: amount changed (kept, as on a reload); tpm: window changed; day: renamed.
    let changed = ProviderSpec::new(
        "p",
        vec![
            rolling("rpm", Unit::Requests, 50.0, MIN64),
            rolling("tpm", Unit::Tokens, 500.0, 2 * MIN64),
            daily("daily", Unit::Requests, 5.0),
        ],
    );
    let (back, report) = import_into(changed, &export, T0 + SECOND);
    assert_eq!(report.restored, 1);
    assert_eq!(report.unknown_limits, ["p/tpm", "p/day"]);
    assert_eq!(used(&back, "rpm", "", T0 + SECOND), 1.0);
    assert_eq!(used(&back, "tpm", "", T0 + SECOND), 0.0);

    let engine = Engine::new(
        vec![ProviderSpec::new("q", vec![])],
        Arc::new(ManualClock::new(T0)),
    );
    let report = engine.import(export, T0);
    assert_eq!(report.unknown_providers, ["p"]);
}

#[test]
fn invalid_values_are_errors_never_zero() {
    let mut st = ProviderState::new(ProviderSpec::new(
        "p",
        vec![
            rolling("rpm", Unit::Requests, 5.0, MIN64).with_scope(Scope::Client),
            bucket("tb", Unit::Requests, 1.0, 10 * SECOND, 2.0),
            daily("day", Unit::Requests, 5.0),
        ],
    ));
    drop(admitted(
        st.try_admit(&Demand::new("c", Costs::default()), T0),
    ));
    let good = export_of(&st, T0);
    let spec = st.spec().clone();
    type Corrupt = fn(&mut MeterExport);
    let cases: Vec<(Corrupt, &str)> = vec![
        (
            |m| {
                if let MeterExport::Rolling { buckets, .. } = m {
                    buckets[0].1 = -1.0;
                }
            },
            "negative",
        ),
        (
            |m| {
                if let MeterExport::Rolling { buckets, .. } = m {
                    buckets[0].1 = f64::NAN;
                }
            },
            "not a number",
        ),
        (
            |m| {
                if let MeterExport::Rolling { width, .. } = m {
                    *width = 0;
                }
            },
            "width is 0",
        ),
        (
            |m| {
                if let MeterExport::TokenBucket { level, .. } = m {
                    *level = 3.0;
                }
            },
            "exceeds the burst",
        ),
        (
            |m| {
                if let MeterExport::TokenBucket { level, .. } = m {
                    *level = f64::NAN;
                }
            },
            "not a finite number",
        ),
        (
            |m| {
                if let MeterExport::Calendar { used, .. } = m {
                    *used = -0.5;
                }
            },
            "negative",
        ),
        (
            |m| {
                if let MeterExport::Calendar { start, .. } = m {
                    *start += 2 * DAY;
                }
            },
            "clock behind",
        ),
    ];
    for (limit, (corrupt, want)) in [0, 0, 0, 1, 1, 2, 2].into_iter().zip(cases) {
        let mut bad = good.clone();
        let l = &mut bad.providers.get_mut("p").unwrap().limits[limit];
        corrupt(&mut l.counters[0].meter);
        let name = l.name.clone();
        let (back, report) = import_into(spec.clone(), &bad, T0 + SECOND);
        assert_eq!(report.errors.len(), 1, "{want}: {report:?}");
        let e = &report.errors[0];
        assert_eq!(e.limit, name);
        assert!(e.to_string().contains(want), "{e} lacks {want:?}");
        assert!(!report.is_clean());
        assert_eq!(report.restored, 2, "the other counters are restored");
        assert_eq!(
            used(&back, &name, if limit == 0 { "c" } else { "" }, T0 + SECOND),
            0.0
        );
    }
    // A kind that does not fit the window is an error too.
    let mut bad = good.clone();
    let limits = &mut bad.providers.get_mut("p").unwrap().limits;
    limits[2].counters[0].meter = limits[1].counters[0].meter.clone();
    let (_, report) = import_into(spec, &bad, T0 + SECOND);
    assert!(
        report.errors[0].problem.contains("does not fit"),
        "{report:?}"
    );
}

#[test]
fn in_flight_calls_count_at_their_estimate_and_concurrency_is_not_kept() {
    let spec = || {
        ProviderSpec::new(
            "p",
            vec![
                rolling("tpm", Unit::Tokens, 100.0, MIN64),
                LimitSpec::new("conc", Unit::Concurrent, 1.0, WindowKind::None),
            ],
        )
    };
    let mut st = ProviderState::new(spec());
    let r = admitted(st.try_admit(
        &Demand::new("c", Costs::default().with(Unit::Tokens, 80.0)),
        T0,
    ));
    let export = export_of(&st, T0);
    assert_eq!(export.providers["p"].limits.len(), 1, "no concurrency");
    let (mut back, _) = import_into(spec(), &export, T0 + SECOND);
    assert_eq!(used(&back, "tpm", "", T0 + SECOND), 80.0);
    assert_eq!(used(&back, "conc", "", T0 + SECOND), 0.0);
    // The settle reaches only the old process; the restored one keeps the estimate.
    st.settle(r, &Costs::default().with(Unit::Tokens, 10.0), T0 + SECOND);
    assert_eq!(used(&st, "tpm", "", T0 + SECOND), 10.0);
    let d = Demand::new("c", Costs::default().with(Unit::Tokens, 30.0));
    assert!(back.check(&d, T0 + SECOND).is_some());
}

#[test]
fn another_sub_bucket_width_is_counted_at_its_end() {
    // 1 s sub-buckets.
    let spec = || ProviderSpec::new("p", vec![rolling("rpm", Unit::Requests, 5.0, 128 * SECOND)]);
    let mut st = ProviderState::new(spec());
    drop(admitted(
        st.try_admit(&Demand::new("c", Costs::default()), T0),
    ));
    let mut export = export_of(&st, T0);
    if let MeterExport::Rolling { width, .. } =
        &mut export.providers.get_mut("p").unwrap().limits[0].counters[0].meter
    {
        assert_eq!(*width, SECOND);
        *width = 4 * SECOND;
    }
    let (back, _) = import_into(spec(), &export, T0);
    let s = &back.snapshot(T0)[0];
    // Counted in the 1 s sub-bucket holding T0 + 4 s - 1 µs: it leaves 130 s after that
    // bucket's start (the window, the bucket and the margin bucket).
    assert_eq!(s.resets_at, Some(T0 + 3 * SECOND + 130 * SECOND));
}

#[test]
fn a_warning_already_given_is_not_repeated_after_a_restart() {
    let spec = || {
        ProviderSpec::new(
            "p",
            vec![daily("day", Unit::Credits, 10.0).with_warn_at(0.5)],
        )
    };
    let mut st = ProviderState::new(spec());
    drop(admitted(st.try_admit(&Demand::new("c", credits(6.0)), T0)));
    assert_eq!(st.take_warnings().len(), 1);
    let (mut back, _) = import_into(spec(), &export_of(&st, T0), T0 + SECOND);
    drop(admitted(
        back.try_admit(&Demand::new("c", credits(1.0)), T0 + SECOND),
    ));
    assert!(back.take_warnings().is_empty());
}

#[test]
fn times_slightly_ahead_are_accepted() {
    let spec = || ProviderSpec::new("p", vec![rolling("rpm", Unit::Requests, 5.0, 10 * MIN64)]);
    let mut st = ProviderState::new(spec());
    drop(admitted(st.try_admit(
        &Demand::new("c", Costs::default()),
        T0 + MAX_CLOCK_SKEW,
    )));
    let (back, report) = import_into(spec(), &export_of(&st, T0 + MAX_CLOCK_SKEW), T0);
    assert!(report.is_clean() && report.restored == 1, "{report:?}");
    assert_eq!(used(&back, "rpm", "", T0 + MAX_CLOCK_SKEW), 1.0);
}

#[derive(Debug, Clone)]
struct Op {
    dt: Micros,
    client: usize,
    key: usize,
    tokens: u32,
    credits: u32,
    /// 0 settle at the estimate, 1 settle higher, 2 settle lower, 3 cancel.
    outcome: u8,
}

fn op() -> impl Strategy<Value = Op> {
    (
        0u64..15 * SECOND,
        0usize..4,
        0usize..4,
        0u32..60,
        0u32..9,
        0u8..4,
    )
        .prop_map(|(dt, client, key, tokens, credits, outcome)| Op {
            dt,
            client,
            key,
            tokens,
            credits,
            outcome,
        })
}

const CLIENTS: [&str; 4] = ["a", "b", "c", "d"];
const KEYS: [Option<&str>; 4] = [None, Some("k1"), Some("k2"), Some("k3")];

/// Runs `op` on `engine` and settles it at once; returns the decision.
fn run(engine: &Engine, op: &Op) -> Result<Option<usize>, Refusal> {
    let costs = Costs::default()
        .with(Unit::Tokens, f64::from(op.tokens))
        .with(Unit::Credits, f64::from(op.credits));
    let mut demand = Demand::new(CLIENTS[op.client], costs);
    let options = [
        KeyOption {
            key: "k1",
            account: None,
        },
        KeyOption {
            key: "k2",
            account: None,
        },
    ];
    match KEYS[op.key] {
        Some("k3") => demand = demand.with_keys(&options),
        Some(k) => demand = demand.with_key(k),
        None => {}
    }
    let permit: Permit = engine.try_admit("p", &demand)?;
    let key = permit.key();
    let actual = match op.outcome {
        0 => Some(costs),
        1 => Some(costs.with(Unit::Tokens, f64::from(op.tokens) * 2.0)),
        2 => Some(costs.with(Unit::Credits, f64::from(op.credits / 2))),
        _ => None,
    };
    match actual {
        Some(a) => permit.settle(&a),
        None => permit.cancel(),
    }
    Ok(key)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Export, then import into a fresh engine with the same specs: every later decision
    /// (admit, which key, or the refusal with its retry-after) is the same as the engine
    /// that kept running.
    #[test]
    fn restored_engine_decides_like_the_original(
        borrow in any::<bool>(),
        before in prop::collection::vec(op(), 1..80),
        gap in prop_oneof![Just(0u64), 0u64..MIN64, MIN64..3 * MIN64, DAY - 3_600 * SECOND..2 * DAY],
        after in prop::collection::vec(op(), 1..80),
    ) {
        let clock_a = Arc::new(ManualClock::new(T0));
        let a = Engine::new(vec![full_spec(borrow)], clock_a.clone());
        for op in &before {
            clock_a.advance(op.dt);
            let _ = run(&a, op);
        }
        let export = a.export(clock_a.now());
        let start = clock_a.now() + gap;
        clock_a.set(start);
        let clock_b = Arc::new(ManualClock::new(start));
        let b = Engine::new(vec![full_spec(borrow)], clock_b.clone());
        let report = b.import(export, start);
        prop_assert!(report.is_clean(), "{:?}", report);
        for op in &after {
            clock_a.advance(op.dt);
            clock_b.advance(op.dt);
            prop_assert_eq!(run(&a, op), run(&b, op), "{:?}", op);
        }
    }
}
