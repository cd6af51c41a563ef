//! Forward-proxy (absolute-form) and route-mode (origin-form) HTTP: what the upstream receives
//! and what the client gets back.
#![allow(clippy::unwrap_used)]

mod support;

use support::*;

#[tokio::test]
async fn absolute_form_get_reaches_upstream_with_path_query_and_host() {
    let up = MockUpstream::plain(fixed(
        203,
        &[("x-upstream", "yes"), ("content-type", "application/json")],
        "{\"ok\":true}",
    ))
    .await;
    let proxy = Proxy::start(&mock_config(&up).build());

    let resp = forward(
        proxy.proxy_addr,
        "GET",
        &mock_url(&up, "/v1/x?q=1&b=two"),
        &[("accept", "application/json")],
        "",
    )
    .await;

    assert_eq!(resp.status, 203, "{}", resp.text());
    assert_eq!(resp.header("x-upstream"), Some("yes"));
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.text(), "{\"ok\":true}");
    assert_eq!(
        resp.header("x-quota-proxy"),
        None,
        "upstream responses are not marked as proxy-made"
    );
    let rec = up.single_request();
    assert_eq!(rec.method, "GET");
    assert_eq!(rec.path_and_query(), "/v1/x?q=1&b=two");
    assert_eq!(
        rec.uri.authority(),
        None,
        "upstream must get origin-form, got {}",
        rec.uri
    );
    assert_eq!(
        rec.header("host"),
        Some(format!("{MOCK_HOST}:{}", up.port()).as_str())
    );
    assert_eq!(rec.header("accept"), Some("application/json"));
}

