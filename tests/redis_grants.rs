//! Redis grants under load (SPEC §11, §13 "zero overshoot"): replicas that take budget
//! from Redis ahead of their next admissions, offered twice a limit. A binary of its own:
//! its load would disturb the timing of the suites it ran beside.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::*;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_redis_replicas_holding_grants_never_overshoot_a_busy_window() {
    // A limit large enough that each replica takes grants (several calls' worth counted in
    // Redis at once, spent locally), offered at twice the limit from both replicas for
    // three windows: the upstream never sees more than the limit in any 1 s, and the limit
    // is used. (Paced in ticks, not a closed loop.)
    let redis = RedisServer::start().await;
    let (h, tracker) = tracked(fixed(200, &[], "ok"));
    let up = MockUpstream::plain(h).await;
    let cfg = mock_provider(&up, &[])
        .raw(&limit("per1s", "requests", 200.0, "1s", "provider"))
        .raw(&on_limit("reject", "30s", 1000))
        .build();
    let cfg = patient(&with_redis(&cfg, &redis, "local"));
    let proxies: Vec<Proxy> = (0..2).map(|_| Proxy::start(&cfg)).collect();
    let addrs: Vec<_> = proxies.iter().map(|p| p.proxy_addr).collect();
    let url = mock_url(&up, "/v1/busy");
    // The upstream connections are opened before the measured run: the window is judged by
    // arrivals, and a first call's connection set-up would make its arrival late.
    let warm = concurrently(20, |i| {
        let (addr, url) = (addrs[i % 2], url.clone());
        async move { forward(addr, "GET", &url, &[], "").await }
    })
    .await;
    assert!(warm.iter().all(|r| r.status == 200));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // 20 calls every 50 ms (400/s, twice the limit) for 3 s.
    let started = Instant::now();
    let mut statuses = Vec::new();
    for tick in 0..60u32 {
        tokio::time::sleep_until(started + Duration::from_millis(50) * tick).await;
        let resps = concurrently(20, |i| {
            let (addr, url) = (addrs[i % 2], url.clone());
            async move { forward(addr, "GET", &url, &[], "").await }
        })
        .await;
        statuses.extend(resps.iter().map(|r| r.status.as_u16()));
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    let mut at = tracker.arrivals();
    at.sort();
    assert_eq!(at.len(), ok + warm.len());
    assert_paced(&at, 200, Duration::from_secs(1));
    println!(
        "redis x2 with grants at 2x: {} calls offered over {:?}, {ok} admitted (limit 200 per 1 s)",
        statuses.len(),
        started.elapsed()
    );
    // Offered twice the limit for three windows: at least two windows' worth admitted
    // (grants left unspent at one replica are refunded, not held while the other refuses).
    assert!(ok >= 400, "only {ok} admitted");
}
