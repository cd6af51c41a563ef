//! What replicas on one Redis share beyond plain limits (SPEC §5, §9, §11): client-share
//! guarantees hold across replicas, and `/status` and the `limit_*` gauges show the shared
//! counters on every replica, including scope ids only another replica has served. Each
//! test starts its own `redis-server` on a free port.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

fn config(up: &MockUpstream, redis: &RedisServer) -> String {
    let cfg = mock_provider(up, &[])
        .raw(&limit("rpm", "requests", 10.0, "1m", "provider"))
        .raw(&limit("daily", "requests", 100.0, "day", "client"))
        .raw(&on_limit("reject", "1s", 10))
        .build();
    patient(&with_redis(&cfg, redis, "local"))
}

async fn status(admin: std::net::SocketAddr) -> Value {
    let (code, body) = admin_get(admin, "/status/mock").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["providers"]["mock"].clone()
}

fn used(p: &Value, name: &str, scope_id: &str) -> Option<f64> {
    p["limits"]
        .as_array()?
        .iter()
        .find(|l| l["name"] == name && l["scope_id"] == scope_id)?["used"]
        .as_f64()
}

#[tokio::test]
async fn every_replica_shows_the_shared_counters() {
    let mut redis = RedisServer::start().await;
    let up = MockUpstream::plain(fixed(200, &[], "ok")).await;
    let cfg = config(&up, &redis);
    let (a, b) = (Proxy::start(&cfg), Proxy::start(&cfg));
    let url = mock_url(&up, "/v1/x");
    for _ in 0..3 {
        let r = forward(a.proxy_addr, "GET", &url, &[("x-quota-client", "eu")], "").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for _ in 0..2 {
        let r = forward(b.proxy_addr, "GET", &url, &[("x-quota-client", "us")], "").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }

    for proxy in [&a, &b] {
        let p = status(proxy.admin_addr).await;
        assert_eq!(p["counters"], "redis", "{p}");
        assert_eq!(used(&p, "rpm", ""), Some(5.0), "{p}");
        assert_eq!(used(&p, "daily", "eu"), Some(3.0), "{p}");
        assert_eq!(used(&p, "daily", "us"), Some(2.0), "{p}");
        let rpm = p["limits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == "rpm")
            .unwrap()
            .clone();
        assert_eq!(rpm["remaining"], 5.0, "{rpm}");
        let secs = rpm["seconds_until_reset"].as_f64().unwrap();
        assert!(secs > 0.0 && secs <= 61.0, "{rpm}");
        let day = p["limits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == "daily" && l["scope_id"] == "eu")
            .unwrap()
            .clone();
        let secs = day["seconds_until_reset"].as_f64().unwrap();
        assert!(secs > 0.0 && secs <= 86_400.0, "{day}");

        let m = metrics_text(proxy.admin_addr).await;
        let labels = ["provider=\"mock\"", "limit=\"daily\"", "scope_id=\"eu\""];
        assert_eq!(metric_value(&m, "quota_proxy_limit_used", &labels), 3.0);
        let labels = ["provider=\"mock\"", "limit=\"rpm\"", "scope_id=\"\""];
        assert_eq!(
            metric_value(&m, "quota_proxy_limit_remaining", &labels),
            5.0
        );
    }

    // The RateLimit headers count every replica's calls: 5 so far, this is the 6th.
    let r = forward(b.proxy_addr, "GET", &url, &[("x-quota-client", "us")], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("ratelimit"),
        Some("\"rpm\";r=4"),
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("ratelimit-policy"), Some("\"rpm\";q=10;w=60"));

    // Redis gone: the status says its figures are this replica's own.
    redis.kill();
    let p = eventually(
        "status falls back to local counters",
        Duration::from_secs(10),
        || async {
            let p = status(b.admin_addr).await;
            (p["counters"] == "local (redis unreachable)").then_some(p)
        },
    )
    .await;
    assert!(p["limits"].as_array().is_some(), "{p}");
}

#[tokio::test]
async fn client_share_guarantees_hold_across_replicas() {
    let redis = RedisServer::start().await;
    let up = MockUpstream::plain(fixed(200, &[], "ok")).await;
    let cfg = mock_provider(&up, &[])
        .raw(&limit("daily", "requests", 10.0, "day", "provider"))
        .raw(&on_limit("reject", "1s", 10))
        .raw(
            "[providers.mock.clients]\nshares = { europe = 0.5, americas = 0.3 }\nborrow = false\n",
        )
        .build();
    let cfg = patient(&with_redis(&cfg, &redis, "local"));
    let (a, b) = (Proxy::start(&cfg), Proxy::start(&cfg));
    let url = mock_url(&up, "/v1/x");
    let call = |proxy: &Proxy, client: &'static str| {
        let (addr, url) = (proxy.proxy_addr, url.clone());
        async move { forward(addr, "GET", &url, &[("x-quota-client", client)], "").await }
    };
    // Europe's guarantee is 5 of 10, spread over both replicas; a sixth call is refused
    // wherever it arrives, although the day limit has room.
    for i in 0..5 {
        let r = call(if i % 2 == 0 { &a } else { &b }, "europe").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for p in [&a, &b] {
        let r = call(p, "europe").await;
        assert_quota_429(&r, "daily", "mock");
    }
    // Americas keeps its 3, and clients not listed share the remaining 2.
    for i in 0..3 {
        let r = call(if i % 2 == 0 { &b } else { &a }, "americas").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_quota_429(&call(&a, "americas").await, "daily", "mock");
    for p in [&a, &b] {
        assert_eq!(call(p, "apac").await.status, 200);
    }
    assert_quota_429(&call(&b, "apac").await, "daily", "mock");
    assert_eq!(
        up.requests().len(),
        10,
        "the upstream saw exactly the day's amount"
    );
}
