//! Responses the proxy makes itself: status, `x-quota-proxy: error` and the JSON error body.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::*;

/// Parses a raw response text into a [`Resp`] (HTTP/1.1 with Content-Length).
fn parse_raw(text: &str) -> Resp {
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response head in {text:?}"));
    let mut lines = head.lines();
    let status = raw_status(text).unwrap_or_else(|| panic!("no status line in {text:?}"));
    lines.next();
    let mut headers = http::HeaderMap::new();
    for line in lines {
        let (k, v) = line.split_once(':').unwrap();
        headers.append(
            http::HeaderName::from_bytes(k.trim().as_bytes()).unwrap(),
            v.trim().parse().unwrap(),
        );
    }
    Resp {
        status: http::StatusCode::from_u16(status).unwrap(),
        version: http::Version::HTTP_11,
        headers,
        body: body.to_string().into(),
    }
}

#[tokio::test]
async fn malformed_request_line_is_400_json() {
    let up = MockUpstream::plain(echo()).await;
    let proxy = Proxy::start(&mock_config(&up).build());

    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET  HTTP/1.1 extra\r\nHost: x\r\n\r\n",
        b"GET http://[::1 HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let text = raw(proxy.proxy_addr, bad).await;
        assert!(
            !text.is_empty(),
            "no response to {:?}",
            String::from_utf8_lossy(bad)
        );
        assert_proxy_error(&parse_raw(&text), 400, "error");
    }
    assert_eq!(up.requests().len(), 0);
}

#[tokio::test]
async fn absolute_uri_disagreeing_with_host_header_is_400() {
    let up = MockUpstream::plain(echo()).await;
    let proxy = Proxy::start(&mock_config(&up).build());

    let resp = forward(
        proxy.proxy_addr,
        "GET",
        &mock_url(&up, "/v1/x"),
        &[("host", "evil.example.com")],
        "",
    )
    .await;

    assert_proxy_error(&resp, 400, "error");
    assert_eq!(
        up.requests().len(),
        0,
        "a mismatched request must not be forwarded"
    );
}

#[tokio::test]
async fn oversized_headers_are_431_and_headers_under_the_limit_pass() {
    let up = MockUpstream::plain(echo()).await;
    let proxy = Proxy::start(&mock_config(&up).proxy("max_header_bytes", "16384").build());

    let small = "a".repeat(4_000);
    let resp = forward(
        proxy.proxy_addr,
        "GET",
        &mock_url(&up, "/v1/small"),
        &[("x-small", &small)],
        "",
    )
    .await;
    assert_eq!(resp.status, 200, "a 4 KB header is within a 16 KiB limit");

    let big = "b".repeat(40_000);
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {MOCK_HOST}:{}\r\nx-big: {big}\r\n\r\n",
        mock_url(&up, "/v1/big"),
        up.port()
    );
    let text = raw(proxy.proxy_addr, req.as_bytes()).await;
    assert_proxy_error(&parse_raw(&text), 431, "error");
    assert_eq!(
        up.requests().len(),
        1,
        "only the small request reached the upstream"
    );
}

#[tokio::test]
async fn unreachable_upstream_is_502() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = ConfigBuilder::new()
        .resolve(MOCK_HOST, "127.0.0.1")
        .simple_provider("mock", MOCK_HOST, &format!("http://{MOCK_HOST}:{closed}"))
        .build();
    let proxy = Proxy::start(&cfg);

    let resp = forward(
        proxy.proxy_addr,
        "GET",
        &format!("http://{MOCK_HOST}:{closed}/v1/x"),
        &[],
        "",
    )
    .await;
    assert_proxy_error(&resp, 502, "error");
    let resp = route(proxy.proxy_addr, "GET", "/mock/v1/x", &[], "").await;
    assert_proxy_error(&resp, 502, "error");
}

#[tokio::test]
async fn upstream_slower_than_upstream_timeout_is_504() {
    let up = MockUpstream::plain(by_path(vec![("/v1/hang", hang())], echo())).await;
    let proxy = Proxy::start(&mock_config(&up).proxy("upstream_timeout", "\"1s\"").build());

    let resp = forward(proxy.proxy_addr, "GET", &mock_url(&up, "/v1/hang"), &[], "").await;

    assert_proxy_error(&resp, 504, "error");
    assert_eq!(up.requests().len(), 1, "the request did reach the upstream");
    // The proxy still serves afterwards.
    let resp = forward(proxy.proxy_addr, "GET", &mock_url(&up, "/v1/fast"), &[], "").await;
    assert_eq!(resp.status, 200);
}

#[tokio::test]
async fn upstream_timeout_holds_for_each_request_of_a_kept_alive_connection() {
    let (gated_h, gate) = gated(fixed(200, &[], "late"));
    let routes = vec![("/v1/hang", hang()), ("/v1/gated", gated_h)];
    let up = MockUpstream::plain(by_path(routes, echo())).await;
    let proxy = Proxy::start(&mock_config(&up).proxy("upstream_timeout", "\"1s\"").build());
    let mut conn = open_h1(proxy.proxy_addr).await.unwrap();
    let send = |path: &str| build_request("GET", &mock_url(&up, path), &[], "");

    // A quick answer, then one that never comes, then one that comes inside the limit
    // although the connection's earlier requests started more than a second before it ends.
    let first = send_on(&mut conn, send("/v1/fast")).await.unwrap();
    assert_eq!(first.status, 200);
    let started = tokio::time::Instant::now();
    let cut = send_on(&mut conn, send("/v1/hang")).await.unwrap();
    assert_proxy_error(&cut, 504, "error");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "cut off after the 1 s limit, not {waited:?}"
    );
    let release = async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        gate.release();
    };
    let (late, ()) = tokio::join!(send_on(&mut conn, send("/v1/gated")), release);
    let late = late.unwrap();
    assert_eq!(late.status, 200, "{}", late.text());
    assert_eq!(late.text(), "late");
}

#[tokio::test]
async fn tls_upstream_with_untrusted_certificate_is_502_and_nothing_is_sent() {
    let trusted = TestCa::new("trusted test ca");
    let wrong = TestCa::new("wrong test ca");
    let up = MockUpstream::tls(echo(), &wrong.issue(&[MOCK_HOST])).await;
    let cfg = ConfigBuilder::new()
        .resolve(MOCK_HOST, "127.0.0.1")
        .extra_roots(trusted.pem_path())
        .simple_provider("mock", MOCK_HOST, &up.url_for(MOCK_HOST))
        .build();
    let proxy = Proxy::start(&cfg);

    let resp = route(
        proxy.proxy_addr,
        "GET",
        "/mock/v1/x",
        &[("authorization", "Bearer app-secret")],
        "",
    )
    .await;

    assert_proxy_error(&resp, 502, "error");
    assert_eq!(
        up.requests().len(),
        0,
        "no request may be sent over an unverified connection"
    );
}

#[tokio::test]
async fn tls_upstream_with_certificate_for_another_name_is_502() {
    let ca = TestCa::new("test ca");
    let up = MockUpstream::tls(echo(), &ca.issue(&["somebody-else.test"])).await;
    let cfg = ConfigBuilder::new()
        .resolve(MOCK_HOST, "127.0.0.1")
        .extra_roots(ca.pem_path())
        .simple_provider("mock", MOCK_HOST, &up.url_for(MOCK_HOST))
        .build();
    let proxy = Proxy::start(&cfg);

    let resp = route(proxy.proxy_addr, "GET", "/mock/v1/x", &[], "").await;

    assert_proxy_error(&resp, 502, "error");
    assert_eq!(up.requests().len(), 0);
}
