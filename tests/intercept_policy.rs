//! Inside an intercepted tunnel the same pipeline applies as for plain traffic: limits, key
//! injection, streaming; and real clients (the `curl` binary with `HTTPS_PROXY`) work.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use support::*;

struct Setup {
    _upstream_ca: TestCa,
    up: MockUpstream,
    proxy: Proxy,
}

async fn setup(handler: Handler, extra: &str, env: &[(&str, &str)]) -> Setup {
    let upstream_ca = TestCa::new("upstream test ca");
    let up = MockUpstream::tls(handler, &upstream_ca.issue(&[MOCK_HOST])).await;
    let cfg = ConfigBuilder::new()
        .resolve(MOCK_HOST, "127.0.0.1")
        .extra_roots(upstream_ca.pem_path())
        .provider(
            "mock",
            &[
                ("hosts", &format!("[{}]", toml_str(MOCK_HOST))),
                ("intercept", "true"),
            ],
        )
        .raw(extra)
        .build();
    let proxy = Proxy::start_with_env(&cfg, env);
    Setup {
        _upstream_ca: upstream_ca,
        up,
        proxy,
    }
}

impl Setup {
    fn authority(&self) -> String {
        format!("{MOCK_HOST}:{}", self.up.port())
    }
    fn proxy_ca(&self) -> std::path::PathBuf {
        self.proxy.dir().join("certs/ca.crt")
    }
    fn trust(&self) -> Arc<rustls::ClientConfig> {
        client_config_for_roots(roots_from_pem_file(&self.proxy_ca()), &["http/1.1"])
    }
    async fn tls(&self) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let tunnel = connect_tunnel(self.proxy.proxy_addr, &self.authority())
            .await
            .unwrap();
        tls_connect_config(tunnel, self.trust(), MOCK_HOST)
            .await
            .expect("TLS with the proxy's leaf")
    }
}

#[tokio::test]
async fn limits_and_key_injection_apply_inside_the_tunnel() {
    let s = setup(
        echo(),
        r#"
[providers.mock.keys]
pool = [{ id = "pool-key", env = "INTERCEPT_POOL_KEY" }]
[[providers.mock.limits]]
name = "rpm"
amount = 2
window = "1m"
[providers.mock.on_limit]
action = "reject"
"#,
        &[("INTERCEPT_POOL_KEY", "sk-pool-secret-1")],
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let req = build_request(
            "GET",
            "/v1/models",
            &[
                ("host", &s.authority()),
                ("authorization", "Bearer app-own"),
            ],
            Bytes::new(),
        );
        let resp = send_h1(s.tls().await, req).await.unwrap();
        statuses.push(resp.status.as_u16());
        if resp.status == 429 {
            let body = assert_proxy_error(&resp, 429, "rejected");
            assert_eq!(body["code"], "rpm");
            assert!(resp.header("retry-after").is_some());
        } else {
            assert_eq!(resp.header("x-quota-proxy-key"), Some("pool-key"));
        }
    }
    assert_eq!(statuses, [200, 200, 429]);
    let seen = s.up.requests();
    assert_eq!(seen.len(), 2, "the refused call never reached the upstream");
    for r in seen {
        assert_eq!(
            r.header("authorization"),
            Some("Bearer sk-pool-secret-1"),
            "pool key injected, app's removed"
        );
    }
}

#[tokio::test]
async fn sse_streams_event_by_event_through_interception() {
    const EVENTS: usize = 4;
    let wait = Duration::from_secs(5);
    let (h, gate) = sse_gated(EVENTS);
    let s = setup(h, "", &[]).await;
    let req = build_request(
        "GET",
        "/v1/stream",
        &[("host", &s.authority())],
        Bytes::new(),
    );
    let mut resp = send_h1_streaming(s.tls().await, req).await;
    assert_eq!(resp.status, 200);
    for k in 0..EVENTS {
        let event = resp.read_until("\n\n", wait).await;
        assert_eq!(event, sse_event(k));
        assert_eq!(
            gate.sent(),
            k + 1,
            "event {k} arrived only after the upstream sent the next one"
        );
        gate.release();
    }
    assert_eq!(resp.read_to_end(wait).await, "");
}

#[tokio::test]
async fn curl_through_https_proxy_reaches_the_upstream() {
    let s = setup(echo(), "", &[]).await;
    let url = format!("https://{}/v1/curl?x=1", s.authority());
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-d",
            "from curl",
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .arg("--cacert")
        .arg(s.proxy_ca())
        .arg("-x")
        .arg(format!("http://{}", s.proxy.proxy_addr))
        .arg(&url)
        .output()
        .await
        .expect("the curl binary runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, status) = text.rsplit_once('\n').unwrap();
    assert_eq!(body, "from curl");
    assert!(
        status == "200 2" || status == "200 1.1",
        "status/version: {status}"
    );
    let r = s.up.single_request();
    assert_eq!(r.path_and_query(), "/v1/curl?x=1");
}
