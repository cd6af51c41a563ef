//! The Redis shared-state backend end to end (SPEC §5, §11): several proxies share one
//! quota through a real `redis-server` that each test starts on its own free port (Redis's
//! `--port 0` disables TCP), kills and restarts.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::*;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(10);

fn rpm_config(
    up: &MockUpstream,
    redis: &RedisServer,
    n: f64,
    window: &str,
    action: &str,
    on_error: &str,
) -> String {
    let cfg = mock_provider(up, &[])
        .raw(&limit("rpm", "requests", n, window, "provider"))
        .raw(&on_limit(action, "30s", 1000))
        .build();
    with_redis(&cfg, redis, on_error)
}

const RPM_KEY: &str = "{qp:mock}:q:rpm:requests:r60000000w468750n129:provider:";

#[tokio::test]
async fn three_proxies_share_one_limit_exactly() {
    let redis = RedisServer::start().await;
    let up = MockUpstream::plain(fixed(200, &[], "ok")).await;
    let cfg = rpm_config(&up, &redis, 10.0, "1m", "reject", "local");
    let proxies: Vec<Proxy> = (0..3).map(|_| Proxy::start(&patient(&cfg))).collect();
    let addrs: Vec<_> = proxies.iter().map(|p| p.proxy_addr).collect();
    let url = mock_url(&up, "/v1/shared");
    let resps = concurrently(60, |i| {
        let (addr, url) = (addrs[i % 3], url.clone());
        async move { forward(addr, "GET", &url, &[], "").await }
    })
    .await;
    let ok = resps.iter().filter(|r| r.status == 200).count();
    assert_eq!(
        ok, 10,
        "exactly the shared limit is admitted across three proxies"
    );
    assert_eq!(
        up.requests().len(),
        10,
        "the upstream received exactly 10 calls"
    );
    for r in resps.iter().filter(|r| r.status != 200) {
        assert_quota_429(r, "rpm", "mock");
    }
    assert_eq!(redis.rolling_sum(RPM_KEY).await, 10.0);
}

#[tokio::test]
async fn delay_mode_across_two_proxies_never_overshoots_a_window() {
    let redis = RedisServer::start().await;
    let (h, tracker) = tracked(fixed(200, &[], "ok"));
    let up = MockUpstream::plain(h).await;
    let cfg = rpm_config(&up, &redis, 3.0, "2s", "delay", "local");
    let (a, b) = (Proxy::start(&patient(&cfg)), Proxy::start(&patient(&cfg)));
    let addrs = [a.proxy_addr, b.proxy_addr];
    let url = mock_url(&up, "/v1/paced");
    let resps = concurrently(9, |i| {
        let (addr, url) = (addrs[i % 2], url.clone());
        async move { forward(addr, "GET", &url, &[], "").await }
    })
    .await;
    for r in &resps {
        assert_eq!(r.status, 200, "delay mode must not refuse: {}", r.text());
    }
    let mut at = tracker.arrivals();
    at.sort();
    assert_eq!(at.len(), 9);
    assert_paced(&at, 3, Duration::from_secs(2));
}

#[tokio::test]
async fn redis_down_falls_back_to_local_limits_then_reconciles() {
    let mut redis = RedisServer::start().await;
    let up = MockUpstream::plain(fixed(200, &[], "ok")).await;
    let cfg = rpm_config(&up, &redis, 8.0, "1m", "reject", "local");
    let proxy = Proxy::start(&cfg);
    let url = mock_url(&up, "/v1/x");
    for _ in 0..3 {
        assert_eq!(
            forward(proxy.proxy_addr, "GET", &url, &[], "").await.status,
            200
        );
    }
    redis.kill();
    // Redis is gone: the local engine decides (its own window is empty: 8 more fit).
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let r = forward(proxy.proxy_addr, "GET", &url, &[], "").await;
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "a call hung {:?}",
            t.elapsed()
        );
        statuses.push(r.status.as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        8,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        2,
        "{statuses:?}"
    );
    let m = metrics_text(proxy.admin_addr).await;
    assert!(
        metric_value(&m, "quota_proxy_state_backend_errors_total", &[]) >= 1.0,
        "{m}"
    );
    // Back (empty, no persistence): the 8 calls admitted meanwhile are added to Redis.
    redis.restart().await;
    let key_sum = eventually("the local usage reconciled into redis", WAIT, || async {
        let sum = redis.rolling_sum(RPM_KEY).await;
        (sum >= 8.0).then_some(sum)
    })
    .await;
    assert_eq!(key_sum, 8.0);
    // And the shared counter governs the next decisions: 8 of 8 used.
    let r = forward(proxy.proxy_addr, "GET", &url, &[], "").await;
    assert_quota_429(&r, "rpm", "mock");
    assert_eq!(up.requests().len(), 11);
}

