//! The Redis backend over TLS (`rediss://`): the server's certificate is verified against the
//! system roots (here a test CA given by `SSL_CERT_FILE`), and a server the proxy cannot
//! verify is treated as unreachable (`on_backend_error`), never used unverified.
#![allow(clippy::unwrap_used)]

mod support;

use base64::Engine as _;
use support::*;

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A `redis-server` answering TLS only, with a certificate for `localhost` from `ca`.
async fn tls_redis(ca: &TestCa) -> RedisServer {
    let leaf = ca.issue(&["localhost"]);
    let (cert, key) = (ca.dir().join("redis.crt"), ca.dir().join("redis.key"));
    std::fs::write(&cert, pem("CERTIFICATE", &leaf.chain[0])).unwrap();
    std::fs::write(&key, pem("PRIVATE KEY", &leaf.key_der)).unwrap();
    RedisServer::start_tls(&cert, &key, ca.pem_path()).await
}

fn config(up: &MockUpstream, port: u16) -> String {
    let cfg = mock_provider(up, &[])
        .raw(&limit("rpm", "requests", 2.0, "1m", "provider"))
        .raw(&on_limit("reject", "1s", 10))
        .build();
    cfg.replace(
        "[state]\nbackend = \"memory\"\n",
        &format!(
            "[state]\nbackend = \"redis\"\nredis_url = \"rediss://localhost:{port}\"\nredis_prefix = \"qp\"\nredis_timeout = \"2s\"\non_backend_error = \"deny\"\n"
        ),
    )
}

#[tokio::test]
async fn rediss_urls_share_limits_over_verified_tls() {
    let ca = TestCa::new("redis test ca");
    let redis = tls_redis(&ca).await;
    let up = MockUpstream::plain(fixed(200, &[], "ok")).await;
    let cfg = config(&up, redis.port);
    let trust = ca.pem_path().to_str().unwrap().to_string();
    let (a, b) = (
        Proxy::start_with_env(&cfg, &[("SSL_CERT_FILE", &trust)]),
        Proxy::start_with_env(&cfg, &[("SSL_CERT_FILE", &trust)]),
    );
    let url = mock_url(&up, "/v1/x");
    assert_eq!(
        forward(a.proxy_addr, "GET", &url, &[], "").await.status,
        200
    );
    assert_eq!(
        forward(b.proxy_addr, "GET", &url, &[], "").await.status,
        200
    );
    let r = forward(a.proxy_addr, "GET", &url, &[], "").await;
    assert_quota_429(&r, "rpm", "mock");
    let (code, body) = admin_get(b.admin_addr, "/status/mock").await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["providers"]["mock"]["counters"], "redis", "{body}");
    assert_eq!(v["providers"]["mock"]["limits"][0]["used"], 2.0, "{body}");

    // Without the CA the server cannot be verified: it is never used (deny mode: 503).
    let untrusting = Proxy::start_with_env(&cfg, &[("SSL_CERT_FILE", "/nonexistent/ca.pem")]);
    let r = forward(untrusting.proxy_addr, "GET", &url, &[], "").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "state_backend_down");
    assert_eq!(up.requests().len(), 2);
}
