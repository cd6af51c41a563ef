//! Load (SPEC §13 memory, §12 connection counts): 10,000 idle keep-alive connections held open
//! against the real binary, and a sustained run at saturation with quotas on. Figures (RSS idle,
//! KiB per connection, RSS samples, request rate) are printed for docs/reliability.md; the
//! assertions are correctness (every request served, connections still open, exact accounting)
//! and generous sanity bounds, never timings.
//!
//! `cargo test --test load` runs the CI versions (a 20 s saturation run);
//! `cargo test --release --test load -- --ignored --nocapture` runs the 5-minute soak
//! (`LOAD_SOAK_SECS` overrides its length).
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::sync::Semaphore;
use tokio::time::Instant;

const IDLE_CONNECTIONS: usize = 10_000;
/// Sanity bound only; the measured figure goes to the docs (target: 16 KiB, SPEC §13).
const MAX_KIB_PER_CONNECTION: f64 = 64.0;

/// Waits until the proxy's RSS stops moving (two samples 500 ms apart within 1%), bounded.
async fn settled_rss(pid: u32) -> u64 {
    let mut last = rss_kib(pid);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = rss_kib(pid);
        if now.abs_diff(last) * 100 <= last {
            return now;
        }
        last = now;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_keep_alive_connections_stay_open_with_bounded_memory() {
    // The client ends, plus the mock upstream's side of the proxy's pool (at most a few hundred).
    require_nofile(IDLE_CONNECTIONS as u64 + 2048);
    let up = MockUpstream::plain(fixed(200, &[], "ok")).await;
    let cfg = mock_provider(&up, &[])
        .proxy("max_connections", "20000")
        // An idle keep-alive connection is closed once no next request head arrives within
        // header_read_timeout (10 s by default); opening 10,000 on a loaded machine can take
        // longer than that, and this test measures connections that are held.
        .proxy("header_read_timeout", "\"300s\"")
        .raw(&limit("rpm", "requests", 1e9, "1m", "provider"))
        .build();
    let proxy = Proxy::start(&cfg);
    let url = mock_url(&up, "/v1/idle");
    // Warm up (TLS roots, upstream pool, metric families) before the idle figure.
    for _ in 0..20 {
        assert_eq!(
            forward(proxy.proxy_addr, "GET", &url, &[], "").await.status,
            200
        );
    }
    let idle = settled_rss(proxy.pid).await;

    let gate = Arc::new(Semaphore::new(64));
    let opened = Instant::now();
    let tasks: Vec<_> = (0..IDLE_CONNECTIONS)
        .map(|i| {
            let (gate, url, addr) = (gate.clone(), url.clone(), proxy.proxy_addr);
            tokio::spawn(async move {
                let _permit = gate.acquire().await.unwrap();
                let mut conn = open_h1(addr)
                    .await
                    .unwrap_or_else(|e| panic!("connection {i}: {e}"));
                let r = send_on(&mut conn, build_request("GET", &url, &[], ""))
                    .await
                    .unwrap_or_else(|e| panic!("connection {i}: {e}"));
                assert_eq!(r.status, 200, "connection {i}: {}", r.text());
                conn
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(IDLE_CONNECTIONS);
    for t in tasks {
        conns.push(t.await.unwrap());
    }
    let open_time = opened.elapsed();
    let with = settled_rss(proxy.pid).await;
    let fds = open_fds(proxy.pid);
    let per_conn = (with.saturating_sub(idle)) as f64 / IDLE_CONNECTIONS as f64;
    println!(
        "load: {IDLE_CONNECTIONS} idle keep-alive connections (opened in {open_time:?}): \
         RSS idle {:.1} MiB, with them {:.1} MiB, {per_conn:.1} KiB per connection; proxy fds {fds}",
        idle as f64 / 1024.0,
        with as f64 / 1024.0
    );

    assert!(
        fds >= IDLE_CONNECTIONS,
        "the proxy holds every connection open ({fds} fds)"
    );
    let closed = conns.iter().filter(|c| c.is_closed()).count();
    assert_eq!(closed, 0, "idle connections were closed by the proxy");
    // A new client is served while they are held.
    assert_eq!(
        forward(proxy.proxy_addr, "GET", &url, &[], "").await.status,
        200
    );
    // And every held connection still answers a second request.
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut conn)| {
            let (gate, url) = (gate.clone(), url.clone());
            tokio::spawn(async move {
                let _permit = gate.acquire().await.unwrap();
                let r = send_on(&mut conn, build_request("GET", &url, &[], ""))
                    .await
                    .unwrap_or_else(|e| panic!("held connection {i}, second request: {e}"));
                assert_eq!(r.status, 200, "held connection {i}: {}", r.text());
                conn
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(IDLE_CONNECTIONS);
    for t in tasks {
        conns.push(t.await.unwrap());
    }
    assert_eq!(up.requests().len(), 20 + 2 * IDLE_CONNECTIONS + 1);
    assert!(
        per_conn < MAX_KIB_PER_CONNECTION,
        "{per_conn:.1} KiB per idle connection"
    );
    drop(conns);
}

/// Figures of one saturation run.
struct Saturation {
    successes: u64,
    elapsed: Duration,
    rss: Vec<u64>,
}

/// Drives `clients` keep-alive clients as fast as they go for `length` through a proxy with
/// quotas on (limits that never refuse), sampling its RSS every `sample` interval; asserts no
/// error and exact accounting: upstream count == proxy forwarded == client successes.
async fn saturate(clients: usize, length: Duration, sample: Duration) -> Saturation {
    let up = MockUpstream::plain(fixed(200, &[("content-type", "application/json")], "{}")).await;
    let cfg = mock_provider(&up, &[])
        .raw(&limit("rpm", "requests", 1e9, "1m", "provider"))
        .raw(&limit("per-client", "requests", 1e9, "1h", "client"))
        .raw(&limit("daily", "requests", 1e12, "day", "provider"))
        .raw(&limit("inflight", "concurrent", 1000.0, "", "provider"))
        .build();
    // Info-level logs: per-request debug lines would measure the log pipe, not the proxy.
    let proxy = Proxy::start_with_env(&cfg, &[("QUOTA_PROXY_LOG", "info")]);
    let url = mock_url(&up, "/v1/soak");
    let stop = Arc::new(AtomicBool::new(false));
    let successes = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|i| {
            let (stop, ok, url, addr) = (
                stop.clone(),
                successes.clone(),
                url.clone(),
                proxy.proxy_addr,
            );
            tokio::spawn(async move {
                let client = format!("client-{i}");
                let mut conn = open_h1(addr).await.unwrap();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let req = build_request("GET", &url, &[("x-quota-client", &client)], "");
                    let r = send_on(&mut conn, req)
                        .await
                        .unwrap_or_else(|e| panic!("client {i}, request {n}: {e}"));
                    assert_eq!(r.status, 200, "client {i}, request {n}: {}", r.text());
                    ok.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
            })
        })
        .collect();
    let mut rss = Vec::new();
    while started.elapsed() < length {
        tokio::time::sleep(sample).await;
        rss.push(rss_kib(proxy.pid));
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let elapsed = started.elapsed();
    let successes = successes.load(Ordering::SeqCst);
    let m = metrics_text(proxy.admin_addr).await;
    assert_eq!(
        up.requests().len() as u64,
        successes,
        "upstream count == client successes"
    );
    assert_eq!(
        outcome_count(&m, "mock", "forwarded"),
        successes as f64,
        "requests_total forwarded == client successes"
    );
    for outcome in ["rejected", "delayed", "upstream_error", "upstream_429"] {
        assert_eq!(outcome_count(&m, "mock", outcome), 0.0, "{outcome}");
    }
    Saturation {
        successes,
        elapsed,
        rss,
    }
}

/// Asserts the RSS samples do not grow steadily: after warm-up (the first quarter), the last
/// quarter peaks at most 2 MiB + 2% above the second quarter's peak. A plateau passes; a
/// steady climb over minutes does not.
fn assert_no_leak(rss: &[u64]) {
    assert!(rss.len() >= 8, "too few RSS samples: {rss:?}");
    let q = rss.len() / 4;
    let second = *rss[q..2 * q].iter().max().unwrap();
    let last = *rss[rss.len() - q..].iter().max().unwrap();
    assert!(
        last <= second + 2048 + second / 50,
        "RSS kept growing: {second} KiB in the second quarter, {last} KiB in the last; samples {rss:?}"
    );
}

fn report(name: &str, s: &Saturation) {
    println!(
        "{name}: {} requests in {:?} ({:.0} req/s), 0 errors, counts equal; RSS first {:.1} MiB, \
         last {:.1} MiB, max {:.1} MiB; samples (KiB) {:?}",
        s.successes,
        s.elapsed,
        s.successes as f64 / s.elapsed.as_secs_f64(),
        s.rss[0] as f64 / 1024.0,
        s.rss[s.rss.len() - 1] as f64 / 1024.0,
        *s.rss.iter().max().unwrap() as f64 / 1024.0,
        s.rss
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturation_for_20_seconds_has_no_error_no_leak_and_exact_accounting() {
    let s = saturate(32, Duration::from_secs(20), Duration::from_secs(2)).await;
    report("saturation 20 s", &s);
    assert!(s.successes > 0);
    assert_no_leak(&s.rss);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "5-minute soak: cargo test --release --test load -- --ignored --nocapture"]
async fn soak_at_saturation_has_no_error_no_leak_and_exact_accounting() {
    let secs = std::env::var("LOAD_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let s = saturate(32, Duration::from_secs(secs), Duration::from_secs(5)).await;
    report(&format!("soak {secs} s"), &s);
    assert!(s.successes > 0);
    assert_no_leak(&s.rss);
}
