//! Quota enforcement end to end (SPEC §5, §8): what the mock upstream receives under rolling
//! windows, delay and reject modes, client scopes, concurrency limits, queue bounds and
//! shadow mode, and the shape of the proxy's 429s and RateLimit headers.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::*;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(10);

async fn get(proxy: &Proxy, up: &MockUpstream, path: &str, headers: &[(&str, &str)]) -> Resp {
    forward(proxy.proxy_addr, "GET", &mock_url(up, path), headers, "").await
}

#[tokio::test]
async fn reject_mode_admits_exactly_the_limit_out_of_20_concurrent_calls() {
    let up = MockUpstream::plain(fixed(200, &[], "ok")).await;
    let cfg = mock_provider(&up, &[])
        .raw(&limit("rpm", "requests", 5.0, "1m", "provider"))
        .raw(&on_limit("reject", "30s", 1000))
        .build();
    let proxy = Proxy::start(&cfg);
    let (addr, url) = (proxy.proxy_addr, mock_url(&up, "/v1/burst"));

    let resps = concurrently(20, |_| {
        let url = url.clone();
        async move { forward(addr, "GET", &url, &[], "").await }
    })
    .await;

    let ok = resps.iter().filter(|r| r.status == 200).count();
    assert_eq!(ok, 5, "exactly the limit is admitted");
    assert_eq!(
        up.requests().len(),
        5,
        "the upstream received exactly 5 calls"
    );
    for r in resps.iter().filter(|r| r.status != 200) {
        let (err, secs) = assert_quota_429(r, "rpm", "mock");
        assert_eq!(err["limit"], "rpm", "{err}");
        assert_eq!(err["scope"], "provider", "{err}");
        assert!(
            (1..=62).contains(&secs),
            "retry-after {secs}s outside (0, window + 2s]"
        );
        let ras = err["retry_after_seconds"].as_f64().unwrap();
        assert!(ras > 0.0 && ras <= 62.0, "retry_after_seconds {ras}");
    }
    let m = metrics_text(proxy.admin_addr).await;
    let count = |outcome: &str| {
        metric_value(
            &m,
            "quota_proxy_requests_total",
            &["provider=\"mock\"", &format!("outcome=\"{outcome}\"")],
        )
    };
    assert_eq!(count("forwarded"), 5.0, "{m}");
    assert_eq!(count("rejected"), 15.0, "{m}");
}

#[tokio::test]
async fn delay_mode_paces_calls_so_no_window_exceeds_the_amount() {
    let (h, tracker) = tracked(fixed(200, &[], "ok"));
    let up = MockUpstream::plain(h).await;
    let cfg = mock_provider(&up, &[])
        .raw(&limit("per2s", "requests", 3.0, "2s", "provider"))
        .raw(&on_limit("delay", "30s", 1000))
        .build();
    let proxy = Proxy::start(&cfg);
    let (addr, url) = (proxy.proxy_addr, mock_url(&up, "/v1/paced"));

    let resps = concurrently(9, |_| {
        let url = url.clone();
        async move { forward(addr, "GET", &url, &[], "").await }
    })
    .await;

    for r in &resps {
        assert_eq!(r.status, 200, "delay mode must not refuse: {}", r.text());
    }
    assert_eq!(up.requests().len(), 9);
    let mut at = tracker.arrivals();
    at.sort();
    assert_eq!(at.len(), 9);
    assert_paced(&at, 3, Duration::from_secs(2));
    let delays: Vec<u64> = resps
        .iter()
        .filter_map(|r| r.header("x-quota-proxy-delayed-ms"))
        .map(|v| v.parse().unwrap())
        .collect();
    assert!(
        delays.len() >= 6,
        "the 6 calls beyond the first window carry x-quota-proxy-delayed-ms; got {delays:?}"
    );
    let m = metrics_text(proxy.admin_addr).await;
    let delayed = metric_value(
        &m,
        "quota_proxy_requests_total",
        &["provider=\"mock\"", "outcome=\"delayed\""],
    );
    assert!(
        delayed >= 6.0,
        "requests_total outcome=delayed is {delayed}"
    );
    let max = delays.iter().copied().max().unwrap_or(0);
    assert!(
        (3_000..=12_000).contains(&max),
        "the last calls waited about two windows; delays {delays:?}"
    );
}

