//! Connection-level bounds: header read timeout and max_connections.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn stalled_request_head_is_dropped_after_header_read_timeout_while_others_are_served() {
    let up = MockUpstream::plain(echo()).await;
    let proxy = Proxy::start(
        &mock_config(&up)
            .proxy("header_read_timeout", "\"1s\"")
            .build(),
    );

    let mut stalled = TcpStream::connect(proxy.proxy_addr).await.unwrap();
    let partial = format!(
        "GET {} HTTP/1.1\r\nHost: {MOCK_HOST}:{}\r\nx-partial: ",
        mock_url(&up, "/v1/stall"),
        up.port()
    );
    stalled.write_all(partial.as_bytes()).await.unwrap();
    let started = tokio::time::Instant::now();

    // Meanwhile another client is served normally.
    let resp = forward(
        proxy.proxy_addr,
        "GET",
        &mock_url(&up, "/v1/meanwhile"),
        &[],
        "",
    )
    .await;
    assert_eq!(resp.status, 200);

    // The stalled connection is closed (perhaps after a 408) within a generous bound.
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stalled.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "stalled connection still open {:?} after it stalled",
        started.elapsed()
    );
    let text = String::from_utf8_lossy(&got);
    if let Some(status) = raw_status(&text) {
        assert_eq!(status, 408, "only a 408 makes sense here, got {text:?}");
    }
    assert_eq!(
        up.requests().len(),
        1,
        "the partial request never reached the upstream"
    );
}

#[tokio::test]
async fn connection_over_max_connections_gets_503_or_is_closed() {
    let up = MockUpstream::plain(echo()).await;
    let proxy = Proxy::start(&mock_config(&up).proxy("max_connections", "2").build());
    let url = mock_url(&up, "/v1/c");

    let mut first = open_h1(proxy.proxy_addr).await.unwrap();
    let mut second = open_h1(proxy.proxy_addr).await.unwrap();
    for conn in [&mut first, &mut second] {
        let resp = send_on(conn, build_request("GET", &url, &[], ""))
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
    }

    // The third simultaneous connection is refused with a 503, or closed without a response.
    let mut third = TcpStream::connect(proxy.proxy_addr).await.unwrap();
    let req = format!(
        "GET {url} HTTP/1.1\r\nHost: {MOCK_HOST}:{}\r\n\r\n",
        up.port()
    );
    let _ = third.write_all(req.as_bytes()).await;
    let text =
        String::from_utf8_lossy(&read_response_bytes(&mut third, Duration::from_secs(5)).await)
            .into_owned();
    match raw_status(&text) {
        None => assert!(text.is_empty(), "unexpected bytes {text:?}"),
        Some(status) => {
            assert_eq!(status, 503, "{text}");
            assert!(
                text.to_ascii_lowercase().contains("x-quota-proxy: error"),
                "{text}"
            );
            let body: serde_json::Value = serde_json::from_str(raw_body(&text)).unwrap();
            assert!(body["error"]["message"].is_string(), "{body}");
        }
    }
    assert_eq!(
        up.requests().len(),
        2,
        "the refused connection's request was not forwarded"
    );

    // The first two keep working.
    for conn in [&mut first, &mut second] {
        let resp = send_on(conn, build_request("GET", &url, &[], ""))
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
    }

    // Once one closes, a new connection is served.
    drop(first);
    eventually(
        "a new connection is served after one closed",
        Duration::from_secs(5),
        || {
            let url = url.clone();
            let addr = proxy.proxy_addr;
            async move {
                try_forward(addr, "GET", &url, &[], "")
                    .await
                    .ok()
                    .filter(|r| r.status == 200)
            }
        },
    )
    .await;
}
