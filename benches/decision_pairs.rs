//! The quota decision against a keyed `governor` check, measured in pairs of short slices:
//! the comparison's decision row (`benches/compare/extra.sh`).
//!
//! A criterion run of each side takes seconds, and a shared 2-core guest changes speed
//! between one such run and the next (a keyed check read 29.6 ns in one round of a run and
//! 43.6 ns in another): two figures measured seconds apart can compare two machines. Here
//! each pair times a slice of 2,048 admissions (about a tenth of a millisecond) and a slice
//! of 2,048 governor checks right after it, the order swapped every pair; the figure is the
//! median of the per-pair ratios. Both sides are the code `benches/quota.rs` measures: the
//! admission through a provider handle with three limits, each batch's permits settled
//! outside the timed region (`provider_handle_admit_3_limits`), and governor's keyed check
//! of one key (`governor_keyed_check`).
//!
//! Run: `cargo bench --bench decision_pairs -- [PAIRS]` (default 400). Prints one JSON line:
//! `{"pairs", "admission_ns", "governor_ns", "ratio", "ratio_p25", "ratio_p75"}`: the
//! medians over the pairs of each side's nanoseconds per call and of their ratio, and the
//! ratio's quartiles.

use std::hint::black_box;
use std::time::Duration;

use quota_proxy::quota::{Costs, Demand, Engine, FastClock, Provider, Unit};
use tokio::time::Instant;

/// Operations per slice of one side: about a tenth of a millisecond of either.
const SLICE: u64 = 16 * ADMIT_BATCH;
const DEFAULT_PAIRS: usize = 400;

#[path = "fixtures/decision.rs"]
mod fixture;
use fixture::{admit_only, costs, governor_limiter, spec, ADMIT_BATCH};

/// Nanoseconds per admission over one slice; permits are settled untimed, per batch.
fn admissions(provider: &Provider, demand: &Demand<'_>, actual: &Costs) -> f64 {
    admit_only(provider, demand, actual, SLICE).as_nanos() as f64 / SLICE as f64
}

/// Nanoseconds per keyed check over one slice.
fn checks(limiter: &governor::DefaultKeyedRateLimiter<&'static str>) -> f64 {
    let start = Instant::now();
    for _ in 0..SLICE {
        black_box(limiter.check_key(black_box(&"team-a")).is_ok());
    }
    start.elapsed().as_nanos() as f64 / SLICE as f64
}

/// The `q` quantile of `v` (sorted in place).
fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let at = ((v.len() - 1) as f64 * q).round() as usize;
    v[at]
}

fn main() {
    // `cargo bench` passes `--bench`; the first number is the pair count.
    let pairs = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(DEFAULT_PAIRS)
        .max(1);
    let engine = Engine::new(vec![spec()], std::sync::Arc::new(FastClock::new()));
    let Some(provider) = engine.provider("openai") else {
        panic!("no provider");
    };
    let demand = Demand::new("svc", costs()).with_key("team-a");
    let actual = costs().with(Unit::Tokens, 700.0);
    let limiter = governor_limiter();

    // Warm-up: caches, branch predictors, the state's pool of item lists, the clock.
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(300) {
        admissions(&provider, &demand, &actual);
        checks(&limiter);
    }

    let (mut ours, mut theirs, mut ratios) = (vec![], vec![], vec![]);
    for i in 0..pairs {
        let (a, g) = if i % 2 == 0 {
            let a = admissions(&provider, &demand, &actual);
            (a, checks(&limiter))
        } else {
            let g = checks(&limiter);
            (admissions(&provider, &demand, &actual), g)
        };
        ours.push(a);
        theirs.push(g);
        ratios.push(a / g);
    }
    println!(
        "{{\"pairs\": {pairs}, \"admission_ns\": {:.2}, \"governor_ns\": {:.2}, \"ratio\": {:.4}, \"ratio_p25\": {:.4}, \"ratio_p75\": {:.4}}}",
        quantile(&mut ours, 0.5),
        quantile(&mut theirs, 0.5),
        quantile(&mut ratios, 0.5),
        quantile(&mut ratios, 0.25),
        quantile(&mut ratios, 0.75),
    );
}
