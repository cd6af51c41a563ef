//! Open proxy and key exfiltration (SPEC §12): private and metadata destinations are refused
//! for CONNECT and plain forwarding alike, and a pool key reaches only its provider's upstream
//! whatever the absolute URI, `Host`, CONNECT authority, SNI and `:authority` say — checked
//! table-driven against what a real and two decoy upstreams actually received.
//! `tests/connect.rs` and `tests/forward_http.rs` hold the basic deny/port/private cases;
//! `tests/errors.rs` and `tests/intercept.rs` the bad-certificate ones.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use bytes::Bytes;
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DECOY_HOST: &str = "decoy.mock.test";
const CANARY: &str = "sk-canary/Zq+7=exfil-5f2b8c1d";
const CANARY_ENV: &str = "QPT_SEC_CANARY";

/// Every form of the canary a leak could take.
fn canary_forms() -> Vec<String> {
    vec![
        CANARY.to_string(),
        url_encode(CANARY),
        base64(CANARY.as_bytes()),
        base64(format!("Bearer {CANARY}").as_bytes()),
        "exfil-5f2b8c1d".to_string(),
    ]
}

/// Whether a recorded request carries the canary anywhere (headers, target, body).
fn carries_canary(r: &Recorded) -> bool {
    let mut text = format!("{} {}\n", r.method, r.uri);
    for (k, v) in &r.headers {
        text.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
    }
    text.push_str(&r.body_text());
    canary_forms().iter().any(|f| text.contains(f.as_str()))
}

struct World {
    /// Keeps the upstream CA file alive while the proxy runs.
    _ca: TestCa,
    real: MockUpstream,
    decoy_tls: MockUpstream,
    decoy_plain: MockUpstream,
    proxy: Proxy,
}

impl World {
    async fn new() -> World {
        let ca = TestCa::new("exfil upstream ca");
        let ok = || {
            fixed(
                200,
                &[("content-type", "application/json")],
                "{\"ok\":true}",
            )
        };
        let real = MockUpstream::tls(ok(), &ca.issue(&[MOCK_HOST])).await;
        // The decoy holds a certificate the proxy trusts: the worst case for a leak.
        let decoy_tls = MockUpstream::tls(ok(), &ca.issue(&[DECOY_HOST])).await;
        let decoy_plain = MockUpstream::plain(ok()).await;
        let cfg = ConfigBuilder::new()
            .resolve(MOCK_HOST, "127.0.0.1")
            .resolve(DECOY_HOST, "127.0.0.1")
            .extra_roots(ca.pem_path())
            // Unmatched traffic may reach the decoys: only key handling keeps the key away.
            .proxy("unmatched", "\"tunnel\"")
            .proxy("allow_private_destinations", "true")
            .proxy(
                "connect_ports",
                &format!("[443, {}, {}]", decoy_tls.port(), decoy_plain.port()),
            )
            .provider(
                "mock",
                &[
                    ("hosts", &format!("[{}]", toml_str(MOCK_HOST))),
                    ("intercept", "true"),
                    ("route", "\"/mock\""),
                    ("upstream", &toml_str(&real.url_for(MOCK_HOST))),
                ],
            )
            .raw(&format!(
                "[providers.mock.keys]\ninject = {{ header = \"authorization\", format = \"Bearer {{key}}\" }}\npool = [{{ id = \"canary\", env = \"{CANARY_ENV}\" }}]\n"
            ))
            .build();
        let proxy = Proxy::start_with_env(&cfg, &[(CANARY_ENV, CANARY)]);
        World {
            _ca: ca,
            real,
            decoy_tls,
            decoy_plain,
            proxy,
        }
    }

    fn real_auth(&self) -> String {
        format!("{MOCK_HOST}:{}", self.real.port())
    }

    fn decoy_auth(&self) -> String {
        format!("{DECOY_HOST}:{}", self.decoy_tls.port())
    }

    fn decoy_plain_auth(&self) -> String {
        format!("{DECOY_HOST}:{}", self.decoy_plain.port())
    }

    fn proxy_ca(&self, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
        let path = self.proxy.dir().join("certs/ca.crt");
        client_config_for_roots(roots_from_pem_file(&path), alpn)
    }

