//! The admin listener: health, readiness and Prometheus metrics.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::*;

#[tokio::test]
async fn healthz_and_readyz_are_200() {
    let up = MockUpstream::plain(echo()).await;
    let proxy = Proxy::start(&mock_config(&up).build());

    let (status, _) = admin_get(proxy.admin_addr, "/healthz").await;
    assert_eq!(status, 200);
    let (status, body) = admin_get(proxy.admin_addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn admin_paths_are_not_served_on_the_proxy_listener() {
    let up = MockUpstream::plain(echo()).await;
    let proxy = Proxy::start(&mock_config(&up).build());

    let resp = route(proxy.proxy_addr, "GET", "/metrics", &[], "").await;
    assert_ne!(resp.status, 200, "metrics leaked on the proxy listener");
}

#[tokio::test]
async fn metrics_count_forwarded_requests_and_upstream_duration() {
    let up = MockUpstream::plain(echo()).await;
    let proxy = Proxy::start(&mock_config(&up).build());

    let resp = forward(
        proxy.proxy_addr,
        "GET",
        &mock_url(&up, "/v1/metered"),
        &[],
        "",
    )
    .await;
    assert_eq!(resp.status, 200);
    let resp = route(proxy.proxy_addr, "GET", "/mock/v1/metered", &[], "").await;
    assert_eq!(resp.status, 200);

    let metrics = eventually(
        "forwarded requests counted",
        Duration::from_secs(5),
        || async {
            let (status, body) = admin_get(proxy.admin_addr, "/metrics").await;
            assert_eq!(status, 200);
            let n = metric_value(
                &body,
                "quota_proxy_requests_total",
                &["provider=\"mock\"", "outcome=\"forwarded\""],
            );
            (n >= 2.0).then_some(body)
        },
    )
    .await;
    assert!(metrics.contains("quota_proxy_requests_total{"), "{metrics}");
    assert_eq!(
        metric_value(
            &metrics,
            "quota_proxy_requests_total",
            &["provider=\"mock\"", "outcome=\"forwarded\""]
        ),
        2.0,
        "{metrics}"
    );
    let duration = metric_lines(
        &metrics,
        "quota_proxy_upstream_duration_seconds",
        &["provider=\"mock\""],
    );
    assert!(
        !duration.is_empty(),
        "no upstream duration for provider mock:\n{metrics}"
    );
    let count = metric_value(
        &metrics,
        "quota_proxy_upstream_duration_seconds_count",
        &["provider=\"mock\""],
    );
    assert_eq!(count, 2.0, "upstream duration observations:\n{metrics}");
}

#[tokio::test]
async fn metrics_hold_no_secrets() {
    let up = MockUpstream::plain(echo()).await;
    let proxy = Proxy::start(&mock_config(&up).build());

    let resp = forward(
        proxy.proxy_addr,
        "GET",
        &mock_url(&up, "/v1/x"),
        &[
            ("authorization", "Bearer sk-very-secret-123"),
            ("proxy-authorization", "Basic ZXVyb3BlOnNlY3JldC1wdw=="),
        ],
        "",
    )
    .await;
    assert_eq!(resp.status, 200);

    let (_, metrics) = admin_get(proxy.admin_addr, "/metrics").await;
    for secret in ["sk-very-secret-123", "ZXVyb3BlOnNlY3JldC1wdw", "secret-pw"] {
        assert!(!metrics.contains(secret), "metrics contain {secret}");
        assert!(!proxy.logs().contains(secret), "logs contain {secret}");
    }
}
