//! The upstream connection pool, seen from the upstream: connections are reused, one per
//! concurrent request at most, and a connection the upstream closed is replaced without the
//! client noticing.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use support::*;

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    let up = MockUpstream::plain(fixed(200, &[], "ok")).await;
    let proxy = Proxy::start(&mock_config(&up).build());

    for i in 0..20 {
        // A new client connection each time: the upstream side is pooled regardless.
        let resp = forward(
            proxy.proxy_addr,
            "GET",
            &mock_url(&up, &format!("/n/{i}")),
            &[],
            "",
        )
        .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        let resp = route(proxy.proxy_addr, "GET", &format!("/mock/r/{i}"), &[], "").await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }

    assert_eq!(up.requests().len(), 40);
    assert_eq!(
        up.connections(),
        1,
        "every request should reuse the first connection"
    );
}

#[tokio::test]
async fn concurrent_requests_open_a_connection_each_then_reuse_them() {
    let up = MockUpstream::plain(slow(Duration::from_millis(300), fixed(200, &[], "ok"))).await;
    let proxy = Proxy::start(&mock_config(&up).build());
    let url = mock_url(&up, "/slow");

    let burst = |n: usize| {
        let url = url.clone();
        let addr = proxy.proxy_addr;
        async move {
            let calls = (0..n).map(|_| {
                let url = url.clone();
                tokio::spawn(async move { forward(addr, "GET", &url, &[], "").await.status })
            });
            let mut statuses = Vec::new();
            for c in calls.collect::<Vec<_>>() {
                statuses.push(c.await.unwrap());
            }
            statuses
        }
    };

    assert_eq!(burst(6).await, vec![200; 6]);
    let opened = up.connections();
    assert_eq!(opened, 6, "six requests at once need six connections");
    assert_eq!(burst(6).await, vec![200; 6]);
    assert_eq!(
        up.connections(),
        opened,
        "the second burst reuses the first's connections"
    );
}

#[tokio::test]
async fn an_upstream_that_closes_after_each_response_is_reconnected() {
    let up = MockUpstream::plain(fixed(200, &[("connection", "close")], "bye")).await;
    let proxy = Proxy::start(&mock_config(&up).build());

    for i in 0..5 {
        let resp = forward(
            proxy.proxy_addr,
            "GET",
            &mock_url(&up, &format!("/c/{i}")),
            &[],
            "",
        )
        .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.text(), "bye");
    }
    assert_eq!(up.connections(), 5);
}

/// A keep-alive upstream that closes each connection 100 ms after its first response
/// (an idle timeout shorter than the proxy's). Counts connections accepted and closed.
struct ClosingUpstream {
    port: u16,
    accepted: tokio::sync::watch::Receiver<usize>,
    closed: tokio::sync::watch::Receiver<usize>,
}

async fn closing_upstream() -> ClosingUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (accepted_tx, accepted) = tokio::sync::watch::channel(0usize);
    let (closed_tx, closed) = tokio::sync::watch::channel(0usize);
    let closed_tx = std::sync::Arc::new(closed_tx);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            accepted_tx.send_modify(|n| *n += 1);
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nidle")
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                drop(s);
                closed_tx.send_modify(|n| *n += 1);
            });
        }
    });
    ClosingUpstream {
        port,
        accepted,
        closed,
    }
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_not_used_again() {
    let up = closing_upstream().await;
    let config = ConfigBuilder::new()
        .resolve(MOCK_HOST, "127.0.0.1")
        .simple_provider(
            "mock",
            MOCK_HOST,
            &format!("http://{MOCK_HOST}:{}", up.port),
        )
        .build();
    let proxy = Proxy::start(&config);
    let url = format!("http://{MOCK_HOST}:{}/x", up.port);

    for round in 1..=3 {
        let resp = forward(proxy.proxy_addr, "GET", &url, &[], "").await;
        assert_eq!(resp.status, 200, "round {round}: {}", resp.text());
        assert_eq!(resp.text(), "idle");
        assert_eq!(
            *up.accepted.borrow(),
            round,
            "round {round} opened a connection"
        );
        // The upstream closes the pooled connection; the next request needs a new one.
        let mut closed = up.closed.clone();
        tokio::time::timeout(Duration::from_secs(5), closed.wait_for(|n| *n >= round))
            .await
            .expect("the upstream closes its connection")
            .unwrap();
    }
}
