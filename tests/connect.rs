//! CONNECT: blind tunnels for unmatched hosts, and every way a CONNECT is refused before the
//! proxy touches the destination.
#![allow(clippy::unwrap_used)]

mod support;

use bytes::Bytes;
use support::*;

/// A host no provider claims, resolved to 127.0.0.1 by the proxy.
const OTHER_HOST: &str = "other.mock.test";

fn config(up: &MockUpstream, unmatched: &str, ports: &[u16], allow_private: bool) -> String {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    mock_config(up)
        .resolve(OTHER_HOST, "127.0.0.1")
        .proxy("unmatched", &toml_str(unmatched))
        .proxy("connect_ports", &format!("[{}]", ports.join(", ")))
        .proxy(
            "allow_private_destinations",
            if allow_private { "true" } else { "false" },
        )
        .build()
}

fn assert_refused(refusal: &TunnelRefused, status: u16) {
    assert_eq!(refusal.status, status, "response: {:?}", refusal.response);
    assert_eq!(
        refusal.header("x-quota-proxy").as_deref(),
        Some("error"),
        "response: {:?}",
        refusal.response
    );
    let v = refusal.json();
    for field in ["type", "code", "message"] {
        assert!(
            v["error"][field].as_str().is_some_and(|s| !s.is_empty()),
            "error.{field} in {v}"
        );
    }
}

#[tokio::test]
async fn unmatched_connect_is_a_blind_tunnel_carrying_tls_h2_and_h1() {
    let ca = TestCa::new("tunnel test ca");
    let provider_up = MockUpstream::plain(echo()).await;
    let target = MockUpstream::tls(echo(), &ca.issue(&[OTHER_HOST])).await;
    let proxy = Proxy::start(&config(&provider_up, "tunnel", &[443, target.port()], true));
    let authority = format!("{OTHER_HOST}:{}", target.port());

    // h2 through the tunnel: the TLS session is end to end, so ALPN is the upstream's choice.
    let tunnel = connect_tunnel(proxy.proxy_addr, &authority).await.unwrap();
    let tls = tls_connect(tunnel, &ca, OTHER_HOST, &["h2", "http/1.1"])
        .await
        .expect("TLS through the tunnel");
    assert_eq!(negotiated_alpn(&tls).as_deref(), Some("h2"));
    let req = build_request(
        "POST",
        &format!("https://{authority}/v1/in-tunnel?z=9"),
        &[],
        "tunneled body",
    );
    let resp = send_h2(tls, req).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "tunneled body");

    // HTTP/1.1 through a second tunnel.
    let tunnel = connect_tunnel(proxy.proxy_addr, &authority).await.unwrap();
    let tls = tls_connect(tunnel, &ca, OTHER_HOST, &["http/1.1"])
        .await
        .expect("TLS through the tunnel");
    let resp = send_h1(
        tls,
        build_request("GET", "/v1/h1", &[("host", &authority)], Bytes::new()),
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-echo-uri"), Some("/v1/h1"));

    let recs = target.requests();
    assert_eq!(recs.len(), 2);
    assert_eq!(
        recs[0].sni.as_deref(),
        Some(OTHER_HOST),
        "the client's own TLS reached the upstream"
    );
    assert_eq!(recs[0].version, http::Version::HTTP_2);
    assert_eq!(recs[0].path_and_query(), "/v1/in-tunnel?z=9");
    assert_eq!(recs[0].body_text(), "tunneled body");
    assert_eq!(recs[1].version, http::Version::HTTP_11);
    assert_eq!(provider_up.requests().len(), 0);
}

#[tokio::test]
async fn connect_in_deny_mode_is_403_before_any_upstream_connection() {
    let provider_up = MockUpstream::plain(echo()).await;
    let target = MockUpstream::plain(echo()).await;
    let proxy = Proxy::start(&config(&provider_up, "deny", &[443, target.port()], true));

    let refusal = connect_tunnel(proxy.proxy_addr, &format!("{OTHER_HOST}:{}", target.port()))
        .await
        .unwrap_err();

    assert_refused(&refusal, 403);
    target.assert_no_connection_made().await;
}

#[tokio::test]
async fn connect_to_port_not_in_connect_ports_is_403() {
    let provider_up = MockUpstream::plain(echo()).await;
    let target = MockUpstream::plain(echo()).await;
    let proxy = Proxy::start(&config(&provider_up, "tunnel", &[443], true));

    let refusal = connect_tunnel(proxy.proxy_addr, &format!("{OTHER_HOST}:{}", target.port()))
        .await
        .unwrap_err();

    assert_refused(&refusal, 403);
    target.assert_no_connection_made().await;
}

#[tokio::test]
async fn connect_to_private_destination_is_403_unless_allowed() {
    let provider_up = MockUpstream::plain(echo()).await;
    let target = MockUpstream::plain(echo()).await;
    let proxy = Proxy::start(&config(
        &provider_up,
        "tunnel",
        &[443, target.port()],
        false,
    ));

    // By a name that resolves to loopback, and by the loopback address itself.
    let refusal = connect_tunnel(proxy.proxy_addr, &format!("{OTHER_HOST}:{}", target.port()))
        .await
        .unwrap_err();
    assert_refused(&refusal, 403);
    let refusal = connect_tunnel(proxy.proxy_addr, &format!("127.0.0.1:{}", target.port()))
        .await
        .unwrap_err();
    assert_refused(&refusal, 403);
    target.assert_no_connection_made().await;
}

#[tokio::test]
async fn connect_with_malformed_authority_is_400() {
    let provider_up = MockUpstream::plain(echo()).await;
    let proxy = Proxy::start(&config(&provider_up, "tunnel", &[443], true));

    for authority in ["nonsense", "host:notaport", "host:99999"] {
        let refusal = connect_tunnel(proxy.proxy_addr, authority)
            .await
            .unwrap_err();
        assert_refused(&refusal, 400);
    }
}

#[tokio::test]
async fn connect_to_closed_port_is_502() {
    let provider_up = MockUpstream::plain(echo()).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let proxy = Proxy::start(&config(&provider_up, "tunnel", &[443, closed], true));

    let refusal = connect_tunnel(proxy.proxy_addr, &format!("{OTHER_HOST}:{closed}"))
        .await
        .unwrap_err();

    assert_refused(&refusal, 502);
}
