//! One admission decision + settle against 3 limits (rolling rpm, rolling tokens per
//! minute, calendar day USD), single-threaded and with a second thread contending on the
//! same provider, beside a keyed `governor` check in the same run. The admission alone
//! (`provider_handle_admit_3_limits`) is the like-for-like figure: governor's check is a
//! decision and its recording in one step, and has no settlement.
//!
//! Run: `cargo bench --bench quota -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use tokio::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use quota_proxy::quota::{
    Admission, Clock, Costs, Demand, Engine, FastClock, Provider, ProviderState, SystemClock, Unit,
    SECOND,
};

#[path = "fixtures/decision.rs"]
mod fixture;
use fixture::{admit_only, costs, governor_limiter, spec};

fn engine_once(engine: &Engine, demand: &Demand<'_>, actual: &Costs) {
    match engine.try_admit("openai", demand) {
        Ok(p) => p.settle(actual),
        Err(e) => panic!("refused: {e}"),
    }
}

fn handle_once(provider: &Provider, demand: &Demand<'_>, actual: &Costs) {
    match provider.try_admit(demand) {
        Ok(p) => p.settle(actual),
        Err(e) => panic!("refused: {e}"),
    }
}

/// Times `iters` calls of `op` on this thread while another thread runs `op` in a loop.
fn contended(iters: u64, op: impl Fn() + Send + Sync + 'static) -> Duration {
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let (op2, stop2) = (Arc::clone(&op), Arc::clone(&stop));
    let other = thread::spawn(move || {
        while !stop2.load(Ordering::Relaxed) {
            op2();
        }
    });
    let start = Instant::now();
    for _ in 0..iters {
        op();
    }
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = other.join();
    elapsed
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("quota_decision");
    let demand = Demand::new("svc", costs()).with_key("team-a");
    let actual = costs().with(Unit::Tokens, 700.0);

    let mut state = ProviderState::new(spec());
    let mut now = 1_780_000_000 * SECOND;
    g.bench_function("pure_state_admit_settle_3_limits", |b| {
        b.iter(|| {
            now += 7;
            match state.try_admit(black_box(&demand), now) {
                Admission::Admitted(r) => state.settle(r, &actual, now),
                other => panic!("{other:?}"),
            }
        })
    });

    // The clock the proxy runs with (`app::prepare`).
    let engine = Arc::new(Engine::new(vec![spec()], Arc::new(FastClock::new())));
    g.bench_function("engine_by_name_admit_settle_3_limits", |b| {
        b.iter(|| engine_once(&engine, black_box(&demand), &actual))
    });

    let provider = match engine.provider("openai") {
        Some(p) => p,
        None => panic!("no provider"),
    };
    g.bench_function("provider_handle_admit_settle_3_limits", |b| {
        b.iter(|| handle_once(&provider, black_box(&demand), &actual))
    });

    // The decision alone, like-for-like with governor's check (which decides and records in
    // one step): admissions are timed, their permits settled outside the timed region.
    g.bench_function("provider_handle_admit_3_limits", |b| {
        b.iter_custom(|iters| admit_only(&provider, &demand, &actual, iters))
    });

    // Reference points for the engine's overhead over the pure state.
    let clock = FastClock::new();
    g.bench_function("ref_fast_clock_now", |b| b.iter(|| black_box(clock.now())));
    let tokio_clock = SystemClock::new();
    g.bench_function("ref_system_clock_now", |b| {
        b.iter(|| black_box(tokio_clock.now()))
    });
    let mutex = std::sync::Mutex::new(0u64);
    g.bench_function("ref_mutex_lock_unlock", |b| {
        b.iter(|| {
            if let Ok(mut v) = mutex.lock() {
                *v += 1;
            }
        })
    });

    let limiter = Arc::new(governor_limiter());
    g.bench_function("governor_keyed_check", |b| {
        b.iter(|| black_box(limiter.check_key(black_box(&"team-a")).is_ok()))
    });

    // Three limits the governor way: one keyed limiter per limit, each checked (and
    // counted) for the same key. Not all-or-nothing: a refusal by the third leaves the first
    // two counted, which the admission never does.
    let three = [governor_limiter(), governor_limiter(), governor_limiter()];
    g.bench_function("governor_keyed_check_3_limiters", |b| {
        b.iter(|| {
            let key = black_box(&"team-a");
            black_box(three.iter().all(|l| l.check_key(key).is_ok()))
        })
    });

    g.bench_function("provider_handle_admit_settle_3_limits_2_threads", |b| {
        b.iter_custom(|iters| {
            let p = provider.clone();
            contended(iters, move || {
                let d = Demand::new("svc", costs()).with_key("team-a");
                handle_once(&p, black_box(&d), &costs().with(Unit::Tokens, 700.0));
            })
        })
    });

    g.bench_function("governor_keyed_check_2_threads", |b| {
        let l = Arc::clone(&limiter);
        b.iter_custom(|iters| {
            let l = Arc::clone(&l);
            contended(iters, move || {
                black_box(l.check_key(black_box(&"team-a")).is_ok());
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
