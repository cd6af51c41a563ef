//! `warn_at`: one log line and one metric increment when a limit crosses its threshold.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use support::*;

#[tokio::test]
async fn crossing_warn_at_logs_once_and_counts() {
    let up = MockUpstream::plain(echo()).await;
    let cfg = mock_config(&up)
        .raw("[[providers.mock.limits]]\nname = \"daily\"\namount = 10\nwindow = \"day\"\nwarn_at = 0.5\n")
        .build();
    let proxy = Proxy::start(&cfg);
    for _ in 0..4 {
        route(proxy.proxy_addr, "GET", "/mock/x", &[], Bytes::new()).await;
    }
    assert!(
        !proxy.logs().contains("warn_at"),
        "no warning below the threshold"
    );
    for _ in 0..3 {
        route(proxy.proxy_addr, "GET", "/mock/x", &[], Bytes::new()).await;
    }
    proxy
        .wait_for_log("limit is 50% used (warn_at 50%)", Duration::from_secs(5))
        .await;
    assert_eq!(
        proxy.logs().matches("(warn_at 50%)").count(),
        1,
        "one line per window"
    );
    let (_, metrics) = admin_get(proxy.admin_addr, "/metrics").await;
    assert!(
        metrics.contains("quota_proxy_limit_warnings_total{provider=\"mock\",limit=\"daily\"} 1"),
        "{metrics}"
    );
}