#[tokio::test]
async fn a_host_spelled_otherwise_reaches_upstream_as_the_uri_authority() {
    // The client's Host is passed on only when it is byte for byte what the upstream
    // authority gives; any other spelling of the same origin is replaced by that.
    let up = MockUpstream::plain(fixed(200, &[], "ok")).await;
    let proxy = Proxy::start(&mock_config(&up).build());
    let authority = format!("{MOCK_HOST}:{}", up.port());
    let shouted = authority.to_ascii_uppercase();
    let resp = forward(
        proxy.proxy_addr,
        "GET",
        &mock_url(&up, "/v1/x"),
        &[("host", &shouted)],
        "",
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(up.single_request().header("host"), Some(authority.as_str()));
}

#[tokio::test]
async fn post_body_is_forwarded_intact() {
    let up = MockUpstream::plain(echo()).await;
    let proxy = Proxy::start(&mock_config(&up).build());
    // 1 MiB of non-repeating bytes, so truncation or reordering would show.
    let body: Vec<u8> = (0..1_048_576u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();

    let resp = forward(
        proxy.proxy_addr,
        "POST",
        &mock_url(&up, "/v1/upload"),
        &[("content-type", "application/octet-stream")],
        body.clone(),
    )
    .await;

    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-echo-method"), Some("POST"));
    let rec = up.single_request();
    assert_eq!(rec.body.len(), body.len());
    assert!(
        rec.body[..] == body[..],
        "upstream received a different body"
    );
    assert!(
        resp.body[..] == body[..],
        "client received a different body"
    );
}

#[tokio::test]
async fn hop_by_hop_and_quota_request_headers_are_not_forwarded() {
    let up = MockUpstream::plain(echo()).await;
    let proxy = Proxy::start(&mock_config(&up).build());

    let resp = forward(
        proxy.proxy_addr,
        "GET",
        &mock_url(&up, "/v1/h"),
        &[
            ("connection", "keep-alive, x-named-hop"),
            ("x-named-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic ZXVyb3BlOg=="),
            ("te", "trailers"),
            ("trailer", "x-trail"),
            ("x-quota-client", "europe"),
            ("x-quota-priority", "high"),
            ("x-quota-max-delay", "5s"),
            ("x-end-to-end", "kept"),
        ],
        "",
    )
    .await;

    assert_eq!(resp.status, 200, "{}", resp.text());
    let rec = up.single_request();
    for name in [
        "x-named-hop",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
        "x-quota-client",
        "x-quota-priority",
        "x-quota-max-delay",
    ] {
        assert!(
            rec.headers.get(name).is_none(),
            "{name} was forwarded upstream: {:?}",
            rec.headers
        );
    }
    if let Some(conn) = rec.header("connection") {
        assert!(
            !conn.to_ascii_lowercase().contains("x-named-hop"),
            "Connection forwarded as {conn:?}"
        );
    }
    assert_eq!(rec.header("x-end-to-end"), Some("kept"));
}

#[tokio::test]
async fn upgrade_header_is_not_forwarded() {
    let up = MockUpstream::plain(echo()).await;
    let proxy = Proxy::start(&mock_config(&up).build());

    let resp = forward(
        proxy.proxy_addr,
        "GET",
        &mock_url(&up, "/v1/u"),
        &[("upgrade", "foo/1")],
        "",
    )
    .await;

    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(up.single_request().headers.get("upgrade").is_none());
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_not_returned() {
    let up = MockUpstream::plain(fixed(
        200,
        &[
            ("connection", "x-resp-hop"),
            ("x-resp-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "foo/1"),
            ("x-end-to-end", "kept"),
        ],
        "body",
    ))
    .await;
    let proxy = Proxy::start(&mock_config(&up).build());

    let resp = forward(proxy.proxy_addr, "GET", &mock_url(&up, "/v1/r"), &[], "").await;

    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "body");
    for name in ["x-resp-hop", "keep-alive", "proxy-connection", "upgrade"] {
        assert!(
            resp.headers.get(name).is_none(),
            "{name} returned to client: {:?}",
            resp.headers
        );
    }
    assert_eq!(resp.header("x-end-to-end"), Some("kept"));
}

#[tokio::test]
async fn route_mode_strips_prefix_and_forwards_to_provider_upstream() {
    let up = MockUpstream::plain(echo()).await;
    let proxy = Proxy::start(&mock_config(&up).build());

    let resp = route(
        proxy.proxy_addr,
        "POST",
        "/mock/v1/x?q=1",
        &[
            ("content-type", "application/json"),
            ("x-quota-client", "me"),
        ],
        "{\"m\":1}",
    )
    .await;

    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "{\"m\":1}");
    let rec = up.single_request();
    assert_eq!(rec.method, "POST");
    assert_eq!(rec.path_and_query(), "/v1/x?q=1");
    assert_eq!(rec.body_text(), "{\"m\":1}");
    assert_eq!(
        rec.header("host"),
        Some(format!("{MOCK_HOST}:{}", up.port()).as_str()),
        "Host must be the upstream's authority"
    );
    assert!(rec.headers.get("x-quota-client").is_none());
}

#[tokio::test]
async fn origin_form_path_matching_no_route_is_404_json() {
    let up = MockUpstream::plain(echo()).await;
    let proxy = Proxy::start(&mock_config(&up).build());

    let resp = route(proxy.proxy_addr, "GET", "/nothing/here", &[], "").await;

    assert_proxy_error(&resp, 404, "error");
    // A path that merely shares the prefix's letters is not under the route either.
    let resp = route(proxy.proxy_addr, "GET", "/mockery/v1", &[], "").await;
    assert_proxy_error(&resp, 404, "error");
    assert_eq!(up.requests().len(), 0, "nothing may reach the upstream");
}

#[tokio::test]
async fn route_mode_to_tls_upstream_verifies_with_extra_roots() {
    let ca = TestCa::new("upstream test ca");
    let up = MockUpstream::tls(
        fixed(200, &[("x-tls", "1")], "secure"),
        &ca.issue(&[MOCK_HOST]),
    )
    .await;
    let cfg = ConfigBuilder::new()
        .resolve(MOCK_HOST, "127.0.0.1")
        .extra_roots(ca.pem_path())
        .simple_provider("mock", MOCK_HOST, &up.url_for(MOCK_HOST))
        .build();
    let proxy = Proxy::start(&cfg);

    let resp = route(proxy.proxy_addr, "GET", "/mock/v1/secure?x=1", &[], "").await;

    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "secure");
    let rec = up.single_request();
    assert!(rec.tls);
    assert_eq!(rec.sni.as_deref(), Some(MOCK_HOST));
    assert_eq!(rec.path_and_query(), "/v1/secure?x=1");
}

#[tokio::test]
async fn unmatched_plain_http_is_passed_through_when_private_destinations_allowed() {
    let up = MockUpstream::plain(echo()).await;
    let other = MockUpstream::plain(fixed(200, &[], "other")).await;
    let cfg = mock_config(&up)
        .proxy("unmatched", "\"tunnel\"")
        .proxy("allow_private_destinations", "true")
        .build();
    let proxy = Proxy::start(&cfg);

    let resp = forward(
        proxy.proxy_addr,
        "GET",
        &format!("{}/free?a=1", other.url()),
        &[("x-quota-client", "c")],
        "",
    )
    .await;

    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "other");
    let rec = other.single_request();
    assert_eq!(rec.path_and_query(), "/free?a=1");
    assert!(rec.headers.get("x-quota-client").is_none());
    assert_eq!(up.requests().len(), 0);
}

#[tokio::test]
async fn unmatched_plain_http_to_private_destination_is_403() {
    let up = MockUpstream::plain(echo()).await;
    let other = MockUpstream::plain(fixed(200, &[], "other")).await;
    let cfg = mock_config(&up)
        .proxy("unmatched", "\"tunnel\"")
        .proxy("allow_private_destinations", "false")
        .build();
    let proxy = Proxy::start(&cfg);

    let resp = forward(
        proxy.proxy_addr,
        "GET",
        &format!("{}/private", other.url()),
        &[],
        "",
    )
    .await;

    assert_proxy_error(&resp, 403, "error");
    other.assert_no_connection_made().await;
}

