//! CONNECT to a provider host with `intercept = true`: the proxy terminates TLS with a leaf from
//! its own CA (created on first run), serves the inner HTTP/1.1 or h2 requests through the same
//! pipeline, and re-originates verified TLS to the upstream.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use bytes::Bytes;
use support::*;
use tokio_rustls::client::TlsStream;

struct Setup {
    upstream_ca: TestCa,
    up: MockUpstream,
    proxy: Proxy,
}

impl Setup {
    async fn new(handler: Handler) -> Setup {
        let upstream_ca = TestCa::new("upstream test ca");
        let up = MockUpstream::tls(handler, &upstream_ca.issue(&[MOCK_HOST])).await;
        let cfg = intercepted_mock(&upstream_ca, &up).build();
        let proxy = Proxy::start(&cfg);
        Setup {
            upstream_ca,
            up,
            proxy,
        }
    }

    fn authority(&self) -> String {
        format!("{MOCK_HOST}:{}", self.up.port())
    }

    /// A tunnel to the mock through the proxy, with TLS to the proxy's leaf offering `alpn`.
    async fn intercepted_tls(&self, alpn: &[&str]) -> TlsStream<tokio::net::TcpStream> {
        let tunnel = connect_tunnel(self.proxy.proxy_addr, &self.authority())
            .await
            .unwrap();
        tls_connect_config(tunnel, self.trust_proxy_ca(alpn), MOCK_HOST)
            .await
            .expect("TLS with the proxy's leaf")
    }

    /// A client config trusting only the CA the proxy created in its working directory.
    fn trust_proxy_ca(&self, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
        let path = self.proxy.dir().join("certs/ca.crt");
        client_config_for_roots(roots_from_pem_file(&path), alpn)
    }
}

#[tokio::test]
async fn intercepted_h2_and_h1_requests_reach_the_upstream_over_verified_tls() {
    let s = Setup::new(echo()).await;

    // h2 inside the tunnel.
    let tls = s.intercepted_tls(&["h2", "http/1.1"]).await;
    assert_eq!(negotiated_alpn(&tls).as_deref(), Some("h2"));
    let req = build_request(
        "POST",
        &format!("https://{}/v1/inner?q=1", s.authority()),
        &[("x-quota-client", "team-a")],
        "inner body",
    );
    let resp = send_h2(tls, req).await.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "inner body");

    // HTTP/1.1 inside the tunnel.
    let tls = s.intercepted_tls(&["http/1.1"]).await;
    let req = build_request(
        "GET",
        "/v1/h1",
        &[
            ("host", &s.authority()),
            ("proxy-authorization", "Basic ZXVyb3BlOg=="),
        ],
        Bytes::new(),
    );
    let resp = send_h1(tls, req).await.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());

    let recs = s.up.requests();
    assert_eq!(recs.len(), 2);
    assert!(
        recs.iter()
            .all(|r| r.tls && r.sni.as_deref() == Some(MOCK_HOST)),
        "upstream TLS re-originated to {MOCK_HOST}"
    );
    assert_eq!(recs[0].path_and_query(), "/v1/inner?q=1");
    assert_eq!(recs[0].body_text(), "inner body");
    // The upstream protocol follows the client's (the mock offers both by ALPN).
    assert_eq!(
        recs[0].version,
        http::Version::HTTP_2,
        "an h2 call goes upstream over h2"
    );
    assert_eq!(
        recs[1].version,
        http::Version::HTTP_11,
        "an HTTP/1.1 call over HTTP/1.1"
    );
    assert!(
        recs[0].headers.get("x-quota-client").is_none(),
        "{:?}",
        recs[0].headers
    );
    assert_eq!(recs[1].path_and_query(), "/v1/h1");
    assert!(
        recs[1].headers.get("proxy-authorization").is_none(),
        "{:?}",
        recs[1].headers
    );
}

#[tokio::test]
async fn intercepted_tunnel_is_not_the_upstreams_certificate() {
    let s = Setup::new(echo()).await;

    // A client trusting only the upstream's CA fails: the proxy, not the upstream, answers TLS.
    let tunnel = connect_tunnel(s.proxy.proxy_addr, &s.authority())
        .await
        .unwrap();
    let res = tls_connect(tunnel, &s.upstream_ca, MOCK_HOST, &["http/1.1"]).await;
    assert!(
        res.is_err(),
        "the upstream's own certificate reached the client through an intercepted tunnel"
    );
    assert_eq!(s.up.requests().len(), 0);
}