    /// A TLS session through `CONNECT connect_to` with SNI `sni`, trusting the proxy's CA.
    async fn intercepted(
        &self,
        connect_to: &str,
        sni: &str,
        alpn: &[&str],
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let tunnel = connect_tunnel(self.proxy.proxy_addr, connect_to)
            .await
            .map_err(|r| format!("CONNECT refused: {}", r.status))?;
        tls_connect_config(tunnel, self.proxy_ca(alpn), sni)
            .await
            .map_err(|e| format!("TLS: {e}"))
    }
}

/// How one case went: an HTTP status, or a failure before any answer.
type Outcome = Result<u16, String>;

async fn raw_on<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, bytes: &[u8]) -> Outcome {
    s.write_all(bytes)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let out = read_response_bytes(&mut s, std::time::Duration::from_secs(10)).await;
    raw_status(&String::from_utf8_lossy(&out)).ok_or_else(|| "no HTTP answer".to_string())
}

async fn h2_on<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: S,
    uri: &str,
    host: Option<&str>,
) -> Outcome {
    let headers: Vec<(&str, &str)> = host.map(|h| vec![("host", h)]).unwrap_or_default();
    let mut req = build_request("GET", uri, &headers, Bytes::new());
    if host.is_none() {
        req.headers_mut().remove("host");
    }
    send_h2(io, req).await.map(|r| r.status.as_u16())
}

/// What a case must produce.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// A matching request (control): the real upstream gets exactly one call, with the key.
    Real,
    /// A mismatch: refused with a 4xx (or no TLS session), nothing reaches the real upstream.
    Refused,
}

