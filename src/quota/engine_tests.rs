//! Engine tests on paused tokio time (no real sleeps): FIFO, queue bounds, disconnects,
//! reject/delay policy, concurrency wake-ups, permits, reloads.

use std::sync::Mutex as StdMutex;
use std::time::Duration;

use super::*;
use crate::quota::admission::tests::{daily, rolling};
use crate::quota::clock::SystemClock;
use crate::quota::clock::SECOND;
use crate::quota::provider::CONCURRENCY_RETRY_AFTER;
use crate::quota::spec::OnLimitAction;
use crate::quota::spec::{LimitSpec, OnLimit, Scope, WindowKind};
use crate::quota::unit::Costs;
use crate::quota::unit::Unit;

const MIN64: Micros = 64 * SECOND; // 1 s sub-buckets: a full window frees after 64..65 s

fn delay(max_delay: Micros, max_queue: usize) -> OnLimit {
    OnLimit {
        action: OnLimitAction::Delay,
        max_delay,
        max_queue,
    }
}

fn engine_with(limits: Vec<LimitSpec>, on_limit: OnLimit) -> Arc<Engine> {
    let mut spec = ProviderSpec::new("p", limits);
    spec.on_limit = on_limit;
    Arc::new(Engine::new(vec![spec], Arc::new(SystemClock::new())))
}

fn rpm1(on_limit: OnLimit) -> Arc<Engine> {
    engine_with(vec![rolling("rpm", Unit::Requests, 1.0, MIN64)], on_limit)
}

fn req() -> Demand<'static> {
    Demand::new("c", Costs::default())
}

fn permit(r: Result<Permit, Refusal>) -> Permit {
    match r {
        Ok(p) => p,
        Err(e) => panic!("expected a permit, got {e:?}"),
    }
}

fn refusal(r: Result<Permit, Refusal>) -> Refusal {
    match r {
        Ok(p) => panic!("expected a refusal, got a permit delayed {}", p.delayed()),
        Err(e) => e,
    }
}

fn used(e: &Engine, name: &str) -> f64 {
    let now = e.clock().now();
    e.snapshot("p", now)
        .unwrap_or_default()
        .iter()
        .find(|s| s.name == name)
        .map_or(-1.0, |s| s.used)
}

/// Lets spawned tasks run until `cond` holds (no time passes).
async fn until(cond: impl Fn() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition never held");
}

#[tokio::test(start_paused = true)]
async fn fifo_order_with_named_delays() {
    let e = rpm1(delay(600 * SECOND, 10));
    let order = Arc::new(StdMutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..4usize {
        let (e2, order2) = (Arc::clone(&e), Arc::clone(&order));
        tasks.push(tokio::spawn(async move {
            let p = permit(e2.admit("p", req(), None).await);
            order2
                .lock()
                .unwrap_or_else(|x| x.into_inner())
                .push((i, p.delayed()));
            p.settle(&Costs::default());
        }));
        let e3 = Arc::clone(&e);
        let o3 = Arc::clone(&order);
        until(move || {
            let admitted = o3.lock().map(|o| o.len()).unwrap_or(0);
            admitted + e3.queue_len("p").unwrap_or(0) == i + 1
        })
        .await;
    }
    for t in tasks {
        assert!(t.await.is_ok());
    }
    let order = order.lock().map(|o| o.clone()).unwrap_or_default();
    let ids: Vec<usize> = order.iter().map(|(i, _)| *i).collect();
    assert_eq!(ids, vec![0, 1, 2, 3]);
    for (k, (_, delayed)) in order.iter().enumerate() {
        let k = k as u64;
        let (lo, hi) = (k * 64 * SECOND, k * 65 * SECOND + SECOND);
        assert!(
            *delayed >= lo && *delayed <= hi,
            "call {k} delayed {delayed}"
        );
    }
    assert_eq!(e.queue_len("p"), Some(0));
}

#[tokio::test(start_paused = true)]
async fn queue_full_refuses_at_once() {
    let e = rpm1(delay(600 * SECOND, 2));
    let _first = permit(e.admit("p", req(), None).await);
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let e = Arc::clone(&e);
            tokio::spawn(async move { e.admit("p", req(), None).await.map(|p| p.delayed()) })
        })
        .collect();
    let e2 = Arc::clone(&e);
    until(move || e2.queue_len("p") == Some(2)).await;
    assert_eq!(
        refusal(e.admit("p", req(), None).await),
        Refusal::QueueFull { max_queue: 2 }
    );
    for w in waiters {
        assert!(matches!(w.await, Ok(Ok(_))));
    }
}