#[tokio::test]
async fn unmatched_plain_http_is_403_in_deny_mode() {
    let up = MockUpstream::plain(echo()).await;
    let other = MockUpstream::plain(fixed(200, &[], "other")).await;
    let cfg = mock_config(&up)
        .proxy("unmatched", "\"deny\"")
        .proxy("allow_private_destinations", "true")
        .build();
    let proxy = Proxy::start(&cfg);

    let resp = forward(
        proxy.proxy_addr,
        "GET",
        &format!("{}/denied", other.url()),
        &[],
        "",
    )
    .await;

    assert_proxy_error(&resp, 403, "error");
    other.assert_no_connection_made().await;
    // The provider's own host is still served.
    let resp = forward(proxy.proxy_addr, "GET", &mock_url(&up, "/v1/ok"), &[], "").await;
    assert_eq!(resp.status, 200);
}

/// A client that asks to close gets the whole response, then a clean end of stream (a FIN,
/// not a reset), on a plain connection and on a plain HTTP tunnel through CONNECT.
#[tokio::test]
async fn connection_close_ends_with_the_whole_response_and_a_clean_eof() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = "x".repeat(100_000);
    let up = MockUpstream::plain(fixed(200, &[], &body)).await;
    let proxy = Proxy::start(&mock_config(&up).build());
    let url = mock_url(&up, "/v1/close");
    let host = format!("{MOCK_HOST}:{}", up.port());
    for tunnel in [false, true] {
        let mut s = tokio::net::TcpStream::connect(proxy.proxy_addr)
            .await
            .unwrap();
        let target = if tunnel {
            s.write_all(format!("CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 1];
                assert_eq!(s.read(&mut b).await.unwrap(), 1, "CONNECT answer cut short");
                head.push(b[0]);
            }
            assert!(
                head.starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&head)
            );
            "/v1/close".to_string()
        } else {
            url.clone()
        };
        s.write_all(
            format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut got = Vec::new();
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut got))
                .await
                .expect("the proxy closes the connection after the response");
        read.unwrap_or_else(|e| panic!("end of stream, not {e} (tunnel {tunnel})"));
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 200"),
            "tunnel {tunnel}: {text:.200}"
        );
        assert!(
            text.ends_with(&body),
            "the whole body arrives before the end (tunnel {tunnel})"
        );
    }
}

#[tokio::test]
async fn one_kept_alive_connection_reaches_each_authority_it_names_and_checks_every_host() {
    // A connection remembers its last destination; a request naming another authority, or
    // the same one spelled otherwise, must not be sent where the last one went, and each
    // request's Host is checked against its own URI.
    let first = MockUpstream::plain(fixed(200, &[], "first")).await;
    let second = MockUpstream::plain(fixed(200, &[], "second")).await;
    let cfg = mock_config(&first)
        .resolve("api.second.test", "127.0.0.1")
        .simple_provider(
            "second",
            "api.second.test",
            &second.url_for("api.second.test"),
        )
        .build();
    let proxy = Proxy::start(&cfg);
    let mut conn = open_h1(proxy.proxy_addr).await.unwrap();
    let first_url = mock_url(&first, "/v1/a");
    let second_url = format!("{}/v1/b", second.url_for("api.second.test"));
    let first_authority = format!("{MOCK_HOST}:{}", first.port());
    let send = |url: String, headers: Vec<(&'static str, String)>| {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        build_request("GET", &url, &headers, "")
    };

    for (url, want) in [
        (&first_url, "first"),
        (&first_url, "first"),
        (&second_url, "second"),
        (&first_url, "first"),
    ] {
        let resp = send_on(&mut conn, send(url.clone(), vec![])).await.unwrap();
        assert_eq!(resp.status, 200, "{url}: {}", resp.text());
        assert_eq!(resp.text(), want, "{url}");
    }
    assert_eq!(first.requests().len(), 3);
    assert_eq!(second.requests().len(), 1);

    // The same authority in capitals: the same origin, sent with the canonical Host.
    let shouted = mock_url(&first, "/v1/c").replace(MOCK_HOST, &MOCK_HOST.to_ascii_uppercase());
    let resp = send_on(&mut conn, send(shouted, vec![])).await.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let last = first.requests().pop().unwrap();
    assert_eq!(last.path_and_query(), "/v1/c");
    assert_eq!(last.header("host"), Some(first_authority.as_str()));

    // The remembered authority with a Host naming the other provider: refused, not sent.
    let resp = send_on(
        &mut conn,
        send(
            first_url.clone(),
            vec![("host", format!("api.second.test:{}", second.port()))],
        ),
    )
    .await
    .unwrap();
    assert_error_saying(&resp, 400, "Host header does not match");
    assert_eq!(first.requests().len(), 4);
    assert_eq!(second.requests().len(), 1);
}
