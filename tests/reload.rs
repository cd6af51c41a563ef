//! Config reload by `POST /reload` and SIGHUP: new config in whole, or old config kept.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::*;

fn two_routes(first: &MockUpstream, second: &MockUpstream) -> String {
    mock_config(first)
        .resolve("api.second.test", "127.0.0.1")
        .simple_provider(
            "second",
            "api.second.test",
            &second.url_for("api.second.test"),
        )
        .build()
}

/// A config whose line `line` (1-based) has an unknown key.
fn invalid_config(up: &MockUpstream) -> (String, usize) {
    // The builder ends with the `[providers.mock]` table, so this key lands in it.
    let mut cfg = mock_config(up).build();
    assert!(cfg.ends_with('\n'));
    let line = cfg.lines().count() + 1;
    cfg.push_str("bogus_key = 1\n");
    (cfg, line)
}

async fn reload_metric(proxy: &Proxy, result: &str) -> f64 {
    let (_, m) = admin_get(proxy.admin_addr, "/metrics").await;
    metric_value(
        &m,
        "quota_proxy_config_reloads_total",
        &[&format!("result=\"{result}\"")],
    )
}

#[tokio::test]
async fn post_reload_applies_a_new_route() {
    let first = MockUpstream::plain(echo()).await;
    let second = MockUpstream::plain(fixed(200, &[], "second")).await;
    let proxy = Proxy::start(&mock_config(&first).build());
    assert_eq!(
        route(proxy.proxy_addr, "GET", "/second/v1/x", &[], "")
            .await
            .status,
        404
    );

    proxy.write_config(&two_routes(&first, &second));
    let (status, body) = admin_post(proxy.admin_addr, "/reload", "").await;

    assert_eq!(status, 200, "{body}");
    let resp = route(proxy.proxy_addr, "GET", "/second/v1/x", &[], "").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "second");
    assert_eq!(second.single_request().path_and_query(), "/v1/x");
    assert_eq!(
        route(proxy.proxy_addr, "GET", "/mock/v1/y", &[], "")
            .await
            .status,
        200
    );
    assert!(reload_metric(&proxy, "ok").await >= 1.0);
}

#[tokio::test]
async fn post_reload_of_invalid_file_is_400_with_position_and_keeps_old_config() {
    let up = MockUpstream::plain(echo()).await;
    let proxy = Proxy::start(&mock_config(&up).build());
    let (bad, line) = invalid_config(&up);

    proxy.write_config(&bad);
    let (status, body) = admin_post(proxy.admin_addr, "/reload", "").await;

    assert_eq!(status, 400, "{body}");
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    let message = v["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error.message in {v}"));
    assert!(
        message.contains(&format!("quota-proxy.toml:{line}:")),
        "message should name quota-proxy.toml:{line}:COL, got {message:?}"
    );
    assert!(
        message.contains("bogus_key"),
        "message should name the unknown key: {message:?}"
    );
    let resp = route(proxy.proxy_addr, "GET", "/mock/v1/still", &[], "").await;
    assert_eq!(resp.status, 200, "old config must keep serving");
    assert!(reload_metric(&proxy, "error").await >= 1.0);
    assert_eq!(reload_metric(&proxy, "ok").await, 0.0);
}

#[tokio::test]
async fn sighup_reloads_and_keeps_old_config_on_error() {
    let first = MockUpstream::plain(echo()).await;
    let second = MockUpstream::plain(fixed(200, &[], "second")).await;
    let proxy = Proxy::start(&mock_config(&first).build());

    proxy.write_config(&two_routes(&first, &second));
    proxy.signal("HUP");
    eventually(
        "SIGHUP applied the new route",
        Duration::from_secs(5),
        || async {
            let r = route(proxy.proxy_addr, "GET", "/second/v1/x", &[], "").await;
            (r.status == 200).then_some(())
        },
    )
    .await;
    eventually("reload counted ok", Duration::from_secs(5), || async {
        (reload_metric(&proxy, "ok").await >= 1.0).then_some(())
    })
    .await;

    let (bad, _) = invalid_config(&first);
    proxy.write_config(&bad);
    proxy.signal("HUP");
    eventually("reload counted error", Duration::from_secs(5), || async {
        (reload_metric(&proxy, "error").await >= 1.0).then_some(())
    })
    .await;
    assert_eq!(
        route(proxy.proxy_addr, "GET", "/second/v1/z", &[], "")
            .await
            .status,
        200,
        "last good config keeps serving"
    );
    assert_eq!(
        route(proxy.proxy_addr, "GET", "/mock/v1/z", &[], "")
            .await
            .status,
        200
    );
    assert_eq!(admin_get(proxy.admin_addr, "/healthz").await.0, 200);
}

#[tokio::test]
async fn a_reload_applies_to_the_next_request_of_a_kept_alive_connection() {
    // The connection's remembered destination belongs to the config it was found under.
    let up = MockUpstream::plain(fixed(200, &[], "ok")).await;
    let other = MockUpstream::plain(fixed(200, &[], "other")).await;
    let proxy = Proxy::start(&mock_config(&up).build());
    let mut conn = open_h1(proxy.proxy_addr).await.unwrap();
    let url = mock_url(&up, "/v1/x");
    for _ in 0..2 {
        let resp = send_on(&mut conn, build_request("GET", &url, &[], ""))
            .await
            .unwrap();
        assert_eq!(resp.status, 200, "{}", resp.text());
    }

    // Now nothing matches the mock host, and unmatched traffic is denied.
    let cfg = ConfigBuilder::new()
        .proxy("unmatched", "\"deny\"")
        .resolve("api.other.test", "127.0.0.1")
        .simple_provider("other", "api.other.test", &other.url_for("api.other.test"))
        .build();
    proxy.write_config(&cfg);
    let (status, body) = admin_post(proxy.admin_addr, "/reload", "").await;
    assert_eq!(status, 200, "{body}");

    let resp = send_on(&mut conn, build_request("GET", &url, &[], ""))
        .await
        .unwrap();
    assert_error_saying(&resp, 403, "not a configured provider");
    assert_eq!(up.requests().len(), 2);
}
