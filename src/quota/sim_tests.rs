//! Simulations of whole providers against the full admitted log: no overshoot in any
//! window, exact accounting, guaranteed shares, and utilisation when driven at 2× the limit.

use std::collections::VecDeque;

use proptest::prelude::*;

use crate::quota::admission::tests::{daily, rolling, T0};
use crate::quota::calendar::period_bounds;
use crate::quota::clock::{Micros, SECOND};
use crate::quota::spec::{CalendarPeriod, ClientShares, LimitSpec, ProviderSpec, WindowKind};
use crate::quota::unit::{Costs, Unit};
use crate::quota::{Admission, Demand, Priority, ProviderState, Reservation};

/// Checks every interval of length `len` starting at an admission against `amount`.
fn assert_rolling(log: &[(Micros, f64)], len: Micros, amount: f64) -> Result<(), TestCaseError> {
    for (i, &(s, _)) in log.iter().enumerate() {
        let sum: f64 = log[i..]
            .iter()
            .take_while(|(t, _)| *t < s + len)
            .map(|(_, c)| c)
            .sum();
        prop_assert!(
            sum <= amount + 1e-9,
            "{} > {} in [{}, +{})",
            sum,
            amount,
            s,
            len
        );
    }
    Ok(())
}

#[derive(Debug, Clone)]
struct Op {
    dt: Micros,
    tokens: u32,
    /// 0 keep in flight, 1 settle exact, 2 settle lower, 3 cancel
    outcome: u8,
    /// settle the oldest in-flight reservation first
    settle_oldest: bool,
}

fn op() -> impl Strategy<Value = Op> {
    (0u64..20 * SECOND, 1u32..400, 0u8..4, any::<bool>()).prop_map(
        |(dt, tokens, outcome, settle_oldest)| Op {
            dt,
            tokens,
            outcome,
            settle_oldest,
        },
    )
}

/// One log line: admission time, requests and tokens finally counted.
type Line = (Micros, f64, f64);

fn settle_line(
    st: &mut ProviderState,
    log: &mut [Line],
    r: Reservation,
    idx: usize,
    how: u8,
    now: Micros,
) {
    // What the call reserved: one request and the tokens logged at its admission.
    let est = Costs::default().with(Unit::Tokens, log[idx].2);
    let actual = match how {
        1 => est,
        2 => est.with(Unit::Tokens, (est.tokens / 2.0).floor()),
        _ => Costs::ZERO,
    };
    if how == 3 {
        st.cancel(r, now);
    } else {
        st.settle(r, &actual, now);
    }
    log[idx].1 = actual.requests;
    log[idx].2 = actual.tokens;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn three_limits_never_overshoot(
        rpm in 1u32..20,
        rpm_s in 1u64..90,
        tpm in 400u32..3000,
        tpm_s in 1u64..300,
        tpd in 1000u32..20_000,
        ops in prop::collection::vec(op(), 1..250),
    ) {
        let (rpm, tpm, tpd) = (f64::from(rpm), f64::from(tpm), f64::from(tpd));
        let tz = chrono_tz::Europe::Berlin;
        let day = LimitSpec::new("tpd", Unit::Tokens, tpd, WindowKind::Calendar { period: CalendarPeriod::Day, tz });
        let mut st = ProviderState::new(ProviderSpec::new("p", vec![
            rolling("rpm", Unit::Requests, rpm, rpm_s * SECOND),
            rolling("tpm", Unit::Tokens, tpm, tpm_s * SECOND),
            day,
        ]));
        let mut log: Vec<Line> = Vec::new();
        let mut in_flight: VecDeque<(Reservation, usize, u8)> = VecDeque::new();
        // Start near a Berlin midnight so that the day rolls during the run.
        let mut t = period_bounds(CalendarPeriod::Day, tz, T0).1 - 600 * SECOND;
        for o in ops {
            t += o.dt;
            let d = Demand::new("c", Costs::default().with(Unit::Tokens, f64::from(o.tokens)));
            match st.try_admit(&d, t) {
                Admission::Admitted(r) => {
                    log.push((t, 1.0, f64::from(o.tokens)));
                    in_flight.push_back((r, log.len() - 1, o.outcome));
                }
                Admission::Wait(w) => prop_assert!(w.until > t),
                Admission::TooLarge(x) => prop_assert!(x.cost > x.cap),
            }
            let next = if o.settle_oldest { in_flight.pop_front() } else { in_flight.pop_back() };
            if let Some((r, idx, how)) = next {
                if how == 0 {
                    in_flight.push_back((r, idx, 1));
                } else {
                    settle_line(&mut st, &mut log, r, idx, how, t);
                }
            }
            // Exact accounting of the current day: refused calls never counted.
            let (start, _) = period_bounds(CalendarPeriod::Day, tz, t);
            let today: f64 = log.iter().filter(|l| l.0 >= start).map(|l| l.2).sum();
            let snap = st.snapshot(t);
            prop_assert_eq!(snap[2].used, today);
        }
        let reqs: Vec<(Micros, f64)> = log.iter().map(|l| (l.0, l.1)).collect();
        let toks: Vec<(Micros, f64)> = log.iter().map(|l| (l.0, l.2)).collect();
        assert_rolling(&reqs, rpm_s * SECOND, rpm)?;
        assert_rolling(&toks, tpm_s * SECOND, tpm)?;
        let mut days: Vec<(Micros, f64)> = Vec::new();
        for &(at, _, tokens) in &log {
            let start = period_bounds(CalendarPeriod::Day, tz, at).0;
            match days.last_mut() {
                Some((s, sum)) if *s == start => *sum += tokens,
                _ => days.push((start, tokens)),
            }
        }
        prop_assert!(days.iter().all(|(_, sum)| *sum <= tpd));
    }

    /// A listed client within its guarantee is never refused; the total never overshoots;
    /// without borrow nobody exceeds its share.
    #[test]
    fn shares_are_guaranteed(
        borrow in any::<bool>(),
        demands in prop::collection::vec((0usize..4, 1u32..12), 1..200),
    ) {
        let clients = ["europe", "americas", "apac", "other"];
        let shares = [0.4, 0.35, 0.15];
        let amount = 200.0;
        let mut spec = ProviderSpec::new("p", vec![daily("credits", Unit::Credits, amount)]);
        spec.shares = Some(ClientShares {
            shares: clients[..3].iter().zip(shares).map(|(c, s)| (c.to_string(), s)).collect(),
            borrow,
        });
        let mut st = ProviderState::new(spec);
        let mut used = [0.0f64; 4];
        for (c, cost) in demands {
            let cost = f64::from(cost);
            let d = Demand::new(clients[c], Costs::default().with(Unit::Credits, cost))
                .with_priority(Priority::Critical);
            let guaranteed = c < 3 && used[c] + cost <= shares[c] * amount;
            match st.try_admit(&d, T0) {
                Admission::Admitted(r) => { drop(r); used[c] += cost; }
                other => prop_assert!(!guaranteed, "{} refused within its share: {:?}", clients[c], other),
            }
            prop_assert!(used.iter().sum::<f64>() <= amount);
            if !borrow {
                for g in 0..3 {
                    prop_assert!(used[g] <= shares[g] * amount + 1e-9);
                }
                prop_assert!(used[3] <= 0.1 * amount + 1e-9);
            }
        }
    }
}

