//! Key pools end to end (SPEC §6, §7, §8): rotation, replacement of the app's credential,
//! cooling on upstream 429, invalid keys, out-of-credit keys, learned limits, query injection,
//! the no-pool pass-through, start-up validation, and secrets never leaking.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(5);

/// (id, env var, secret). Secrets hold characters that URL- and base64-encode differently.
const KEYS: [(&str, &str, &str); 3] = [
    ("k1", "QPT_KEYS_K1", "sk-k1/Zq+7=alpha-5f2b8c1d"),
    ("k2", "QPT_KEYS_K2", "sk-k2/Wx+3=bravo-9e4a7b20"),
    ("k3", "QPT_KEYS_K3", "sk-k3/Vy+1=charlie-c81d3f6e"),
];

const APP_SECRET: &str = "app-own-credential-Q8w1";

fn pool_toml(n: usize, inject: &str, strategy: &str) -> String {
    let pool: Vec<String> = KEYS[..n]
        .iter()
        .map(|(id, env, _)| format!("{{ id = \"{id}\", env = \"{env}\" }}"))
        .collect();
    format!(
        "[providers.mock.keys]\ninject = {inject}\nstrategy = \"{strategy}\"\npool = [{}]\n",
        pool.join(", ")
    )
}

const BEARER: &str = "{ header = \"authorization\", format = \"Bearer {key}\" }";

fn key_env(n: usize) -> Vec<(&'static str, &'static str)> {
    KEYS[..n].iter().map(|(_, env, v)| (*env, *v)).collect()
}

/// The pool key id the upstream got (by `Authorization: Bearer <secret>`), if any.
fn key_id_of(r: &Recorded) -> Option<&'static str> {
    let v = r.header("authorization")?.strip_prefix("Bearer ")?;
    KEYS.iter().find(|(_, _, s)| *s == v).map(|(id, _, _)| *id)
}

/// An upstream answering `bad(id)` for the key ids it lists (first use only when `once`),
/// and 200 otherwise.
fn per_key(
    bad: &'static str,
    once: bool,
    status: u16,
    headers: &'static [(&str, &str)],
    body: &'static str,
) -> Handler {
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    handler(move |r: Recorded| {
        let hit = key_id_of(&r) == Some(bad)
            && !(once && seen.swap(true, std::sync::atomic::Ordering::SeqCst));
        async move {
            if hit {
                response(status, headers, body)
            } else {
                response(
                    200,
                    &[("content-type", "application/json")],
                    "{\"ok\":true}",
                )
            }
        }
    })
}

async fn call(proxy: &Proxy, up: &MockUpstream, headers: &[(&str, &str)]) -> Resp {
    forward(
        proxy.proxy_addr,
        "GET",
        &mock_url(up, "/v1/models"),
        headers,
        "",
    )
    .await
}

fn upstream_keys(up: &MockUpstream) -> Vec<Option<&'static str>> {
    up.requests().iter().map(key_id_of).collect()
}

fn count_key(up: &MockUpstream, id: &str) -> usize {
    upstream_keys(up).iter().filter(|k| **k == Some(id)).count()
}