/// Runs one case (by index) and returns its outcome. Cases: (name, expectation).
async fn run_case(w: &World, i: usize) -> Outcome {
    let p = w.proxy.proxy_addr;
    let (real, decoy, decoy_plain) = (w.real_auth(), w.decoy_auth(), w.decoy_plain_auth());
    let plain = || async { TcpStream::connect(p).await.unwrap() };
    let h1 = |target: String, host: String| {
        format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
    };
    match i {
        // --- plain listener, absolute-form HTTP/1.1 ---
        0 => {
            raw_on(
                plain().await,
                &h1(format!("https://{real}/v1/a"), real.clone()),
            )
            .await
        }
        1 => {
            raw_on(
                plain().await,
                &h1(format!("https://{real}/v1/a"), decoy.clone()),
            )
            .await
        }
        2 => {
            raw_on(
                plain().await,
                &h1(format!("https://{decoy}/v1/a"), real.clone()),
            )
            .await
        }
        3 => {
            raw_on(
                plain().await,
                &h1(format!("http://{decoy_plain}/v1/a"), real.clone()),
            )
            .await
        }
        4 => {
            // Userinfo naming the provider in front of the decoy.
            let target = format!("https://{real}@{decoy}/v1/a");
            raw_on(plain().await, &h1(target, decoy.clone())).await
        }
        5 => {
            let req = format!(
                "GET https://{real}/v1/a HTTP/1.1\r\nHost: {real}\r\nHost: {decoy}\r\nConnection: close\r\n\r\n"
            );
            raw_on(plain().await, req.as_bytes()).await
        }
        6 => {
            let req = format!(
                "GET https://{real}/v1/a HTTP/1.1\r\nHost: {decoy}\r\nHost: {real}\r\nConnection: close\r\n\r\n"
            );
            raw_on(plain().await, req.as_bytes()).await
        }
        7 => {
            // Same name, other port.
            let host = format!("{MOCK_HOST}:{}", w.decoy_tls.port());
            raw_on(plain().await, &h1(format!("https://{real}/v1/a"), host)).await
        }
        // --- route mode: the route prefix decides, Host is not a destination ---
        8 => raw_on(plain().await, &h1("/mock/v1/a".into(), decoy.clone())).await,
        9 => raw_on(plain().await, &h1("/mock/v1/a".into(), real.clone())).await,
        // --- h2 prior knowledge on the plain listener ---
        10 => h2_on(plain().await, &format!("https://{real}/v1/a"), None).await,
        11 => h2_on(plain().await, &format!("https://{real}/v1/a"), Some(&decoy)).await,
        12 => h2_on(plain().await, &format!("https://{decoy}/v1/a"), Some(&real)).await,
        // --- CONNECT + interception ---
        13 => {
            let tls = w.intercepted(&real, MOCK_HOST, &["http/1.1"]).await?;
            raw_on(tls, &h1("/v1/a".into(), real.clone())).await
        }
        14 => {
            let tls = w.intercepted(&real, MOCK_HOST, &["http/1.1"]).await?;
            raw_on(tls, &h1("/v1/a".into(), decoy.clone())).await
        }
        15 => {
            let tls = w.intercepted(&real, MOCK_HOST, &["http/1.1"]).await?;
            let host = format!("{MOCK_HOST}:{}", w.decoy_tls.port());
            raw_on(tls, &h1("/v1/a".into(), host)).await
        }
        16 => {
            let tls = w.intercepted(&real, MOCK_HOST, &["http/1.1"]).await?;
            raw_on(tls, &h1(format!("https://{decoy}/v1/a"), real.clone())).await
        }
        17 => {
            let tls = w.intercepted(&real, MOCK_HOST, &["http/1.1"]).await?;
            raw_on(tls, &h1(format!("https://{real}/v1/a"), decoy.clone())).await
        }
        18 => w
            .intercepted(&real, DECOY_HOST, &["http/1.1"])
            .await
            .map(|_| 0),
        19 => {
            // Blind tunnel to the decoy, the client believing it talks to the provider.
            let tls = w.intercepted(&decoy, MOCK_HOST, &["http/1.1"]).await?;
            raw_on(tls, &h1("/v1/a".into(), real.clone())).await
        }
        20 => {
            let tls = w.intercepted(&real, MOCK_HOST, &["h2"]).await?;
            h2_on(tls, &format!("https://{real}/v1/a"), None).await
        }
        21 => {
            let tls = w.intercepted(&real, MOCK_HOST, &["h2"]).await?;
            h2_on(tls, &format!("https://{decoy}/v1/a"), None).await
        }
        22 => {
            let tls = w.intercepted(&real, MOCK_HOST, &["h2"]).await?;
            h2_on(tls, &format!("https://{real}/v1/a"), Some(&decoy)).await
        }
        23 => {
            let tls = w.intercepted(&real, MOCK_HOST, &["h2"]).await?;
            h2_on(tls, &format!("https://{decoy}/v1/a"), Some(&real)).await
        }
        24 => {
            // CONNECT whose Host header names the decoy: the authority is the destination.
            let mut s = TcpStream::connect(p).await.unwrap();
            let req = format!("CONNECT {real} HTTP/1.1\r\nHost: {decoy}\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            // A 200 has no body and leaves the tunnel open: read the head only.
            let mut out = Vec::new();
            let mut byte = [0u8; 1];
            while !out.ends_with(b"\r\n\r\n") {
                match tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut byte))
                    .await
                {
                    Ok(Ok(1)) => out.push(byte[0]),
                    _ => break,
                }
            }
            let text = String::from_utf8_lossy(&out).into_owned();
            raw_status(&text).ok_or_else(|| format!("no answer to CONNECT: {text:?}"))
        }
        25 => {
            // http:// to a provider whose upstream is https: the key would travel in clear.
            raw_on(
                plain().await,
                &h1(format!("http://{real}/v1/a"), real.clone()),
            )
            .await
        }
        26 => {
            // Plain HTTP inside a CONNECT tunnel to the https provider.
            let tunnel = connect_tunnel(p, &real)
                .await
                .map_err(|r| format!("CONNECT refused: {}", r.status))?;
            raw_on(tunnel, &h1("/v1/a".into(), real.clone())).await
        }
        _ => unreachable!(),
    }
}