/// Driven at 2× the limit through a FIFO queue: ≥ 97% of the permitted rate is used in
/// steady state, and no window overshoots.
#[test]
fn fifo_at_twice_the_limit_uses_97_percent() {
    let (amount, len) = (600.0, 60 * SECOND);
    let mut st = ProviderState::new(ProviderSpec::new(
        "p",
        vec![
            rolling("rpm", Unit::Requests, amount, len),
            rolling("tpm", Unit::Tokens, 1e9, len),
            daily("day", Unit::Usd, 1e9),
        ],
    ));
    let gap = len / (2 * amount as u64);
    let (start, end) = (T0, T0 + 60 * len);
    let mut queue: VecDeque<Micros> = VecDeque::new();
    let mut next_arrival = start;
    let mut t = start;
    let mut log: Vec<(Micros, f64)> = Vec::new();
    let costs = Costs::default()
        .with(Unit::Tokens, 100.0)
        .with(Unit::Usd, 0.01);
    while t < end {
        while next_arrival <= t {
            queue.push_back(next_arrival);
            next_arrival += gap;
        }
        let mut until = next_arrival;
        while let Some(_arrived) = queue.front() {
            match st.try_admit(&Demand::new("c", costs), t) {
                Admission::Admitted(r) => {
                    st.settle(r, &costs, t);
                    log.push((t, 1.0));
                    queue.pop_front();
                }
                Admission::Wait(w) => {
                    until = until.min(w.until);
                    break;
                }
                Admission::TooLarge(x) => panic!("{x:?}"),
            }
        }
        t = until.max(t + 1);
    }
    let steady = log
        .iter()
        .filter(|(t, _)| *t >= start + 5 * len && *t < start + 55 * len)
        .count() as f64;
    let utilisation = steady / (50.0 * amount);
    assert!(
        (0.97..=1.0).contains(&utilisation),
        "utilisation {utilisation}"
    );
    assert!(assert_rolling(&log, len, amount).is_ok());
}

fn wild_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(-1.0),
        Just(0.0),
        Just(f64::MAX),
        0.0f64..1e6,
    ]
}

proptest! {
    /// Garbage in (any time, NaN/∞/negative amounts and costs, clocks going backwards,
    /// reloads): never a panic.
    #[test]
    fn nothing_panics(
        amounts in prop::collection::vec(wild_f64(), 5),
        ops in prop::collection::vec((any::<u64>(), wild_f64(), wild_f64(), 0u8..5), 1..60),
    ) {
        let limits = |a: &[f64]| vec![
            rolling("r", Unit::Requests, a[0], 60 * SECOND),
            LimitSpec::new("b", Unit::Tokens, a[1], WindowKind::TokenBucket { len: SECOND, burst: a[2] }),
            daily("d", Unit::Usd, a[3]),
            LimitSpec::new("c", Unit::Concurrent, a[4], WindowKind::None),
            LimitSpec::new("w", Unit::Credits, a[0], WindowKind::Calendar { period: CalendarPeriod::Week, tz: chrono_tz::Asia::Kolkata }),
        ];
        let mut spec = ProviderSpec::new("p", limits(&amounts));
        spec.shares = Some(ClientShares { shares: vec![("a".into(), amounts[0])], borrow: true });
        let mut st = ProviderState::new(spec.clone());
        let mut held = Vec::new();
        for (now, x, y, action) in ops {
            let costs = Costs::default().with(Unit::Tokens, x).with(Unit::Usd, y).with(Unit::Credits, x);
            match action {
                0 | 1 => {
                    if let Admission::Admitted(r) = st.try_admit(&Demand::new("a", costs), now) {
                        held.push(r);
                    }
                }
                2 => if let Some(r) = held.pop() { st.settle(r, &costs, now) },
                3 => if let Some(r) = held.pop() { st.cancel(r, now) },
                _ => st.reconfigure(spec.clone()),
            }
            let _ = st.snapshot(now);
            let _ = st.prune(now);
        }
    }
}