#[tokio::test(start_paused = true)]
async fn dropped_waiter_leaves_and_costs_nothing() {
    let e = rpm1(delay(600 * SECOND, 10));
    let first = permit(e.admit("p", req(), None).await);
    first.settle(&Costs::default());
    let e2 = Arc::clone(&e);
    let gone = tokio::spawn(async move { e2.admit("p", req(), None).await.map(|p| p.delayed()) });
    let e3 = Arc::clone(&e);
    until(move || e3.queue_len("p") == Some(1)).await;
    gone.abort();
    assert!(gone.await.is_err());
    assert_eq!(e.queue_len("p"), Some(0));
    assert_eq!(used(&e, "rpm"), 1.0);
    // The next caller is not stuck behind the departed one.
    let mut p = permit(e.admit("p", req(), None).await);
    assert!(p.delayed() >= 64 * SECOND && p.delayed() <= 66 * SECOND);
    p.mark_sent();
    drop(p);
    assert_eq!(used(&e, "rpm"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn queued_call_keeps_its_own_max_delay() {
    let e = rpm1(delay(600 * SECOND, 10));
    let _first = permit(e.admit("p", req(), None).await);
    let e2 = Arc::clone(&e);
    let head = tokio::spawn(async move { e2.admit("p", req(), None).await.map(|p| p.delayed()) });
    let e3 = Arc::clone(&e);
    until(move || e3.queue_len("p") == Some(1)).await;
    let start = e.clock().now();
    let r = refusal(e.admit("p", req(), Some(5 * SECOND)).await);
    assert_eq!(
        e.clock().now() - start,
        5 * SECOND,
        "gave up at its own deadline"
    );
    assert!(matches!(r, Refusal::Limited { ref limit, retry_after, .. }
        if limit == "rpm" && retry_after > 50 * SECOND));
    assert_eq!(e.queue_len("p"), Some(1));
    assert!(matches!(head.await, Ok(Ok(_))));
}

#[tokio::test(start_paused = true)]
async fn reject_computes_retry_after_from_state() {
    let mut on = delay(600 * SECOND, 10);
    on.action = OnLimitAction::Reject;
    let e = rpm1(on);
    let _p = permit(e.admit("p", req(), None).await);
    tokio::time::advance(Duration::from_secs(10)).await;
    let r = refusal(e.admit("p", req(), None).await);
    let Refusal::Limited {
        limit,
        retry_after,
        scope,
        ..
    } = &r
    else {
        panic!("{r:?}")
    };
    assert_eq!((limit.as_str(), *scope), ("rpm", Scope::Provider));
    assert!(
        *retry_after > 54 * SECOND && *retry_after <= 55 * SECOND,
        "{retry_after}"
    );
    assert_eq!(r.retry_after(), Some(*retry_after));
    assert_eq!(e.queue_len("p"), Some(0));
}

#[tokio::test(start_paused = true)]
async fn max_delay_and_client_override() {
    let e = rpm1(delay(30 * SECOND, 10));
    let _p = permit(e.admit("p", req(), None).await);
    let r = refusal(e.admit("p", req(), None).await);
    assert!(matches!(r, Refusal::Limited { retry_after, .. } if retry_after > 60 * SECOND));
    let e = rpm1(delay(600 * SECOND, 10));
    let _p = permit(e.admit("p", req(), None).await);
    let r = refusal(e.admit("p", req(), Some(5 * SECOND)).await);
    assert!(matches!(r, Refusal::Limited { .. }));
    let e = rpm1(delay(5 * SECOND, 10));
    let _p = permit(e.admit("p", req(), None).await);
    let r = refusal(e.admit("p", req(), Some(600 * SECOND)).await);
    assert!(
        matches!(r, Refusal::Limited { .. }),
        "an override never extends max_delay"
    );
    assert_eq!(used(&e, "rpm"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn too_large_is_immediate_without_retry() {
    let e = engine_with(
        vec![daily("tpd", Unit::Tokens, 100.0)],
        delay(600 * SECOND, 10),
    );
    let d = Demand::new("c", Costs::default().with(Unit::Tokens, 101.0));
    let r = refusal(e.admit("p", d, None).await);
    assert!(matches!(&r, Refusal::TooLarge(t) if t.limit == "tpd" && t.cost == 101.0));
    assert_eq!(r.retry_after(), None);
    assert_eq!(
        refusal(e.admit("q", req(), None).await),
        Refusal::UnknownProvider("q".into())
    );
}

fn conc(amount: f64) -> LimitSpec {
    LimitSpec::new("conc", Unit::Concurrent, amount, WindowKind::None)
}

#[tokio::test(start_paused = true)]
async fn concurrency_waiter_wakes_on_release() {
    let e = engine_with(vec![conc(1.0)], delay(30 * SECOND, 10));
    let held = permit(e.admit("p", req(), None).await);
    let e2 = Arc::clone(&e);
    let waiter = tokio::spawn(async move { e2.admit("p", req(), None).await.map(|p| p.delayed()) });
    let e3 = Arc::clone(&e);
    until(move || e3.queue_len("p") == Some(1)).await;
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(e.queue_len("p"), Some(1));
    held.settle(&Costs::default());
    let delayed = match waiter.await {
        Ok(Ok(d)) => d,
        other => panic!("{other:?}"),
    };
    assert!((5 * SECOND..6 * SECOND).contains(&delayed), "{delayed}");
    assert_eq!(
        used(&e, "conc"),
        0.0,
        "the waiter's dropped permit released it"
    );
}

#[tokio::test(start_paused = true)]
async fn concurrency_waiter_gives_up_at_its_deadline() {
    let e = engine_with(vec![conc(1.0)], delay(3 * SECOND, 10));
    let _held = permit(e.admit("p", req(), None).await);
    let r = refusal(e.admit("p", req(), None).await);
    assert!(matches!(r, Refusal::Limited { retry_after, ref limit, .. }
        if retry_after >= CONCURRENCY_RETRY_AFTER && limit == "conc"));
    assert_eq!(e.queue_len("p"), Some(0));
}

#[tokio::test(start_paused = true)]
async fn refund_wakes_the_head_early() {
    let e = rpm1(delay(600 * SECOND, 10));
    let first = permit(e.admit("p", req(), None).await);
    let e2 = Arc::clone(&e);
    let waiter = tokio::spawn(async move { e2.admit("p", req(), None).await.map(|p| p.delayed()) });
    let e3 = Arc::clone(&e);
    until(move || e3.queue_len("p") == Some(1)).await;
    tokio::time::advance(Duration::from_secs(2)).await;
    first.cancel();
    let delayed = match waiter.await {
        Ok(Ok(d)) => d,
        other => panic!("{other:?}"),
    };
    assert!(delayed < 3 * SECOND, "{delayed}");
}

#[tokio::test(start_paused = true)]
async fn permits_settle_on_every_path() {
    let e = engine_with(
        vec![daily("tpd", Unit::Tokens, 1000.0), conc(5.0)],
        delay(SECOND, 10),
    );
    let d = Demand::new("c", Costs::default().with(Unit::Tokens, 100.0));
    drop(permit(e.admit("p", d, None).await));
    assert_eq!(
        (used(&e, "tpd"), used(&e, "conc")),
        (0.0, 0.0),
        "unsent: refunded"
    );
    let mut p = permit(e.admit("p", d, None).await);
    assert!(!p.is_sent());
    p.mark_sent();
    assert_eq!(used(&e, "conc"), 1.0);
    drop(p);
    assert_eq!(
        (used(&e, "tpd"), used(&e, "conc")),
        (100.0, 0.0),
        "sent: estimate kept"
    );
    let p = permit(e.admit("p", d, None).await);
    assert_eq!(p.provider(), "p");
    p.settle(&Costs::default().with(Unit::Tokens, 30.0));
    assert_eq!(used(&e, "tpd"), 130.0);
    permit(e.admit("p", d, None).await).cancel();
    assert_eq!((used(&e, "tpd"), used(&e, "conc")), (130.0, 0.0));
    let p = permit(e.try_admit("p", &d));
    assert_eq!(p.delayed(), 0);
}

#[tokio::test(start_paused = true)]
async fn replace_keeps_unchanged_state() {
    let clock = Arc::new(SystemClock::new());
    let spec = |name: &str, amount: f64| {
        ProviderSpec::new(
            name,
            vec![rolling("rpm", Unit::Requests, amount, MIN64), conc(9.0)],
        )
    };
    let e = Engine::new(vec![spec("p", 5.0), spec("b", 5.0)], clock);
    let held = permit(e.admit("p", req(), None).await);
    let orphan = permit(e.admit("b", req(), None).await);
    e.replace(vec![spec("p", 10.0), spec("c", 1.0)]);
    assert_eq!(e.providers(), vec!["c".to_string(), "p".to_string()]);
    assert_eq!((used(&e, "rpm"), used(&e, "conc")), (1.0, 1.0));
    let snap = e.snapshot("p", e.clock().now()).unwrap_or_default();
    assert_eq!(snap[0].amount, 10.0);
    assert!(matches!(
        e.admit("b", req(), None).await,
        Err(Refusal::UnknownProvider(_))
    ));
    drop(orphan);
    held.settle(&Costs::default());
    assert_eq!((used(&e, "rpm"), used(&e, "conc")), (1.0, 0.0));
    assert!(e.snapshot("c", e.clock().now()).is_some());
    assert_eq!(e.prune(), 0);
}

#[tokio::test(start_paused = true)]
async fn warn_hook_and_shadow() {
    let mut spec = ProviderSpec::new(
        "p",
        vec![rolling("rpm", Unit::Requests, 2.0, MIN64).with_warn_at(0.5)],
    );
    spec.shadow = true;
    let e = Engine::new(vec![spec], Arc::new(SystemClock::new()));
    let seen = Arc::new(StdMutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    assert!(e.set_warn_hook(Arc::new(move |p: &str, w: &WarnEvent| {
        seen2
            .lock()
            .unwrap_or_else(|x| x.into_inner())
            .push((p.to_string(), w.limit.clone()));
    })));
    assert!(!e.set_warn_hook(Arc::new(|_: &str, _: &WarnEvent| {})));
    let mut permits = Vec::new();
    for _ in 0..4 {
        permits.push(permit(e.admit("p", req(), None).await));
    }
    assert!(permits[1].shadow_verdict().is_none());
    assert!(
        permits[2].shadow_verdict().is_some(),
        "shadow: would have waited"
    );
    assert_eq!(used(&e, "rpm"), 4.0);
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(seen, vec![("p".to_string(), "rpm".to_string())]);
    assert!(e.take_warnings("p").is_empty());
}

fn assert_send_sync<T: Send + Sync>(_: &T) {}
fn assert_send<T: Send>(_: &T) {}

#[tokio::test(start_paused = true)]
async fn handles_and_futures_cross_threads() {
    let e = rpm1(delay(SECOND, 1));
    assert_send_sync(&*e);
    let fut = e.admit("p", req(), None);
    assert_send(&fut);
    let p = permit(fut.await);
    assert_send_sync(&p);
    let handle = e.provider("p");
    assert!(matches!(&handle, Some(h) if h.name() == "p" && h.queue_len() == 0));
    assert!(e.provider("nope").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_permit_restamped_when_its_call_goes_out_is_counted_from_then() {
    let e = rpm1(delay(0, 10));
    let mut p = permit(e.try_admit("p", &req()));
    tokio::time::advance(Duration::from_secs(5)).await;
    p.restamp(e.clock().now());
    p.mark_sent();
    p.settle(&Costs::default());
    // Admitted at 0 and sent at 5 s: the window (64 s, 1 s sub-buckets) frees between
    // 69 and 70 s, not between 64 and 65 s.
    tokio::time::advance(Duration::from_secs(61)).await;
    let Refusal::Limited { retry_after, .. } = refusal(e.try_admit("p", &req())) else {
        panic!("expected a limit");
    };
    assert!(
        (3 * SECOND..=4 * SECOND).contains(&retry_after),
        "retry after {retry_after} us"
    );
    tokio::time::advance(Duration::from_secs(4)).await;
    permit(e.try_admit("p", &req())).settle(&Costs::default());
}
