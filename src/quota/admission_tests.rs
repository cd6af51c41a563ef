//! Table tests of the pure admission decision.

use super::*;
use crate::quota::clock::SECOND;
use crate::quota::priority::PriorityReserve;
use crate::quota::spec::{CalendarPeriod, ClientShares, LimitSpec, ProviderSpec, WindowKind};
use crate::quota::unit::Unit;

pub(crate) const T0: Micros = 1_780_000_000 * SECOND; // 2026-05-28T20:26:40Z
const MIN: Micros = 60 * SECOND;

pub(crate) fn rolling(name: &str, unit: Unit, amount: f64, len: Micros) -> LimitSpec {
    LimitSpec::new(name, unit, amount, WindowKind::Rolling { len })
}

pub(crate) fn bucket(name: &str, unit: Unit, amount: f64, len: Micros, burst: f64) -> LimitSpec {
    LimitSpec::new(name, unit, amount, WindowKind::TokenBucket { len, burst })
}

pub(crate) fn daily(name: &str, unit: Unit, amount: f64) -> LimitSpec {
    LimitSpec::new(
        name,
        unit,
        amount,
        WindowKind::Calendar {
            period: CalendarPeriod::Day,
            tz: chrono_tz::UTC,
        },
    )
}

fn concurrent(amount: f64) -> LimitSpec {
    LimitSpec::new("conc", Unit::Concurrent, amount, WindowKind::None)
}

pub(crate) fn admitted(a: Admission) -> Reservation {
    match a {
        Admission::Admitted(r) => r,
        other => panic!("expected Admitted, got {other:?}"),
    }
}

/// Asserts admission and keeps the usage counted (the reservation is never settled).
pub(crate) fn ok(a: Admission) {
    drop(admitted(a));
}

fn wait(a: Admission) -> Wait {
    match a {
        Admission::Wait(w) => w,
        other => panic!("expected Wait, got {other:?}"),
    }
}