const CASES: &[(&str, Expect)] = &[
    ("h1 absolute URI = Host = provider (control)", Expect::Real),
    ("h1 absolute URI provider, Host decoy", Expect::Refused),
    ("h1 absolute URI decoy, Host provider", Expect::Refused),
    (
        "h1 absolute URI plain decoy, Host provider",
        Expect::Refused,
    ),
    ("h1 absolute URI provider@decoy (userinfo)", Expect::Refused),
    ("h1 two Host headers, provider first", Expect::Refused),
    ("h1 two Host headers, decoy first", Expect::Refused),
    ("h1 Host provider name on another port", Expect::Refused),
    ("route prefix with Host decoy (route decides)", Expect::Real),
    ("route prefix with Host provider (control)", Expect::Real),
    ("h2c :authority provider (control)", Expect::Real),
    ("h2c :authority provider, host decoy", Expect::Refused),
    ("h2c :authority decoy, host provider", Expect::Refused),
    ("intercepted h1 Host provider (control)", Expect::Real),
    ("intercepted h1 Host decoy", Expect::Refused),
    (
        "intercepted h1 Host provider name, other port",
        Expect::Refused,
    ),
    (
        "intercepted h1 absolute URI decoy, Host provider",
        Expect::Refused,
    ),
    (
        "intercepted h1 absolute URI provider, Host decoy",
        Expect::Refused,
    ),
    ("CONNECT provider, SNI decoy", Expect::Refused),
    (
        "CONNECT decoy, SNI provider (blind tunnel)",
        Expect::Refused,
    ),
    ("intercepted h2 :authority provider (control)", Expect::Real),
    ("intercepted h2 :authority decoy", Expect::Refused),
    (
        "intercepted h2 :authority provider, host decoy",
        Expect::Refused,
    ),
    (
        "intercepted h2 :authority decoy, host provider",
        Expect::Refused,
    ),
    ("CONNECT provider with Host header decoy", Expect::Refused),
    (
        "h1 http:// to the https provider (clear text)",
        Expect::Refused,
    ),
    (
        "plain HTTP inside a tunnel to the https provider",
        Expect::Refused,
    ),
];