#[tokio::test]
async fn intercepted_request_for_another_host_is_421() {
    let s = Setup::new(echo()).await;

    let tls = s.intercepted_tls(&["http/1.1"]).await;
    let req = build_request(
        "GET",
        "/v1/x",
        &[("host", "evil.example.com")],
        Bytes::new(),
    );
    let resp = send_h1(tls, req).await.unwrap();

    assert_proxy_error(&resp, 421, "error");
    assert_eq!(s.up.requests().len(), 0);
}

#[tokio::test]
async fn intercepted_tls_with_sni_for_another_host_is_refused() {
    let s = Setup::new(echo()).await;

    let tunnel = connect_tunnel(s.proxy.proxy_addr, &s.authority())
        .await
        .unwrap();
    let res = tls_connect_config(tunnel, s.trust_proxy_ca(&["http/1.1"]), "evil.example.com").await;

    assert!(
        res.is_err(),
        "a TLS session for another name was accepted inside a tunnel to {MOCK_HOST}"
    );
    assert_eq!(s.up.requests().len(), 0);
}

#[tokio::test]
async fn intercepted_upstream_with_untrusted_certificate_is_502() {
    let wrong = TestCa::new("wrong test ca");
    let s = Setup::new(echo()).await;
    // Same name, but the upstream now presents a certificate from a CA the proxy does not trust.
    let bad_up = MockUpstream::tls(echo(), &wrong.issue(&[MOCK_HOST])).await;
    let authority = format!("{MOCK_HOST}:{}", bad_up.port());

    let tunnel = connect_tunnel(s.proxy.proxy_addr, &authority)
        .await
        .unwrap();
    let tls = tls_connect_config(tunnel, s.trust_proxy_ca(&["http/1.1"]), MOCK_HOST)
        .await
        .unwrap();
    let req = build_request(
        "GET",
        "/v1/x",
        &[("host", &authority), ("authorization", "Bearer app-secret")],
        Bytes::new(),
    );
    let resp = send_h1(tls, req).await.unwrap();

    assert_proxy_error(&resp, 502, "error");
    assert_eq!(
        bad_up.requests().len(),
        0,
        "nothing may be sent over an unverified connection"
    );
}

#[tokio::test]
async fn h2_calls_share_one_upstream_connection_and_h1_calls_reuse_theirs() {
    let s = Setup::new(echo()).await;

    // h2: one call opens the upstream h2 connection, four at once then share it.
    let tls = s.intercepted_tls(&["h2"]).await;
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let url = format!("https://{}/v1/h2", s.authority());
    let call = |mut sender: hyper::client::conn::http2::SendRequest<_>| {
        let req = build_request("GET", &url, &[], Bytes::new());
        async move { sender.send_request(req).await.unwrap().status() }
    };
    assert_eq!(call(sender.clone()).await, 200);
    let calls: Vec<_> = (0..4).map(|_| tokio::spawn(call(sender.clone()))).collect();
    for c in calls {
        assert_eq!(c.await.unwrap(), 200);
    }
    assert_eq!(
        s.up.connections(),
        1,
        "h2 calls multiplex on one upstream connection"
    );

    // HTTP/1.1: three calls on three client connections, one upstream connection.
    for i in 0..3 {
        let tls = s.intercepted_tls(&["http/1.1"]).await;
        let req = build_request(
            "GET",
            &format!("/v1/h1/{i}"),
            &[("host", &s.authority())],
            Bytes::new(),
        );
        assert_eq!(send_h1(tls, req).await.unwrap().status, 200);
    }
    assert_eq!(
        s.up.connections(),
        2,
        "HTTP/1.1 calls reuse one HTTP/1.1 connection"
    );
    let recs = s.up.requests();
    assert_eq!(recs.len(), 8);
    assert!(recs[..5].iter().all(|r| r.version == http::Version::HTTP_2));
    assert!(recs[5..]
        .iter()
        .all(|r| r.version == http::Version::HTTP_11));
}