#[tokio::test]
async fn deny_refuses_with_503_and_is_not_ready_while_redis_is_down() {
    let mut redis = RedisServer::start().await;
    let up = MockUpstream::plain(fixed(200, &[], "ok")).await;
    let cfg = rpm_config(&up, &redis, 100.0, "1m", "reject", "deny");
    let proxy = Proxy::start(&cfg);
    let url = mock_url(&up, "/v1/x");
    assert_eq!(
        forward(proxy.proxy_addr, "GET", &url, &[], "").await.status,
        200
    );
    assert_eq!(admin_get(proxy.admin_addr, "/readyz").await.0, 200);
    redis.kill();
    for _ in 0..5 {
        let r = forward(proxy.proxy_addr, "GET", &url, &[], "").await;
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], "state_backend_down");
        assert_eq!(r.header("x-quota-proxy"), Some("rejected"));
    }
    let (status, body) = admin_get(proxy.admin_addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("redis"), "{body}");
    assert_eq!(up.requests().len(), 1);
    redis.restart().await;
    eventually("ready again", WAIT, || async {
        (admin_get(proxy.admin_addr, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(
        forward(proxy.proxy_addr, "GET", &url, &[], "").await.status,
        200
    );
}

#[tokio::test]
async fn every_key_has_a_ttl_and_the_providers_hash_tag() {
    let redis = RedisServer::start().await;
    let up = MockUpstream::plain(fixed(200, &[], "ok")).await;
    let cfg = mock_provider(&up, &[])
        .raw(&limit("rpm", "requests", 100.0, "1m", "provider"))
        .raw(&limit("perkey", "requests", 100.0, "10s", "client"))
        .raw(&limit("daily", "requests", 1000.0, "day", "provider"))
        .raw(&limit("tb", "requests", 100.0, "1m", "provider"))
        .raw("algorithm = \"token_bucket\"\nburst = 50\n")
        .raw(&limit("inflight", "concurrent", 5.0, "", "provider"))
        .build();
    let proxy = Proxy::start(&with_redis(&cfg, &redis, "local"));
    let url = mock_url(&up, "/v1/x");
    for _ in 0..3 {
        assert_eq!(
            forward(proxy.proxy_addr, "GET", &url, &[], "").await.status,
            200
        );
    }
    let keys = redis.keys().await;
    assert!(
        keys.len() >= 4,
        "rolling, client, calendar and bucket keys: {keys:?}"
    );
    let mut conn = redis.conn().await;
    for key in &keys {
        assert!(key.starts_with("{qp:mock}:"), "{key} lacks the hash tag");
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if ttl == -2 {
            // Gone since it was listed: the in-flight counter is deleted when its last
            // call settles, which may happen after the client has its response.
            continue;
        }
        assert!(ttl > 0, "{key} has no TTL ({ttl})");
    }
}

#[tokio::test]
async fn a_one_worker_proxy_is_connected_to_redis_before_it_is_ready() {
    let redis = RedisServer::start().await;
    let up = MockUpstream::plain(fixed(200, &[], "ok")).await;
    // deny: a request decided before the connection would be refused.
    let cfg = rpm_config(&up, &redis, 5.0, "1m", "reject", "deny");
    let proxy = Proxy::start_with_env(&patient(&cfg), &[("TOKIO_WORKER_THREADS", "1")]);
    let r = forward(
        proxy.proxy_addr,
        "GET",
        &mock_url(&up, "/v1/first"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(redis.rolling_sum(RPM_KEY).await, 1.0);
    proxy
        .wait_for_log("shared quota state in redis", WAIT)
        .await;
}

/// Script calls Redis has run (admissions and corrections) since it started.
async fn script_calls(redis: &RedisServer) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:"))
        .filter_map(|l| l.split(['=', ',']).nth(1)?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn far_from_its_limit_a_proxy_asks_redis_once_per_grant_and_refunds_the_rest() {
    let redis = RedisServer::start().await;
    let up = MockUpstream::plain(fixed(200, &[], "ok")).await;
    let cfg = rpm_config(&up, &redis, 1_000_000.0, "1m", "reject", "local");
    let proxy = Proxy::start(&cfg);
    let url = mock_url(&up, "/v1/busy");
    let before = script_calls(&redis).await;
    let calls: u32 = 300;
    for _ in 0..calls {
        let r = forward(proxy.proxy_addr, "GET", &url, &[], "").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let asked = script_calls(&redis).await - before;
    assert!(
        asked * 3 < u64::from(calls),
        "{asked} script calls for {calls} admissions: most are served from grants"
    );
    // Redis counted every grant whole; what the proxy did not use is refunded once its
    // grant ends, leaving exactly the calls made.
    let sum = eventually("unused grants refunded", WAIT, || async {
        let sum = redis.rolling_sum(RPM_KEY).await;
        (sum == f64::from(calls)).then_some(sum)
    })
    .await;
    assert_eq!(sum, f64::from(calls));
    assert_eq!(up.requests().len(), calls as usize);
}