#[tokio::test]
async fn pool_key_reaches_only_the_provider_upstream_for_every_authority_mismatch() {
    let w = World::new().await;
    let mut failures = Vec::new();
    let mut mismatches = 0;
    for (i, (name, expect)) in CASES.iter().enumerate() {
        let before = w.real.requests().len();
        let outcome = run_case(&w, i).await;
        let real_new: Vec<Recorded> = w.real.requests()[before..].to_vec();
        match expect {
            Expect::Real => {
                let ok = outcome == Ok(200)
                    && real_new.len() == 1
                    && real_new[0].header("authorization") == Some(&*format!("Bearer {CANARY}"));
                if !ok {
                    failures.push(format!(
                        "{name}: expected the key at the provider, got {outcome:?}, {} upstream calls",
                        real_new.len()
                    ));
                }
            }
            Expect::Refused => {
                mismatches += 1;
                // Case 24 answers 200 to a CONNECT for the provider: nothing is sent yet.
                let refused = match outcome {
                    Ok(s) => (400..500).contains(&s) || (i == 24 && s == 200),
                    Err(_) => true,
                };
                if !refused || !real_new.is_empty() {
                    failures.push(format!(
                        "{name}: expected a refusal, got {outcome:?}, {} upstream calls",
                        real_new.len()
                    ));
                }
            }
        }
        for (label, up) in [("TLS decoy", &w.decoy_tls), ("plain decoy", &w.decoy_plain)] {
            if let Some(r) = up.requests().iter().find(|r| carries_canary(r)) {
                failures.push(format!("{name}: the key reached the {label}: {r:?}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
    eprintln!(
        "figure: {} cases ({mismatches} mismatches), 0 key leaks",
        CASES.len()
    );
}

#[tokio::test]
async fn upstream_with_a_bad_certificate_never_receives_the_key() {
    // The proxy trusts `ca`, but the provider's upstream presents a leaf from `wrong`
    // (untrusted) or from `ca` for another name: TLS fails before any request byte.
    let ca = TestCa::new("trusted upstream ca");
    let wrong = TestCa::new("untrusted upstream ca");
    let ok = fixed(200, &[], "ok");
    for (label, leaf) in [
        ("untrusted issuer", wrong.issue(&[MOCK_HOST])),
        ("name mismatch", ca.issue(&["elsewhere.mock.test"])),
    ] {
        let up = MockUpstream::tls(ok.clone(), &leaf).await;
        let cfg = ConfigBuilder::new()
            .resolve(MOCK_HOST, "127.0.0.1")
            .extra_roots(ca.pem_path())
            .provider(
                "mock",
                &[
                    ("hosts", &format!("[{}]", toml_str(MOCK_HOST))),
                    ("route", "\"/mock\""),
                    ("upstream", &toml_str(&up.url_for(MOCK_HOST))),
                ],
            )
            .raw(&format!(
                "[providers.mock.keys]\npool = [{{ id = \"canary\", env = \"{CANARY_ENV}\" }}]\ninject = {{ header = \"x-api-key\" }}\n"
            ))
            .build();
        let proxy = Proxy::start_with_env(&cfg, &[(CANARY_ENV, CANARY)]);
        let r = route(proxy.proxy_addr, "GET", "/mock/v1/a", &[], "").await;
        assert_proxy_error(&r, 502, "error");
        assert!(up.requests().is_empty(), "{label}: a request was delivered");
        let all = format!("{}{}", r.text(), proxy.logs());
        for f in canary_forms() {
            assert!(!all.contains(&f), "{label}: the key appears in {all}");
        }
    }
}

/// Destinations an unmatched request must not reach by default (SPEC §12).
fn private_targets(local_port: u16) -> Vec<String> {
    let mut v: Vec<String> = [
        "127.0.0.1",
        "127.0.0.2",
        "[::1]",
        "0.0.0.0",
        "localhost.mock.test", // resolves to 127.0.0.1 through [proxy.resolve]
        "10.0.0.1",
        "192.168.1.1",
        "172.16.0.1",
        "[fd00::1]",
        "[::ffff:127.0.0.1]",
    ]
    .iter()
    .map(|h| format!("{h}:{local_port}"))
    .collect();
    v.extend(
        [
            "169.254.169.254:80",
            "169.254.169.254:443",
            "[fe80::1]:443",
            "metadata.google.internal.mock.test:80",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    v
}

#[tokio::test]
async fn unmatched_connect_and_forward_to_private_or_metadata_destinations_are_403() {
    // A listener on loopback: the port is in connect_ports, so only the destination check
    // stands between a client and it.
    let canary = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = canary.local_addr().unwrap().port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acc = accepted.clone();
    let accept = tokio::spawn(async move {
        while let Ok((_s, _)) = canary.accept().await {
            acc.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let up = MockUpstream::plain(echo()).await;
    let cfg = mock_config(&up)
        .resolve("localhost.mock.test", "127.0.0.1")
        .resolve("metadata.google.internal.mock.test", "169.254.169.254")
        .proxy("unmatched", "\"tunnel\"")
        .proxy("connect_ports", &format!("[80, 443, {port}]"))
        .build();
    let proxy = Proxy::start(&cfg);

    let mut failures = Vec::new();
    let targets = private_targets(port);
    for target in &targets {
        match connect_tunnel(proxy.proxy_addr, target).await {
            Ok(_) => failures.push(format!("CONNECT {target}: tunnel opened")),
            Err(r) if r.status != 403 => {
                failures.push(format!("CONNECT {target}: {} {:?}", r.status, r.response))
            }
            Err(_) => {}
        }
        let r = raw(
            proxy.proxy_addr,
            format!("GET http://{target}/latest/meta-data/ HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        if raw_status(&r) != Some(403) || !raw_body(&r).contains("\"error\"") {
            failures.push(format!("GET http://{target}/: {r:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the loopback listener got a connection"
    );
    accept.abort();
    eprintln!(
        "figure: {} private/metadata destinations x 2 paths, all 403",
        targets.len()
    );
}

#[tokio::test]
async fn deny_mode_refuses_unmatched_connect_and_forward_and_the_target_sees_nothing() {
    let target = MockUpstream::plain(echo()).await;
    let up = MockUpstream::plain(echo()).await;
    let cfg = mock_config(&up)
        .resolve(DECOY_HOST, "127.0.0.1")
        .proxy("unmatched", "\"deny\"")
        .proxy("allow_private_destinations", "true")
        .proxy("connect_ports", &format!("[443, {}]", target.port()))
        .build();
    let proxy = Proxy::start(&cfg);
    let auth = format!("{DECOY_HOST}:{}", target.port());
    let refused = connect_tunnel(proxy.proxy_addr, &auth).await.unwrap_err();
    assert_eq!(refused.status, 403, "{:?}", refused.response);
    let r = raw(
        proxy.proxy_addr,
        format!("GET http://{auth}/x HTTP/1.1\r\nHost: {auth}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&r), Some(403), "{r:?}");
    // h2 prior knowledge takes the same path.
    let s = TcpStream::connect(proxy.proxy_addr).await.unwrap();
    assert_eq!(h2_on(s, &format!("http://{auth}/x"), None).await, Ok(403));
    target.assert_no_connection_made().await;
}