#[tokio::test]
async fn client_max_delay_zero_is_an_immediate_429() {
    let up = MockUpstream::plain(fixed(200, &[], "ok")).await;
    let cfg = mock_provider(&up, &[])
        .raw(&limit("slow", "requests", 1.0, "20s", "provider"))
        .raw(&on_limit("delay", "60s", 1000))
        .build();
    let proxy = Proxy::start(&cfg);

    assert_eq!(get(&proxy, &up, "/v1/a", &[]).await.status, 200);
    // Without the header this call would wait ~20 s (and the client time out after 10 s).
    let started = Instant::now();
    let r = get(&proxy, &up, "/v1/b", &[("x-quota-max-delay", "0")]).await;
    let (_, secs) = assert_quota_429(&r, "slow", "mock");
    assert!(
        (15..=22).contains(&secs),
        "retry-after {secs} should reflect the ~20 s window (took {:?})",
        started.elapsed()
    );
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn call_costing_more_than_a_whole_limit_is_request_too_large() {
    let up = MockUpstream::plain(fixed(200, &[], "ok")).await;
    let cfg = mock_provider(&up, &[("cost", "10")])
        .raw(&limit("credits", "credits", 5.0, "1m", "provider"))
        .raw(&on_limit("delay", "30s", 1000))
        .build();
    let proxy = Proxy::start(&cfg);

    let r = get(&proxy, &up, "/v1/big", &[]).await;

    let err = assert_proxy_error(&r, 429, "rejected");
    assert_eq!(err["code"], "request_too_large", "{err}");
    assert_eq!(err["type"], "quota_exceeded", "{err}");
    assert_eq!(err["limit"], "credits", "{err}");
    assert!(
        r.header("retry-after").is_none(),
        "a call that can never fit gets no retry-after: {:?}",
        r.headers
    );
    assert_eq!(up.requests().len(), 0);
}

/// The credits an upstream says a call cost (`x-requests-last`) become the route's estimate:
/// after one call that cost 4, the next on the route is estimated at 4 and refused by a limit
/// of 5 (estimated at the default 1, it would fit).
#[tokio::test]
async fn credits_the_upstream_reports_become_the_routes_estimate() {
    let up = MockUpstream::plain(fixed(200, &[("x-requests-last", "4")], "ok")).await;
    let cfg = mock_provider(&up, &[("signals", "[\"odds_api\"]")])
        .raw(&limit("credits", "credits", 5.0, "1m", "provider"))
        .raw(&on_limit("reject", "30s", 1000))
        .build();
    let proxy = Proxy::start(&cfg);

    assert_eq!(get(&proxy, &up, "/v1/odds", &[]).await.status, 200);
    let r = get(&proxy, &up, "/v1/odds", &[]).await;
    let (_, secs) = assert_quota_429(&r, "credits", "mock");
    assert!(
        (55..=62).contains(&secs),
        "the first call ages out of the minute: retry-after {secs}"
    );
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn client_scope_limits_each_client_separately() {
    let up = MockUpstream::plain(fixed(200, &[], "ok")).await;
    let cfg = mock_provider(&up, &[])
        .raw(&limit("per-client", "requests", 2.0, "1m", "client"))
        .raw(&on_limit("reject", "30s", 1000))
        .build();
    let proxy = Proxy::start(&cfg);

    for _ in 0..2 {
        let r = get(&proxy, &up, "/v1/a", &[("x-quota-client", "alpha")]).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = get(&proxy, &up, "/v1/a", &[("x-quota-client", "alpha")]).await;
    let (err, _) = assert_quota_429(&r, "per-client", "mock");
    assert_eq!(err["scope"], "client", "{err}");
    // Another client has its own allowance, named by header or by proxy user name.
    let r = get(&proxy, &up, "/v1/b", &[("x-quota-client", "beta")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get(
        &proxy,
        &up,
        "/v1/b",
        &[("proxy-authorization", "Basic YmV0YTo=")], // beta:
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get(&proxy, &up, "/v1/b", &[("x-quota-client", "beta")]).await;
    assert_quota_429(&r, "per-client", "mock");
    // Anonymous callers are a third client.
    assert_eq!(get(&proxy, &up, "/v1/c", &[]).await.status, 200);

    let reqs = up.requests();
    assert_eq!(reqs.len(), 5);
    assert!(reqs.iter().all(|r| r.header("x-quota-client").is_none()));
}

#[tokio::test]
async fn concurrency_limit_rejects_a_third_call_while_two_are_in_flight() {
    let (h, gate) = gated(fixed(200, &[], "ok"));
    let up = MockUpstream::plain(h).await;
    let cfg = mock_provider(&up, &[])
        .raw(&limit("inflight", "concurrent", 2.0, "", "provider"))
        .raw(&on_limit("reject", "30s", 1000))
        .build();
    let proxy = Proxy::start(&cfg);
    let (addr, url) = (proxy.proxy_addr, mock_url(&up, "/v1/slow"));

    let held: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { forward(addr, "GET", &url, &[], "").await })
        })
        .collect();
    up.wait_requests(2, WAIT).await;

    let third = get(&proxy, &up, "/v1/slow", &[]).await;
    assert_eq!(third.status, 429, "{}", third.text());
    assert_eq!(third.header("x-quota-proxy"), Some("rejected"));
    assert_eq!(
        third.json()["error"]["code"],
        "inflight",
        "{}",
        third.text()
    );
    assert_eq!(
        up.requests().len(),
        2,
        "the third call never reached the upstream"
    );

    gate.open();
    for h in held {
        assert_eq!(h.await.unwrap().status, 200);
    }
    // The slots are free again.
    assert_eq!(get(&proxy, &up, "/v1/slow", &[]).await.status, 200);
}

#[tokio::test]
async fn concurrency_limit_in_delay_mode_keeps_at_most_two_in_flight() {
    let (slow_h, tracker) = tracked(slow(Duration::from_millis(150), fixed(200, &[], "ok")));
    let up = MockUpstream::plain(slow_h).await;
    let cfg = mock_provider(&up, &[])
        .raw(&limit("inflight", "concurrent", 2.0, "", "provider"))
        .raw(&on_limit("delay", "30s", 1000))
        .build();
    let proxy = Proxy::start(&cfg);
    let (addr, url) = (proxy.proxy_addr, mock_url(&up, "/v1/slow"));

    let resps = concurrently(6, |_| {
        let url = url.clone();
        async move { forward(addr, "GET", &url, &[], "").await }
    })
    .await;

    for r in &resps {
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(up.requests().len(), 6);
    assert!(
        tracker.max_in_flight() <= 2,
        "{} calls were at the upstream at once",
        tracker.max_in_flight()
    );
    assert_eq!(tracker.max_in_flight(), 2, "the limit allows 2 at once");
    assert!(
        resps
            .iter()
            .filter(|r| r.header("x-quota-proxy-delayed-ms").is_some())
            .count()
            >= 4,
        "the 4 calls that waited carry x-quota-proxy-delayed-ms"
    );
}

#[tokio::test]
async fn full_queue_is_503_queue_full() {
    let (h, gate) = gated(fixed(200, &[], "ok"));
    let up = MockUpstream::plain(h).await;
    let cfg = mock_provider(&up, &[])
        .raw(&limit("one", "concurrent", 1.0, "", "provider"))
        .raw(&on_limit("delay", "30s", 1))
        .build();
    let proxy = Proxy::start(&cfg);
    let (addr, url) = (proxy.proxy_addr, mock_url(&up, "/v1/q"));

    let first = {
        let url = url.clone();
        tokio::spawn(async move { forward(addr, "GET", &url, &[], "").await })
    };
    up.wait_requests(1, WAIT).await;
    // Two more: one takes the single queue place, the other finds the queue full.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..2 {
        let (url, tx) = (url.clone(), tx.clone());
        tokio::spawn(async move {
            let _ = tx.send(forward(addr, "GET", &url, &[], "").await);
        });
    }
    let refused = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("one of the two waiting calls is refused at once")
        .unwrap();
    let err = assert_proxy_error(&refused, 503, "rejected");
    assert_eq!(err["code"], "queue_full", "{err}");
    assert_eq!(up.requests().len(), 1);

    gate.open();
    assert_eq!(first.await.unwrap().status, 200);
    let queued = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(queued.status, 200, "{}", queued.text());
    assert!(queued.header("x-quota-proxy-delayed-ms").is_some());
    assert_eq!(up.requests().len(), 2);
}

#[tokio::test]
async fn shadow_mode_never_refuses() {
    let up = MockUpstream::plain(fixed(200, &[], "ok")).await;
    let cfg = mock_provider(&up, &[("mode", "\"shadow\"")])
        .raw(&limit("rpm", "requests", 1.0, "1m", "provider"))
        .raw(&on_limit("reject", "30s", 1000))
        .build();
    let proxy = Proxy::start(&cfg);

    for i in 0..5 {
        let r = get(&proxy, &up, &format!("/v1/s{i}"), &[]).await;
        assert_eq!(r.status, 200, "call {i}: {}", r.text());
        assert!(r.header("x-quota-proxy").is_none());
    }
    assert_eq!(up.requests().len(), 5);
}

#[tokio::test]
async fn ratelimit_headers_describe_the_tightest_limit_and_decrease() {
    let up = MockUpstream::plain(fixed(200, &[], "ok")).await;
    let cfg = mock_provider(&up, &[])
        .raw(&limit("rpm", "requests", 5.0, "1m", "provider"))
        .raw(&limit("rph", "requests", 100.0, "1h", "provider"))
        .raw(&on_limit("reject", "30s", 1000))
        .build();
    let proxy = Proxy::start(&cfg);

    let mut remaining = Vec::new();
    for _ in 0..3 {
        let r = get(&proxy, &up, "/v1/rl", &[]).await;
        assert_eq!(r.status, 200);
        let rl = r
            .header("ratelimit")
            .unwrap_or_else(|| panic!("no ratelimit header: {:?}", r.headers));
        let (name, rem, t) = parse_ratelimit(rl).unwrap_or_else(|| panic!("bad ratelimit {rl:?}"));
        assert_eq!(name, "rpm", "{rl}");
        assert!(t > 0.0 && t <= 62.0, "{rl}"); // window × 65/64, rounded up
        let pol = r
            .header("ratelimit-policy")
            .unwrap_or_else(|| panic!("no ratelimit-policy: {:?}", r.headers));
        let (pname, q, w) = parse_policy(pol).unwrap_or_else(|| panic!("bad policy {pol:?}"));
        assert_eq!((pname.as_str(), q, w), ("rpm", 5.0, 60.0), "{pol}");
        remaining.push(rem);
    }
    assert_eq!(remaining, vec![4.0, 3.0, 2.0], "remaining after each call");
}

#[tokio::test]
async fn forward_and_route_mode_share_the_providers_limits() {
    let up = MockUpstream::plain(fixed(200, &[], "ok")).await;
    let cfg = mock_provider(&up, &[])
        .raw(&limit("rpm", "requests", 2.0, "1m", "provider"))
        .raw(&on_limit("reject", "30s", 1000))
        .build();
    let proxy = Proxy::start(&cfg);

    assert_eq!(get(&proxy, &up, "/v1/a", &[]).await.status, 200);
    assert_eq!(
        route(proxy.proxy_addr, "GET", "/mock/v1/b", &[], "")
            .await
            .status,
        200
    );
    let r = route(proxy.proxy_addr, "GET", "/mock/v1/c", &[], "").await;
    assert_quota_429(&r, "rpm", "mock");
    let r = get(&proxy, &up, "/v1/d", &[]).await;
    assert_quota_429(&r, "rpm", "mock");
    assert_eq!(up.requests().len(), 2);
}