fn too_large(a: Admission) -> TooLarge {
    match a {
        Admission::TooLarge(t) => t,
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

pub(crate) fn used(st: &ProviderState, name: &str, scope_id: &str, now: Micros) -> f64 {
    st.snapshot(now)
        .iter()
        .find(|s| s.name == name && s.scope_id == scope_id)
        .map_or(0.0, |s| s.used)
}

fn state(limits: Vec<LimitSpec>) -> ProviderState {
    ProviderState::new(ProviderSpec::new("p", limits))
}

fn tokens(n: f64) -> Costs {
    Costs::default().with(Unit::Tokens, n)
}

#[test]
fn all_or_nothing() {
    let mut st = state(vec![
        rolling("rpm", Unit::Requests, 2.0, MIN),
        rolling("tpm", Unit::Tokens, 100.0, MIN),
    ]);
    let d = Demand::new("c", tokens(60.0));
    let r = admitted(st.try_admit(&d, T0));
    assert_eq!(r.len(), 2);
    let w = wait(st.try_admit(&d, T0 + 1));
    assert_eq!(w.limit, "tpm");
    assert!(!w.on_release);
    assert_eq!(
        used(&st, "rpm", "", T0 + 1),
        1.0,
        "refused call not counted"
    );
    assert_eq!(used(&st, "tpm", "", T0 + 1), 60.0);
    assert!(st.check(&Demand::new("c", tokens(40.0)), T0 + 2).is_none());
    assert_eq!(used(&st, "rpm", "", T0 + 2), 1.0, "check reserves nothing");
    st.settle(r, &tokens(60.0), T0 + 3);
    ok(st.try_admit(&Demand::new("c", tokens(40.0)), T0 + 4));
}

#[test]
fn wait_is_the_latest_over_limits() {
    let mut st = state(vec![
        rolling("short", Unit::Requests, 1.0, 64 * SECOND),
        rolling("long", Unit::Requests, 1.0, 640 * SECOND),
        daily("day", Unit::Requests, 100.0),
    ]);
    let d = Demand::new("c", Costs::default());
    let _r = admitted(st.try_admit(&d, T0));
    let w = wait(st.try_admit(&d, T0 + SECOND));
    assert_eq!(w.limit, "long");
    // long: 10 s buckets, bucket of T0 leaves at (T0/10s + 65) * 10 s.
    assert_eq!(w.until, (T0 / (10 * SECOND) + 65) * 10 * SECOND);
    assert_eq!((w.scope, w.scope_id.as_str()), (Scope::Provider, ""));
}

#[test]
fn too_large_against_whole_amount_and_priority_cap() {
    let reserve = PriorityReserve {
        high: 0.0,
        normal: 0.1,
        low: 0.5,
    };
    let mut st = state(vec![daily("usd", Unit::Usd, 10.0).with_reserve(reserve)]);
    let usd = |n| Costs::default().with(Unit::Usd, n);
    let t = too_large(st.try_admit(&Demand::new("c", usd(11.0)), T0));
    assert_eq!(
        (t.limit.as_str(), t.cost, t.cap, t.amount),
        ("usd", 11.0, 9.0, 10.0)
    );
    let low = Demand::new("c", usd(6.0)).with_priority(Priority::Low);
    assert_eq!(too_large(st.try_admit(&low, T0)).cap, 5.0);
    let crit = Demand::new("c", usd(10.0)).with_priority(Priority::Critical);
    ok(st.try_admit(&crit, T0));
    assert_eq!(used(&st, "usd", "", T0), 10.0);
}

#[test]
fn priority_reserves() {
    let reserve = PriorityReserve {
        high: 0.0,
        normal: 0.05,
        low: 0.10,
    };
    let mut st = state(vec![daily("d", Unit::Requests, 100.0).with_reserve(reserve)]);
    let at = |p| Demand::new("c", Costs::default()).with_priority(p);
    for _ in 0..90 {
        ok(st.try_admit(&at(Priority::Low), T0));
    }
    let w = wait(st.try_admit(&at(Priority::Low), T0));
    assert_eq!(w.until, (T0 / (86_400 * SECOND) + 1) * 86_400 * SECOND);
    for _ in 0..5 {
        ok(st.try_admit(&at(Priority::Normal), T0));
    }
    wait(st.try_admit(&at(Priority::Normal), T0));
    for _ in 0..5 {
        ok(st.try_admit(&at(Priority::High), T0));
    }
    wait(st.try_admit(&at(Priority::Critical), T0));
    assert_eq!(used(&st, "d", "", T0), 100.0);
}

#[test]
fn scopes_and_skips() {
    let mut st = state(vec![
        rolling("per-key", Unit::Requests, 1.0, MIN).with_scope(Scope::Key),
        rolling("per-account", Unit::Requests, 2.0, MIN).with_scope(Scope::Account),
        rolling("per-client", Unit::Requests, 3.0, MIN).with_scope(Scope::Client),
    ]);
    let d = Demand::new("a", Costs::default());
    // No key, no account: only the client limit applies.
    for _ in 0..3 {
        assert_eq!(admitted(st.try_admit(&d, T0)).len(), 1);
    }
    assert_eq!(wait(st.try_admit(&d, T0)).scope_id, "a");
    ok(st.try_admit(&Demand::new("b", Costs::default()), T0));
    let k1 = Demand::new("b", Costs::default())
        .with_key("k1")
        .with_account("org");
    assert_eq!(admitted(st.try_admit(&k1, T0)).len(), 3);
    let w = wait(st.try_admit(&k1, T0));
    assert_eq!(
        (w.limit.as_str(), w.scope, w.scope_id.as_str()),
        ("per-key", Scope::Key, "k1")
    );
    let k2 = Demand::new("c", Costs::default())
        .with_key("k2")
        .with_account("org");
    ok(st.try_admit(&k2, T0));
    let k3 = Demand::new("d", Costs::default())
        .with_key("k3")
        .with_account("org");
    assert_eq!(wait(st.try_admit(&k3, T0)).scope_id, "org");
}

#[test]
fn per_key_overrides_and_additions() {
    let mut spec = ProviderSpec::new(
        "p",
        vec![rolling("rpm", Unit::Requests, 3.0, MIN).with_scope(Scope::Key)],
    );
    spec.key_limits = vec![(
        "small".into(),
        vec![
            rolling("rpm", Unit::Requests, 1.0, MIN),
            daily("daily", Unit::Requests, 10.0),
        ],
    )];
    let mut st = ProviderState::new(spec);
    let small = Demand::new("c", Costs::default()).with_key("small");
    assert_eq!(admitted(st.try_admit(&small, T0)).len(), 2);
    let w = wait(st.try_admit(&small, T0));
    assert_eq!((w.limit.as_str(), w.scope), ("rpm", Scope::Key));
    let big = Demand::new("c", Costs::default()).with_key("big");
    for _ in 0..3 {
        assert_eq!(admitted(st.try_admit(&big, T0)).len(), 1);
    }
    wait(st.try_admit(&big, T0));
    assert_eq!(used(&st, "daily", "small", T0), 1.0);
}

#[test]
fn settle_up_down_and_cancel() {
    let mut st = state(vec![
        rolling("rpm", Unit::Requests, 10.0, MIN),
        daily("tpd", Unit::Tokens, 1000.0),
    ]);
    let r = admitted(st.try_admit(&Demand::new("c", tokens(50.0)), T0));
    st.settle(r, &tokens(80.0), T0 + SECOND);
    assert_eq!(used(&st, "tpd", "", T0 + SECOND), 80.0);
    let r = admitted(st.try_admit(&Demand::new("c", tokens(50.0)), T0));
    st.settle(r, &tokens(20.0), T0 + SECOND);
    assert_eq!(used(&st, "tpd", "", T0 + SECOND), 100.0);
    assert_eq!(used(&st, "rpm", "", T0 + SECOND), 2.0);
    let r = admitted(st.try_admit(&Demand::new("c", tokens(500.0)), T0));
    st.cancel(r, T0 + SECOND);
    assert_eq!(used(&st, "tpd", "", T0 + SECOND), 100.0);
    assert_eq!(
        used(&st, "rpm", "", T0 + SECOND),
        2.0,
        "cancel refunds the request"
    );
    let r = admitted(st.try_admit(&Demand::new("c", tokens(500.0)), T0));
    st.settle_at_estimate(r, T0 + SECOND);
    assert_eq!(used(&st, "tpd", "", T0 + SECOND), 600.0);
    // Settling to garbage never panics and never goes negative.
    let r = admitted(st.try_admit(&Demand::new("c", tokens(1.0)), T0));
    st.settle(r, &tokens(f64::NAN).with(Unit::Requests, -3.0), T0 + SECOND);
    assert!(used(&st, "tpd", "", T0 + SECOND) >= 0.0);
}

#[test]
fn settle_after_the_period_rolled_changes_nothing_new() {
    let mut st = state(vec![daily("tpd", Unit::Tokens, 1000.0)]);
    let midnight = (T0 / (86_400 * SECOND) + 1) * 86_400 * SECOND;
    let r = admitted(st.try_admit(&Demand::new("c", tokens(100.0)), midnight - SECOND));
    let r2 = admitted(st.try_admit(&Demand::new("c", tokens(10.0)), midnight + SECOND));
    st.settle(r, &tokens(900.0), midnight + 2 * SECOND);
    assert_eq!(used(&st, "tpd", "", midnight + 2 * SECOND), 10.0);
    st.cancel(r2, midnight + 3 * SECOND);
    assert_eq!(used(&st, "tpd", "", midnight + 3 * SECOND), 0.0);
}

#[test]
fn concurrency_waits_for_release() {
    let mut st = state(vec![
        concurrent(2.0),
        rolling("rpm", Unit::Requests, 100.0, MIN),
    ]);
    let d = Demand::new("c", Costs::default());
    let a = admitted(st.try_admit(&d, T0));
    let _b = admitted(st.try_admit(&d, T0));
    let w = wait(st.try_admit(&d, T0 + 5));
    assert!(w.on_release);
    assert_eq!((w.until, w.limit.as_str()), (T0 + 5, "conc"));
    st.settle(a, &Costs::default(), T0 + 6);
    let c = admitted(st.try_admit(&d, T0 + 7));
    assert_eq!(used(&st, "conc", "", T0 + 7), 2.0);
    st.cancel(c, T0 + 8);
    assert_eq!(used(&st, "conc", "", T0 + 8), 1.0);
    assert_eq!(used(&st, "rpm", "", T0 + 8), 2.0);
    let mut zero = state(vec![concurrent(0.0)]);
    too_large(zero.try_admit(&d, T0));
}

#[test]
fn token_bucket_limit() {
    let bucket = LimitSpec::new(
        "tb",
        Unit::Requests,
        60.0,
        WindowKind::TokenBucket {
            len: MIN,
            burst: 5.0,
        },
    );
    let mut st = state(vec![bucket]);
    let d = Demand::new("c", Costs::default());
    for _ in 0..5 {
        ok(st.try_admit(&d, T0));
    }
    assert_eq!(wait(st.try_admit(&d, T0)).until, T0 + SECOND);
    let s = &st.snapshot(T0)[0];
    assert_eq!(
        (s.used, s.amount, s.resets_at),
        (5.0, 5.0, Some(T0 + 5 * SECOND))
    );
    assert_eq!(s.window, "token_bucket/1m");
}

#[test]
fn zero_cost_units_are_skipped() {
    let mut st = state(vec![rolling("tpm", Unit::Tokens, 0.0, MIN)]);
    let r = admitted(st.try_admit(&Demand::new("c", Costs::default()), T0));
    assert!(r.is_empty());
    too_large(st.try_admit(&Demand::new("c", tokens(1.0)), T0));
}

fn tavily(borrow: bool) -> ProviderState {
    let mut spec = ProviderSpec::new("tavily", vec![daily("credits", Unit::Credits, 100.0)]);
    spec.shares = Some(ClientShares {
        shares: vec![("europe".into(), 0.4), ("americas".into(), 0.35)],
        borrow,
    });
    ProviderState::new(spec)
}

fn credits(client: &str, n: f64) -> Demand<'_> {
    Demand::new(client, Costs::default().with(Unit::Credits, n))
}

#[test]
fn shares_without_borrow() {
    let mut st = tavily(false);
    ok(st.try_admit(&credits("europe", 40.0), T0));
    let w = wait(st.try_admit(&credits("europe", 1.0), T0));
    assert_eq!(w.limit, "credits");
    assert_eq!(w.until, (T0 / (86_400 * SECOND) + 1) * 86_400 * SECOND);
    assert_eq!(
        too_large(st.try_admit(&credits("europe", 41.0), T0)).cap,
        40.0
    );
    // Unlisted clients share the 25% remainder.
    ok(st.try_admit(&credits("apac", 20.0), T0));
    ok(st.try_admit(&credits("oceania", 5.0), T0));
    wait(st.try_admit(&credits("apac", 1.0), T0));
    ok(st.try_admit(&credits("americas", 35.0), T0));
    let shares = &st.snapshot(T0)[0].shares;
    let by: Vec<(Option<&str>, f64, f64)> = shares
        .iter()
        .map(|s| (s.client.as_deref(), s.used, s.guaranteed))
        .collect();
    assert_eq!(
        by,
        vec![
            (Some("europe"), 40.0, 40.0),
            (Some("americas"), 35.0, 35.0),
            (None, 25.0, 25.0)
        ]
    );
}

#[test]
fn shares_with_borrow() {
    let mut st = tavily(true);
    // Europe may borrow the unallocated 25 but never americas' unused 35.
    ok(st.try_admit(&credits("europe", 60.0), T0));
    ok(st.try_admit(&credits("europe", 5.0), T0));
    wait(st.try_admit(&credits("europe", 1.0), T0));
    wait(st.try_admit(&credits("apac", 1.0), T0));
    ok(st.try_admit(&credits("americas", 35.0), T0));
    assert_eq!(used(&st, "credits", "", T0), 100.0);
    assert_eq!(
        too_large(st.try_admit(&credits("europe", 66.0), T0)).cap,
        65.0
    );
    // A settle below the estimate gives the guarantee back to its owner, not to borrowers.
    let mut st = tavily(true);
    let r = admitted(st.try_admit(&credits("americas", 35.0), T0));
    ok(st.try_admit(&credits("europe", 65.0), T0));
    st.settle(r, &Costs::default().with(Unit::Credits, 5.0), T0);
    wait(st.try_admit(&credits("apac", 1.0), T0));
    wait(st.try_admit(&credits("europe", 1.0), T0));
    ok(st.try_admit(&credits("americas", 30.0), T0));
    wait(st.try_admit(&credits("americas", 1.0), T0));
}

#[test]
fn shadow_counts_but_never_refuses() {
    let mut spec = ProviderSpec::new("p", vec![rolling("rpm", Unit::Requests, 1.0, MIN)]);
    spec.shadow = true;
    let mut st = ProviderState::new(spec);
    let d = Demand::new("c", Costs::default());
    assert!(admitted(st.try_admit(&d, T0)).shadow_verdict().is_none());
    let r = admitted(st.try_admit(&d, T0));
    assert!(matches!(r.shadow_verdict(), Some(Verdict::Wait(w)) if w.limit == "rpm"));
    let big = Demand::new("c", Costs::default().with(Unit::Requests, 5.0));
    let r = admitted(st.try_admit(&big, T0));
    assert!(matches!(r.shadow_verdict(), Some(Verdict::TooLarge(_))));
    assert_eq!(used(&st, "rpm", "", T0), 7.0);
}

#[test]
fn warn_once_per_window() {
    let mut st = state(vec![daily("d", Unit::Requests, 10.0).with_warn_at(0.8)]);
    let d = Demand::new("c", Costs::default());
    for _ in 0..7 {
        ok(st.try_admit(&d, T0));
    }
    assert!(!st.has_warnings());
    ok(st.try_admit(&d, T0));
    let w = st.take_warnings();
    assert_eq!(w.len(), 1);
    assert_eq!(
        (w[0].limit.as_str(), w[0].used, w[0].amount),
        ("d", 8.0, 10.0)
    );
    ok(st.try_admit(&d, T0));
    assert!(st.take_warnings().is_empty(), "once per window");
    let next = (T0 / (86_400 * SECOND) + 1) * 86_400 * SECOND;
    for _ in 0..8 {
        ok(st.try_admit(&d, next));
    }
    assert_eq!(st.take_warnings().len(), 1, "again in the next period");
}

#[test]
fn a_reload_that_adds_warn_at_warns() {
    // Whether any limit warns is fixed per state; a reload must carry the new answer.
    let mut st = state(vec![daily("d", Unit::Requests, 10.0)]);
    let d = Demand::new("c", Costs::default());
    for _ in 0..8 {
        ok(st.try_admit(&d, T0));
    }
    assert!(!st.has_warnings());
    st.reconfigure(ProviderSpec::new(
        "p",
        vec![daily("d", Unit::Requests, 10.0).with_warn_at(0.8)],
    ));
    ok(st.try_admit(&d, T0));
    let w = st.take_warnings();
    assert_eq!(w.len(), 1);
    assert_eq!((w[0].limit.as_str(), w[0].used), ("d", 9.0));
}

#[test]
fn snapshot_lists_provider_limits_before_use() {
    let st = state(vec![
        daily("d", Unit::Usd, 5.0),
        rolling("rpm", Unit::Requests, 10.0, MIN).with_scope(Scope::Client),
        concurrent(3.0),
    ]);
    let snap = st.snapshot(T0);
    assert_eq!(snap.len(), 2);
    assert_eq!(snap[0].window, "day (UTC)");
    assert_eq!(snap[0].remaining, 5.0);
    assert_eq!(
        snap[0].resets_at,
        Some((T0 / (86_400 * SECOND) + 1) * 86_400 * SECOND)
    );
    assert_eq!(
        (snap[1].window.as_str(), snap[1].resets_at),
        ("concurrent", None)
    );
}

#[test]
fn reconfigure_keeps_unchanged_limits() {
    let mut st = state(vec![
        rolling("rpm", Unit::Requests, 10.0, MIN),
        daily("d", Unit::Requests, 100.0),
        concurrent(5.0),
    ]);
    let d = Demand::new("c", Costs::default());
    let r = admitted(st.try_admit(&d, T0));
    ok(st.try_admit(&d, T0));
    // rpm: amount changes (kept); d: window changes (reset); conc unchanged (kept).
    st.reconfigure(ProviderSpec::new(
        "p",
        vec![
            concurrent(5.0),
            rolling("rpm", Unit::Requests, 20.0, MIN),
            rolling("d", Unit::Requests, 100.0, MIN),
        ],
    ));
    assert_eq!(used(&st, "rpm", "", T0), 2.0);
    assert_eq!(used(&st, "d", "", T0), 0.0);
    assert_eq!(used(&st, "conc", "", T0), 2.0);
    st.cancel(r, T0);
    assert_eq!(used(&st, "conc", "", T0), 1.0, "old reservation settles");
    assert_eq!(used(&st, "rpm", "", T0), 1.0);
    // A reservation from another state is ignored.
    let mut other = state(vec![concurrent(5.0)]);
    let foreign = admitted(other.try_admit(&d, T0));
    st.cancel(foreign, T0);
    assert_eq!(used(&st, "conc", "", T0), 1.0);
}

#[test]
fn prune_forgets_idle_scopes_only() {
    let mut st = state(vec![
        rolling("rpm", Unit::Requests, 10.0, MIN).with_scope(Scope::Client)
    ]);
    let held = admitted(st.try_admit(&Demand::new("busy", Costs::default()), T0));
    let done = admitted(st.try_admit(&Demand::new("idle", Costs::default()), T0));
    st.cancel(done, T0);
    assert_eq!(st.prune(T0), 1);
    assert_eq!(st.snapshot(T0).len(), 1);
    ok(st.try_admit(&Demand::new("new", Costs::default()), T0));
    st.cancel(held, T0);
    assert_eq!(used(&st, "rpm", "busy", T0), 0.0);
    assert_eq!(used(&st, "rpm", "new", T0), 1.0);
}

#[test]
fn a_restamped_call_leaves_the_rolling_window_a_window_after_it_was_sent() {
    let len = 128 * SECOND; // 1 s sub-buckets
    let mut st = state(vec![
        rolling("rpm", Unit::Requests, 1.0, len),
        rolling("tpm", Unit::Tokens, 100.0, len),
        daily("rpd", Unit::Requests, 10.0),
    ]);
    let d = Demand::new("c", tokens(100.0));
    let mut r = admitted(st.try_admit(&d, T0));
    // Sent in the same sub-bucket: nothing moves, so the window frees as it would have.
    st.restamp(&mut r, T0 + 900_000);
    assert_eq!(r.restamp_after, T0 + SECOND);
    // Sent ten seconds after its admission (its connection took that long).
    st.restamp(&mut r, T0 + 10 * SECOND);
    assert_eq!(r.restamp_after, T0 + 11 * SECOND);
    assert_eq!(used(&st, "rpm", "", T0 + 10 * SECOND), 1.0);
    // Unmoved, the call would have left at T0 + 130 s (its sub-bucket's end, the window and
    // the margin sub-bucket); it now leaves ten seconds later.
    let w = wait(st.try_admit(&d, T0 + 130 * SECOND));
    assert_eq!(w.until, T0 + 140 * SECOND);
    // Settling corrects the bucket it moved to: 40 tokens used, counted until T0 + 140 s.
    st.settle(r, &tokens(40.0), T0 + 11 * SECOND);
    assert_eq!(used(&st, "tpm", "", T0 + 135 * SECOND), 40.0);
    assert_eq!(used(&st, "tpm", "", T0 + 140 * SECOND), 0.0);
    // The calendar counter keeps the call where it was admitted.
    assert_eq!(used(&st, "rpd", "", T0 + 140 * SECOND), 1.0);
    ok(st.try_admit(&d, T0 + 140 * SECOND));
}

#[test]
fn restamping_a_reservation_without_rolling_windows_moves_nothing() {
    let mut st = state(vec![daily("rpd", Unit::Requests, 1.0), concurrent(1.0)]);
    let mut r = admitted(st.try_admit(&Demand::new("c", Costs::default()), T0));
    assert_eq!(r.restamp_after, Micros::MAX);
    st.restamp(&mut r, T0 + 10 * SECOND);
    assert_eq!(used(&st, "rpd", "", T0 + 10 * SECOND), 1.0);
    st.settle(r, &Costs::default(), T0 + 11 * SECOND);
    assert_eq!(used(&st, "conc", "", T0 + 11 * SECOND), 0.0);
}

/// A call that a later limit refuses after the earlier ones counted it leaves every counter
/// bit for bit as it was, in each kind of meter: the counts are put back, not subtracted
/// (here `0.1 + 0.2 + 0.2 - 0.2` would read `0.3`, not the `0.30000000000000004` counted).
#[test]
fn a_refusal_after_counting_puts_every_counter_back_exactly() {
    let spec = || {
        ProviderSpec::new(
            "p",
            vec![
                rolling("usd-minute", Unit::Usd, 1e6, MIN),
                daily("usd-day", Unit::Usd, 1e6),
                bucket("usd-bucket", Unit::Usd, 1e6, MIN, 1e6),
                concurrent(100.0),
                rolling("rpm", Unit::Requests, 2.0, MIN),
            ],
        )
    };
    let usd = |v: f64| Demand::new("c", Costs::default().with(Unit::Usd, v));
    let (mut refused, mut reference) = (ProviderState::new(spec()), ProviderState::new(spec()));
    for st in [&mut refused, &mut reference] {
        // The first call creates the counters; the second is counted in one pass.
        ok(st.try_admit(&usd(0.1), T0));
        ok(st.try_admit(&usd(0.2), T0 + 1));
    }
    assert_eq!(
        used(&refused, "usd-minute", "", T0 + 2),
        0.1 + 0.2,
        "the sum that does not survive a subtraction"
    );
    // Every USD limit and the concurrency gauge count it before the request limit refuses;
    // the reference only asks (its meters move to the same time, counting nothing).
    let w = wait(refused.try_admit(&usd(0.2), T0 + 2));
    assert_eq!(w.limit, "rpm");
    assert!(matches!(
        reference.check(&usd(0.2), T0 + 2),
        Some(Verdict::Wait(_))
    ));
    let now = T0 + 3;
    let counters = |st: &ProviderState| {
        st.slots
            .iter()
            .map(|s| (s.meter.used(now).to_bits(), s.outstanding))
            .collect::<Vec<_>>()
    };
    assert_eq!(counters(&refused), counters(&reference));
    // And the state decides the same afterwards.
    assert_eq!(
        wait(refused.try_admit(&usd(0.2), now)).until,
        wait(reference.try_admit(&usd(0.2), now)).until
    );
}