#[tokio::test]
async fn round_robin_rotates_keys_and_replaces_the_apps_credential() {
    let up = MockUpstream::plain(fixed(200, &[], "ok")).await;
    let cfg = mock_provider(&up, &[])
        .raw(&pool_toml(3, BEARER, "round_robin"))
        .build();
    let proxy = Proxy::start_with_env(&cfg, &key_env(3));
    let auth = format!("Bearer {APP_SECRET}");

    let mut labels = Vec::new();
    for _ in 0..6 {
        let r = call(&proxy, &up, &[("authorization", &auth)]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        labels.push(r.header("x-quota-proxy-key").map(str::to_string));
    }

    let seen = upstream_keys(&up);
    assert!(
        seen.iter().all(Option::is_some),
        "every call carried a pool key: {:?}",
        up.requests()
    );
    let mut counts = BTreeMap::new();
    for k in seen.iter().flatten() {
        *counts.entry(*k).or_insert(0) += 1;
    }
    assert_eq!(
        counts,
        BTreeMap::from([("k1", 2), ("k2", 2), ("k3", 2)]),
        "round robin over 3 keys; sequence {seen:?}"
    );
    for w in seen.windows(2) {
        assert_ne!(w[0], w[1], "the same key twice in a row: {seen:?}");
    }
    let seen_labels: Vec<Option<String>> = seen.iter().map(|k| k.map(str::to_string)).collect();
    assert_eq!(
        labels, seen_labels,
        "x-quota-proxy-key names the key the upstream got"
    );
    for r in up.requests() {
        for (name, v) in &r.headers {
            assert!(
                !v.to_str().unwrap_or("").contains(APP_SECRET),
                "the app's credential reached the upstream in {name}"
            );
        }
        assert_eq!(r.headers.get_all("authorization").iter().count(), 1);
    }
}

#[tokio::test]
async fn key_answering_429_cools_and_the_call_is_retried_on_another_key() {
    let up = MockUpstream::plain(per_key(
        "k2",
        false,
        429,
        &[("retry-after", "30")],
        "{\"error\":{\"code\":\"rate_limit_exceeded\"}}",
    ))
    .await;
    let cfg = mock_provider(&up, &[])
        .raw(&pool_toml(3, BEARER, "round_robin"))
        .build();
    let proxy = Proxy::start_with_env(&cfg, &key_env(3));

    for i in 0..6 {
        let r = call(&proxy, &up, &[]).await;
        assert_eq!(r.status, 200, "call {i} must be absorbed: {}", r.text());
        assert_ne!(r.header("x-quota-proxy-key"), Some("k2"));
        assert!(r.header("x-quota-proxy-key").is_some());
    }
    assert_eq!(
        count_key(&up, "k2"),
        1,
        "k2 was tried once, then avoided while cooling: {:?}",
        upstream_keys(&up)
    );
    assert_eq!(up.requests().len(), 7, "6 calls + 1 retry");
    eventually("retries_total counts the retry", WAIT, || async {
        let m = metrics_text(proxy.admin_addr).await;
        (metric_value(&m, "quota_proxy_retries_total", &["provider=\"mock\""]) >= 1.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn key_answering_401_becomes_invalid_and_is_avoided() {
    let up = MockUpstream::plain(per_key(
        "k2",
        false,
        401,
        &[("content-type", "application/json")],
        "{\"error\":{\"code\":\"invalid_api_key\"}}",
    ))
    .await;
    let cfg = mock_provider(&up, &[])
        .raw(&pool_toml(3, BEARER, "round_robin"))
        .build();
    let proxy = Proxy::start_with_env(&cfg, &key_env(3));

    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(call(&proxy, &up, &[]).await.status.as_u16());
    }
    assert_eq!(
        count_key(&up, "k2"),
        1,
        "k2 used once, then never again: {:?}",
        upstream_keys(&up)
    );
    assert!(
        statuses.iter().filter(|s| **s != 200).count() <= 1,
        "only the call that hit k2 may fail: {statuses:?}"
    );
    assert_eq!(*statuses.last().unwrap(), 200);
}

#[tokio::test]
async fn insufficient_quota_marks_the_key_out_of_credit() {
    let up = MockUpstream::plain(per_key(
        "k2",
        false,
        429,
        &[("content-type", "application/json")],
        "{\"error\":{\"message\":\"You exceeded your current quota\",\"type\":\"insufficient_quota\",\"code\":\"insufficient_quota\"}}",
    ))
    .await;
    let cfg = mock_provider(&up, &[("signals", "[\"openai\"]")])
        .raw(&pool_toml(3, BEARER, "round_robin"))
        .build();
    let proxy = Proxy::start_with_env(&cfg, &key_env(3));

    for i in 0..8 {
        let r = call(&proxy, &up, &[]).await;
        assert_eq!(r.status, 200, "call {i}: {}", r.text());
    }
    assert_eq!(
        count_key(&up, "k2"),
        1,
        "k2 is out of credit after its first answer: {:?}",
        upstream_keys(&up)
    );
}

#[tokio::test]
async fn openai_remaining_zero_headers_stop_the_key_until_reset() {
    let h = handler(|r: Recorded| async move {
        if key_id_of(&r) == Some("k1") {
            response(
                200,
                &[
                    ("x-ratelimit-limit-requests", "3"),
                    ("x-ratelimit-remaining-requests", "0"),
                    ("x-ratelimit-reset-requests", "30s"),
                ],
                "{}",
            )
        } else {
            response(200, &[], "{}")
        }
    });
    let up = MockUpstream::plain(h).await;
    let cfg = mock_provider(&up, &[("signals", "[\"openai\"]")])
        .raw(&pool_toml(2, BEARER, "round_robin"))
        .build();
    let proxy = Proxy::start_with_env(&cfg, &key_env(2));

    for _ in 0..6 {
        assert_eq!(call(&proxy, &up, &[]).await.status, 200);
    }
    assert_eq!(
        count_key(&up, "k1"),
        1,
        "k1 said remaining 0 (reset 30s) and must not be used again: {:?}",
        upstream_keys(&up)
    );
}

#[tokio::test]
async fn all_keys_cooling_in_reject_mode_is_429_keys() {
    let up = MockUpstream::plain(fixed(
        429,
        &[("retry-after", "30")],
        "{\"error\":{\"code\":\"rate_limit_exceeded\"}}",
    ))
    .await;
    let cfg = mock_provider(&up, &[])
        .raw(&pool_toml(2, BEARER, "round_robin"))
        .raw(&on_limit("reject", "10s", 100))
        .build();
    let proxy = Proxy::start_with_env(&cfg, &key_env(2));

    let first = call(&proxy, &up, &[]).await;
    assert_eq!(first.status, 429, "{}", first.text());
    let after_first = up.requests().len();
    assert_eq!(count_key(&up, "k1"), 1, "{:?}", upstream_keys(&up));
    assert_eq!(count_key(&up, "k2"), 1, "{:?}", upstream_keys(&up));

    let r = call(&proxy, &up, &[]).await;
    let (err, secs) = assert_quota_429(&r, "keys", "mock");
    assert!(
        (1..=31).contains(&secs),
        "retry-after {secs} vs the keys' 30 s: {err}"
    );
    assert_eq!(
        up.requests().len(),
        after_first,
        "no key was usable, nothing sent"
    );
}

#[tokio::test]
async fn upstream_429_that_cannot_be_absorbed_reaches_the_app_unchanged() {
    let body =
        "{\"error\":{\"code\":\"rate_limit_exceeded\",\"message\":\"upstream says slow down\"}}";
    let up = MockUpstream::plain(fixed(
        429,
        &[
            ("retry-after", "30"),
            ("x-upstream-marker", "m-1"),
            ("content-type", "application/json"),
        ],
        body,
    ))
    .await;
    let cfg = mock_provider(&up, &[])
        .raw(&pool_toml(1, BEARER, "round_robin"))
        .raw(&on_limit("reject", "5s", 100))
        .build();
    let proxy = Proxy::start_with_env(&cfg, &key_env(1));

    let r = call(&proxy, &up, &[]).await;

    assert_eq!(r.status, 429);
    assert_eq!(
        r.text(),
        body,
        "the upstream's 429 body reaches the app; headers {:?}",
        r.headers
    );
    assert_eq!(r.header("x-upstream-marker"), Some("m-1"));
    assert_eq!(r.header("retry-after"), Some("30"));
    assert_ne!(r.header("x-quota-proxy"), Some("rejected"));
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn upstream_429_without_pool_beyond_the_budget_reaches_the_app_unchanged() {
    let body = "{\"error\":{\"code\":\"rate_limit_exceeded\"}}";
    let up = MockUpstream::plain(fixed(
        429,
        &[("retry-after", "30"), ("x-upstream-marker", "m-2")],
        body,
    ))
    .await;
    let cfg = mock_provider(&up, &[])
        .raw(&on_limit("delay", "5s", 100))
        .build();
    let proxy = Proxy::start(&cfg);

    let r = call(&proxy, &up, &[("authorization", "Bearer app-xyz")]).await;

    assert_eq!(r.status, 429);
    assert_eq!(r.text(), body);
    assert_eq!(r.header("x-upstream-marker"), Some("m-2"));
    assert_eq!(
        up.requests().len(),
        1,
        "Retry-After 30 s exceeds the 5 s budget: no retry"
    );
}

#[tokio::test]
async fn without_a_pool_the_app_credential_passes_and_is_named_by_hash() {
    let up = MockUpstream::plain(fixed(200, &[], "ok")).await;
    let cfg = mock_provider(&up, &[]).build();
    let proxy = Proxy::start(&cfg);
    let auth = format!("Bearer {APP_SECRET}");

    let r = call(&proxy, &up, &[("authorization", &auth)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        up.single_request().header("authorization"),
        Some(auth.as_str())
    );
    let label = r
        .header("x-quota-proxy-key")
        .unwrap_or_else(|| panic!("no x-quota-proxy-key: {:?}", r.headers));
    let hex = label
        .strip_prefix("cred-")
        .unwrap_or_else(|| panic!("label {label:?} is not cred-<hex>"));
    assert_eq!(hex.len(), 12, "{label}");
    assert!(hex.chars().all(|c| c.is_ascii_hexdigit()), "{label}");
    assert!(!label.contains(APP_SECRET));
    // The same credential gets the same label; another gets another.
    let again = call(&proxy, &up, &[("authorization", &auth)]).await;
    assert_eq!(again.header("x-quota-proxy-key"), Some(label));
    let other = call(&proxy, &up, &[("authorization", "Bearer someone-else")]).await;
    assert_ne!(other.header("x-quota-proxy-key"), Some(label));
}

#[tokio::test]
async fn query_injection_replaces_the_apps_api_key_parameter() {
    let up = MockUpstream::plain(fixed(200, &[], "ok")).await;
    let cfg = mock_provider(&up, &[])
        .raw(&pool_toml(1, "{ query = \"apiKey\" }", "round_robin"))
        .build();
    let proxy = Proxy::start_with_env(&cfg, &key_env(1));

    let r = forward(
        proxy.proxy_addr,
        "GET",
        &mock_url(&up, &format!("/v4/sports?apiKey={APP_SECRET}&regions=us")),
        &[],
        "",
    )
    .await;

    assert_eq!(r.status, 200, "{}", r.text());
    let rec = up.single_request();
    let pq = rec.path_and_query();
    assert!(!pq.contains(APP_SECRET), "app key still in {pq}");
    let query = pq.split_once('?').map(|(_, q)| q).unwrap_or("");
    let pairs: Vec<(&str, &str)> = query.split('&').filter_map(|p| p.split_once('=')).collect();
    let keys: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| *k == "apiKey")
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(
        keys,
        vec![url_encode(KEYS[0].2).as_str()],
        "one apiKey, the pool's: {pq}"
    );
    assert!(pairs.contains(&("regions", "us")), "{pq}");
    assert_eq!(r.header("x-quota-proxy-key"), Some("k1"));
}

#[test]
fn check_with_a_missing_key_env_var_names_the_key_not_any_value() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ConfigBuilder::new()
        .resolve(MOCK_HOST, "127.0.0.1")
        .simple_provider("mock", MOCK_HOST, "http://api.mock.test:9")
        .raw(
            "[providers.mock.keys]\npool = [{ id = \"present-key\", env = \"QPT_CHECK_PRESENT\" }, { id = \"absent-key\", env = \"QPT_CHECK_ABSENT_7f3a\" }]\n",
        )
        .build();
    let file = dir.path().join("q.toml");
    std::fs::write(&file, cfg).unwrap();
    let secret = "sk-present/Value+9=xyz";

    let out = run_cli_with_env(
        &["check", "-c", file.to_str().unwrap()],
        dir.path(),
        &[("QPT_CHECK_PRESENT", secret)],
    );

    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("absent-key"), "names the key id: {text}");
    assert!(!text.contains(secret), "leaks a key value: {text}");
    assert!(!text.contains(&url_encode(secret)), "{text}");
    assert!(!text.contains(&base64(secret.as_bytes())), "{text}");
}

#[tokio::test]
async fn key_values_never_appear_in_trace_logs_metrics_or_error_bodies() {
    // k1 answers 429 (cooling), k2 401 (invalid), k3 works: every key is used and changes state.
    let h = handler(|r: Recorded| async move {
        match key_id_of(&r) {
            Some("k1") => response(
                429,
                &[("retry-after", "30")],
                "{\"error\":{\"code\":\"rate_limit_exceeded\"}}",
            ),
            Some("k2") => response(401, &[], "{\"error\":{\"code\":\"invalid_api_key\"}}"),
            _ => response(
                200,
                &[("content-type", "application/json")],
                "{\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}",
            ),
        }
    });
    let up = MockUpstream::plain(h).await;
    let cfg = mock_provider(&up, &[("signals", "[\"openai\"]")])
        .raw(&pool_toml(3, BEARER, "round_robin"))
        .raw(&limit("rpm", "requests", 6.0, "1m", "key"))
        .raw(&on_limit("reject", "5s", 100))
        .build();
    let mut env = key_env(3);
    env.push(("QUOTA_PROXY_LOG", "trace"));
    let proxy = Proxy::start_with_env(&cfg, &env);

    let mut bodies = String::new();
    for _ in 0..8 {
        let r = forward(
            proxy.proxy_addr,
            "POST",
            &mock_url(&up, "/v1/chat/completions"),
            &[
                ("content-type", "application/json"),
                ("authorization", "Bearer app-cred"),
            ],
            "{\"model\":\"m\",\"max_tokens\":5}",
        )
        .await;
        bodies.push_str(&format!("{:?}\n{}\n", r.headers, r.text()));
    }
    // A refusal body (k3's rpm runs out, others are unusable).
    for _ in 0..6 {
        let r = call(&proxy, &up, &[]).await;
        bodies.push_str(&format!("{:?}\n{}\n", r.headers, r.text()));
    }
    assert!(
        bodies.contains("quota_exceeded"),
        "expected at least one refusal: {bodies}"
    );
    for id in ["k1", "k2", "k3"] {
        assert!(
            count_key(&up, id) >= 1,
            "{id} was used: {:?}",
            upstream_keys(&up)
        );
    }
    let metrics = metrics_text(proxy.admin_addr).await;
    let (_, status) = admin_get(proxy.admin_addr, "/status").await;
    let logs = proxy.logs();
    assert!(logs.contains("TRACE"), "trace logging is on");

    for (id, _, secret) in KEYS {
        for (form, needle) in [
            ("raw", secret.to_string()),
            ("url-encoded", url_encode(secret)),
            ("base64", base64(secret.as_bytes())),
            (
                "base64 of the header value",
                base64(format!("Bearer {secret}").as_bytes()),
            ),
            ("secret body", secret.split('/').nth(1).unwrap().to_string()),
        ] {
            for (place, text) in [
                ("logs", &logs),
                ("metrics", &metrics),
                ("/status", &status),
                ("responses", &bodies),
            ] {
                assert!(
                    !text.contains(&needle),
                    "key {id} ({form}) appears in {place}"
                );
            }
        }
    }
}

#[tokio::test]
async fn single_key_429_is_retried_on_the_same_key_after_retry_after_within_the_budget() {
    // The only key answers its first call 429 with Retry-After 1, then 200.
    let up = MockUpstream::plain(per_key(
        "k1",
        true,
        429,
        &[("retry-after", "1")],
        "{\"error\":{\"code\":\"rate_limit_exceeded\"}}",
    ))
    .await;
    let cfg = mock_provider(&up, &[])
        .raw(&pool_toml(1, BEARER, "round_robin"))
        .raw(&on_limit("delay", "10s", 100))
        .build();
    let proxy = Proxy::start_with_env(&cfg, &key_env(1));

    let r = call(&proxy, &up, &[]).await;

    assert_eq!(r.status, 200, "absorbed by waiting 1 s: {}", r.text());
    assert_eq!(r.header("x-quota-proxy-key"), Some("k1"));
    let reqs = up.wait_requests(2, WAIT).await;
    assert_eq!(reqs.len(), 2, "one 429, one retry");
    let delayed: u64 = r
        .header("x-quota-proxy-delayed-ms")
        .unwrap_or_else(|| panic!("a call that waited for its key says so: {:?}", r.headers))
        .parse()
        .unwrap();
    assert!(delayed >= 500, "waited about the Retry-After: {delayed} ms");
}

/// A key whose key-scope calendar limit is spent shows as `exhausted` until the window resets
/// (in `/status` and `quota_proxy_key_state`), and calls go to the other key.
#[tokio::test]
async fn a_key_with_its_daily_limit_spent_is_exhausted() {
    let up = MockUpstream::plain(echo()).await;
    let cfg = mock_config(&up)
        .raw(
            r#"
[providers.mock.keys]
strategy = "fill_first"
pool = [{ id = "first", env = "EXH_K1" }, { id = "second", env = "EXH_K2" }]
[[providers.mock.limits]]
name = "per-key-daily"
amount = 2
window = "day"
scope = "key"
"#,
        )
        .build();
    let proxy = Proxy::start_with_env(&cfg, &[("EXH_K1", "k-one"), ("EXH_K2", "k-two")]);
    let mut used = Vec::new();
    for _ in 0..3 {
        let r = route(proxy.proxy_addr, "GET", "/mock/x", &[], bytes::Bytes::new()).await;
        assert_eq!(r.status, 200);
        used.push(r.header("x-quota-proxy-key").unwrap().to_string());
    }
    assert_eq!(used, ["first", "first", "second"]);
    let (_, body) = admin_get(proxy.admin_addr, "/status/mock").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let keys = &v["providers"]["mock"]["keys"];
    assert_eq!(keys[0]["state"], "exhausted", "{body}");
    assert!(
        keys[0]["until"].is_string(),
        "exhausted until the day resets: {body}"
    );
    assert_eq!(keys[1]["state"], "active");
    let (_, metrics) = admin_get(proxy.admin_addr, "/metrics").await;
    assert!(
        metrics.contains(
            "quota_proxy_key_state{provider=\"mock\",key=\"first\",state=\"exhausted\"} 1"
        ),
        "{metrics}"
    );
}

/// An unreachable upstream is named by its authority only: the app's own query credential
/// never reaches the 502 body or the logs.
#[tokio::test]
async fn upstream_errors_never_echo_a_query_credential() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let cfg = ConfigBuilder::new()
        .provider(
            "odds",
            &[
                ("route", "\"/odds\""),
                ("upstream", &toml_str(&format!("http://127.0.0.1:{port}"))),
            ],
        )
        .raw("[providers.odds.keys]\ninject = { query = \"apiKey\" }\n")
        .build();
    let proxy = Proxy::start(&cfg);
    let secret = "app-query-secret-42";
    let r = route(
        proxy.proxy_addr,
        "GET",
        &format!("/odds/v4/sports?apiKey={secret}"),
        &[],
        bytes::Bytes::new(),
    )
    .await;
    assert_proxy_error(&r, 502, "error");
    assert!(!r.text().contains(secret), "502 body: {}", r.text());
    assert!(!proxy.logs().contains(secret), "logs leak the credential");
}
