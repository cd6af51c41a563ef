//! Transparent retry limits: a body larger than `retry.max_body` is not replayed, and the
//! response says so; a small one is retried on another key.
#![allow(clippy::unwrap_used)]

mod support;

use support::*;

async fn setup(max_body: usize) -> (MockUpstream, Proxy) {
    // Key k1 is always refused with 429; k2 works.
    let h = handler(|req| async move {
        let auth = req.header("authorization").unwrap_or("").to_string();
        if auth.ends_with("key-one") {
            response(
                429,
                &[("retry-after", "30")],
                "{\"error\":{\"code\":\"rate_limit_exceeded\"}}",
            )
        } else {
            response(200, &[], "ok")
        }
    });
    let up = MockUpstream::plain(h).await;
    let cfg = mock_config(&up)
        .raw(&format!(
            r#"
[providers.mock.keys]
strategy = "fill_first"
pool = [{{ id = "k1", env = "RETRY_K1" }}, {{ id = "k2", env = "RETRY_K2" }}]
[providers.mock.retry]
on = [429]
max_body = {max_body}
"#
        ))
        .build();
    let proxy = Proxy::start_with_env(&cfg, &[("RETRY_K1", "key-one"), ("RETRY_K2", "key-two")]);
    (up, proxy)
}

#[tokio::test]
async fn small_bodies_are_retried_on_another_key() {
    let (up, proxy) = setup(1024).await;
    let resp = route(proxy.proxy_addr, "POST", "/mock/v1/x", &[], "small body").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-quota-proxy-key"), Some("k2"));
    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter().all(|r| r.body_text() == "small body"),
        "the replayed body is identical"
    );
}

#[tokio::test]
async fn large_bodies_are_not_replayed_and_the_response_says_so() {
    let (up, proxy) = setup(16).await;
    let body = "x".repeat(100);
    let resp = route(proxy.proxy_addr, "POST", "/mock/v1/x", &[], body.clone()).await;
    assert_eq!(resp.status, 429, "the upstream's own answer");
    assert!(
        resp.header("x-quota-proxy").is_none(),
        "not a proxy-made response"
    );
    assert!(resp
        .header("x-quota-proxy-retry")
        .is_some_and(|v| v.contains("retry.max_body")));
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_text(), body);
}
