//! Idle HTTP/1.1 keep-alive connections are parked (hyper's buffers freed, the socket kept)
//! and serve their next request as if nothing happened: same socket, no `Connection: close`,
//! no byte lost, pipelined requests and a CONNECT after parking included. A parked connection
//! still closes at the idle limit and at shutdown.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A host no provider claims, tunneled to the mock upstream.
const OTHER_HOST: &str = "other.mock.test";

fn config(up: &MockUpstream, header_read_timeout: &str) -> String {
    mock_config(up)
        .resolve(OTHER_HOST, "127.0.0.1")
        .proxy("unmatched", "\"tunnel\"")
        .proxy("connect_ports", &format!("[{}]", up.port()))
        .proxy("allow_private_destinations", "true")
        .proxy("header_read_timeout", &toml_str(header_read_timeout))
        .build()
}

async fn parked(admin: SocketAddr) -> f64 {
    let (_, text) = admin_get(admin, "/metrics").await;
    metric_value(&text, "quota_proxy_connections_parked_total", &[])
}

/// Waits until the proxy has parked more than `before` connections.
async fn wait_parked(admin: SocketAddr, before: f64) -> f64 {
    eventually(
        "a connection parked",
        Duration::from_secs(5),
        || async move {
            let now = parked(admin).await;
            (now > before).then_some(now)
        },
    )
    .await
}

fn get(up: &MockUpstream, path: &str) -> String {
    format!(
        "GET {} HTTP/1.1\r\nHost: {MOCK_HOST}:{}\r\n\r\n",
        mock_url(up, path),
        up.port()
    )
}

fn post(up: &MockUpstream, path: &str, body: &str) -> String {
    format!(
        "POST {} HTTP/1.1\r\nHost: {MOCK_HOST}:{}\r\nContent-Length: {}\r\n\r\n{body}",
        mock_url(up, path),
        up.port(),
        body.len()
    )
}

