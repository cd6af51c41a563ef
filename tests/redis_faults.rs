//! A Redis that stops answering without closing its connections (frozen with SIGSTOP, as a
//! stalled or overloaded server would): no call waits past `redis_timeout` and the breaker,
//! `on_backend_error` decides meanwhile, and when Redis answers again the usage admitted
//! locally is added to it (SPEC §11). Each test starts its own `redis-server`.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::time::Instant;

const RPM_KEY: &str = "{qp:mock}:q:rpm:requests:r60000000w468750n129:provider:";

fn config(up: &MockUpstream, redis: &RedisServer, on_error: &str) -> String {
    let cfg = mock_provider(up, &[])
        .raw(&limit("rpm", "requests", 100_000.0, "1m", "provider"))
        .raw(&on_limit("reject", "1s", 100))
        .build();
    with_redis(&cfg, redis, on_error).replace(
        "redis_prefix = \"qp\"\n",
        "redis_prefix = \"qp\"\nredis_timeout = \"200ms\"\n",
    )
}

/// `clients` loops calling the proxy until `stop`; per call (status, latency).
async fn load(
    addr: std::net::SocketAddr,
    url: String,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<(u16, Duration)> {
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (url, stop) = (url.clone(), stop.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                while !stop.load(Ordering::Relaxed) && out.len() < 2_000 {
                    let t = Instant::now();
                    let r = forward(addr, "GET", &url, &[], "").await;
                    out.push((r.status.as_u16(), t.elapsed()));
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

#[tokio::test]
async fn a_frozen_redis_costs_a_bounded_wait_then_local_decisions_then_reconciles() {
    let redis = RedisServer::start().await;
    let up = MockUpstream::plain(fixed(200, &[], "ok")).await;
    let proxy = Proxy::start(&config(&up, &redis, "local"));
    let stop = Arc::new(AtomicBool::new(false));
    let run = tokio::spawn(load(
        proxy.proxy_addr,
        mock_url(&up, "/v1/x"),
        4,
        stop.clone(),
    ));

    eventually(
        "calls flow through redis",
        Duration::from_secs(10),
        || async { (up.requests().len() >= 20).then_some(()) },
    )
    .await;
    redis.signal("STOP");
    let frozen_at = up.requests().len();
    // The first calls after the freeze may be served from a grant this proxy holds; then
    // calls meet the frozen Redis (counted failures) and are decided locally.
    eventually(
        "calls keep flowing while redis is frozen, after failing on it",
        Duration::from_secs(15),
        || async {
            let errors = metric_value(
                &metrics_text(proxy.admin_addr).await,
                "quota_proxy_state_backend_errors_total",
                &[],
            );
            (errors >= 1.0 && up.requests().len() >= frozen_at + 40).then_some(())
        },
    )
    .await;
    redis.signal("CONT");
    let thawed_at = up.requests().len();
    eventually(
        "calls keep flowing after",
        Duration::from_secs(10),
        || async { (up.requests().len() >= thawed_at + 20).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let calls = run.await.unwrap();

    let failed: Vec<_> = calls.iter().filter(|(s, _)| *s != 200).collect();
    assert!(failed.is_empty(), "every call is served: {failed:?}");
    let slowest = calls.iter().map(|(_, d)| *d).max().unwrap();
    assert!(
        slowest < Duration::from_secs(3),
        "no call waits on the frozen redis beyond its timeout and the breaker: slowest {slowest:?}"
    );
    let m = metrics_text(proxy.admin_addr).await;
    let errors = metric_value(&m, "quota_proxy_state_backend_errors_total", &[]);
    assert!(errors >= 1.0, "the failures are counted: {m}");

    // Every call the upstream saw is in Redis once it answers again: those it decided, and
    // those decided locally meanwhile (reconciled). A call whose script Redis ran only after
    // the proxy had given up on it is counted twice (over, never under): at most one
    // admission per counted failure, or a grant's worth (at most 256) when the call was
    // asking for one.
    let forwarded = up.requests().len() as f64;
    let counted = eventually(
        "local usage reconciled",
        Duration::from_secs(15),
        || async {
            let n = redis.rolling_sum(RPM_KEY).await;
            (n >= forwarded).then_some(n)
        },
    )
    .await;
    assert!(
        counted <= forwarded + errors * 256.0,
        "redis counts {counted} for {forwarded} calls and {errors} failures"
    );
}

#[tokio::test]
async fn deny_mode_refuses_fast_while_redis_is_frozen_and_recovers() {
    let redis = RedisServer::start().await;
    let up = MockUpstream::plain(fixed(200, &[], "ok")).await;
    let proxy = Proxy::start(&config(&up, &redis, "deny"));
    let url = mock_url(&up, "/v1/x");
    assert_eq!(
        forward(proxy.proxy_addr, "GET", &url, &[], "").await.status,
        200
    );

    redis.signal("STOP");
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let r = forward(proxy.proxy_addr, "GET", &url, &[], "").await;
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "a call hung {:?}",
            t.elapsed()
        );
        statuses.push(r.status.as_u16());
        if r.status == 503 {
            let err = assert_proxy_error(&r, 503, "rejected");
            assert_eq!(err["code"], "state_backend_down", "{err}");
        }
    }
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    let (code, _) = admin_get(proxy.admin_addr, "/readyz").await;
    assert_eq!(code, 503, "not ready while the backend is unreachable");
    assert_eq!(
        up.requests().len(),
        1,
        "nothing uncounted reached the upstream"
    );

    redis.signal("CONT");
    eventually("ready again", Duration::from_secs(15), || async {
        (admin_get(proxy.admin_addr, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    eventually("calls admitted again", Duration::from_secs(15), || async {
        (forward(proxy.proxy_addr, "GET", &url, &[], "").await.status == 200).then_some(())
    })
    .await;
}