/// Reads one complete response from `s` and returns it; panics if there is none.
async fn response(s: &mut TcpStream) -> String {
    let bytes = read_response_bytes(s, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    assert_eq!(raw_status(&text), Some(200), "response: {text:?}");
    assert!(
        !text.to_ascii_lowercase().contains("connection: close"),
        "a kept-alive response must not close: {text:?}"
    );
    text
}

#[tokio::test]
async fn a_parked_connection_serves_its_next_requests_on_the_same_socket() {
    let up = MockUpstream::plain(echo()).await;
    let proxy = Proxy::start(&config(&up, "10s"));
    let mut s = TcpStream::connect(proxy.proxy_addr).await.unwrap();

    s.write_all(get(&up, "/v1/first").as_bytes()).await.unwrap();
    let first = response(&mut s).await;
    assert!(first.contains("x-echo-uri: /v1/first"), "{first}");
    let before = wait_parked(proxy.admin_addr, 0.0).await;

    // The next head arrives in two pieces, the body in a third: nothing is lost.
    let req = post(&up, "/v1/second", "the body after parking");
    let (a, b) = req.split_at(20);
    s.write_all(a.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (b, body) = b.split_at(b.len() - 6);
    s.write_all(b.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(body.as_bytes()).await.unwrap();
    let second = response(&mut s).await;
    assert!(second.contains("x-echo-uri: /v1/second"), "{second}");
    assert_eq!(raw_body(&second), "the body after parking");

    // Parked again, then two pipelined requests in one write: both answered, in order.
    let before = wait_parked(proxy.admin_addr, before).await;
    let two = format!("{}{}", get(&up, "/v1/p1"), post(&up, "/v1/p2", "pipelined"));
    s.write_all(two.as_bytes()).await.unwrap();
    let p1 = response(&mut s).await;
    assert!(p1.contains("x-echo-uri: /v1/p1"), "{p1}");
    let p2 = response(&mut s).await;
    assert!(p2.contains("x-echo-uri: /v1/p2"), "{p2}");
    assert_eq!(raw_body(&p2), "pipelined");

    // Parked once more, then a CONNECT with the tunneled request in the same write: the
    // bytes after the CONNECT head reach the tunnel.
    wait_parked(proxy.admin_addr, before).await;
    let authority = format!("{OTHER_HOST}:{}", up.port());
    let inner = format!("GET /v1/in-tunnel HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    let connect = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n{inner}");
    s.write_all(connect.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("x-echo-uri: /v1/in-tunnel") {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .expect("the tunneled response in time")
            .unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // The mock saw every request once, the tunneled one with origin-form.
    let paths: Vec<String> = up.requests().iter().map(|r| r.path_and_query()).collect();
    assert_eq!(
        paths,
        [
            "/v1/first",
            "/v1/second",
            "/v1/p1",
            "/v1/p2",
            "/v1/in-tunnel"
        ]
    );
}

#[tokio::test]
async fn a_parked_connection_closes_at_the_idle_limit_and_at_shutdown() {
    let up = MockUpstream::plain(echo()).await;
    let mut proxy = Proxy::start(&config(&up, "1500ms"));

    // Idle limit: header_read_timeout counted from the last response, parked or not.
    let mut s = TcpStream::connect(proxy.proxy_addr).await.unwrap();
    s.write_all(get(&up, "/v1/a").as_bytes()).await.unwrap();
    response(&mut s).await;
    let quiet = Instant::now();
    let before = wait_parked(proxy.admin_addr, 0.0).await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("closed within the idle limit")
        .unwrap_or(0);
    assert_eq!(n, 0, "no bytes, just the close");
    let idle = quiet.elapsed();
    assert!(
        idle >= Duration::from_millis(1400) && idle < Duration::from_secs(4),
        "closed after {idle:?} idle (limit 1.5 s)"
    );
    let (_, metrics) = admin_get(proxy.admin_addr, "/metrics").await;
    assert_eq!(
        metric_value(&metrics, "quota_proxy_header_timeouts_total", &[]),
        0.0,
        "an idle keep-alive close is not a slow head"
    );

    // Shutdown: a parked connection is closed at once, and the proxy exits.
    let mut s = TcpStream::connect(proxy.proxy_addr).await.unwrap();
    s.write_all(get(&up, "/v1/b").as_bytes()).await.unwrap();
    response(&mut s).await;
    wait_parked(proxy.admin_addr, before).await;
    proxy.signal("TERM");
    let n = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf))
        .await
        .expect("a parked connection closes at shutdown")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        proxy.wait_exit(Duration::from_secs(10)).await.is_some(),
        "the proxy exits"
    );
}

#[tokio::test]
async fn a_second_head_that_stalls_is_cut_off_at_the_limit_and_counted() {
    let up = MockUpstream::plain(echo()).await;
    let proxy = Proxy::start(&config(&up, "1500ms"));
    let timeouts = || async {
        let (_, metrics) = admin_get(proxy.admin_addr, "/metrics").await;
        metric_value(&metrics, "quota_proxy_header_timeouts_total", &[])
    };
    let before = timeouts().await;

    // One request served, then half of the next head at once: the stall starts while the
    // connection is still being served by hyper, not parked.
    let mut s = TcpStream::connect(proxy.proxy_addr).await.unwrap();
    s.write_all(get(&up, "/v1/first").as_bytes()).await.unwrap();
    response(&mut s).await;
    let half = get(&up, "/v1/second");
    s.write_all(&half.as_bytes()[..half.len() / 2])
        .await
        .unwrap();
    let stalled = Instant::now();

    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the stalled connection is closed");
    let after = stalled.elapsed();
    assert!(
        after >= Duration::from_millis(1400) && after < Duration::from_secs(3),
        "closed {after:?} after the stall (limit 1.5 s)"
    );
    assert!(got.is_empty(), "nothing answers half a head: {got:?}");
    assert_eq!(timeouts().await, before + 1.0, "counted as a slow head");
}

#[tokio::test]
async fn an_intercepted_tls_connection_parks_and_keeps_its_tls_session() {
    let ca = TestCa::new("park test upstream ca");
    let up = MockUpstream::tls(echo(), &ca.issue(&[MOCK_HOST])).await;
    let proxy = Proxy::start(&intercepted_mock(&ca, &up).build());
    let auth = format!("{MOCK_HOST}:{}", up.port());
    let tls = intercepted_h1_tls(proxy.proxy_addr, proxy.dir(), &auth, MOCK_HOST).await;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = |path: &str| {
        build_request(
            "POST",
            path,
            &[("host", auth.as_str())],
            bytes::Bytes::from(format!("body of {path}")),
        )
    };
    let first = send_on(&mut sender, req("/v1/one")).await.unwrap();
    assert_eq!(first.status, 200);
    let before = wait_parked(proxy.admin_addr, 0.0).await;
    // The same TLS session carries the next request: parking kept the decrypted stream.
    let second = send_on(&mut sender, req("/v1/two")).await.unwrap();
    assert_eq!(second.status, 200);
    assert_eq!(second.text(), "body of /v1/two");
    wait_parked(proxy.admin_addr, before).await;
    let third = send_on(&mut sender, req("/v1/three")).await.unwrap();
    assert_eq!(third.text(), "body of /v1/three");
    let paths: Vec<String> = up.requests().iter().map(|r| r.path_and_query()).collect();
    assert_eq!(paths, ["/v1/one", "/v1/two", "/v1/three"]);
}
