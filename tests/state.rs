//! Durable local state through the real binary: a restart inside a window continues the count,
//! a SIGKILL loses at most one flush interval (again and again, never a corrupt file), key
//! states survive, and a corrupt state file stops the start instead of reading as zero.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use support::*;

fn config(up: &MockUpstream, state_dir: &Path, extra: &str) -> String {
    let state = format!(
        "backend = \"local\"\ndir = {}\nflush_interval = \"100ms\"",
        toml_str(&state_dir.display().to_string())
    );
    mock_config(up)
        .raw(extra)
        .build()
        .replace("backend = \"memory\"", &state)
}

const LIMITS: &str = r#"
[[providers.mock.limits]]
name = "rpm"
amount = 1000
window = "1h"
[[providers.mock.limits]]
name = "daily"
amount = 1000
window = "day"
timezone = "Europe/Berlin"
[providers.mock.on_limit]
action = "reject"
"#;

async fn calls(proxy: &Proxy, n: usize) {
    for _ in 0..n {
        let r = route(proxy.proxy_addr, "GET", "/mock/x", &[], Bytes::new()).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

#[tokio::test]
async fn a_clean_restart_inside_the_window_continues_the_count() {
    let up = MockUpstream::plain(echo()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&up, dir.path(), LIMITS);
    let mut proxy = Proxy::start(&cfg);
    calls(&proxy, 3).await;
    proxy.signal("TERM");
    assert!(proxy
        .wait_exit(Duration::from_secs(10))
        .await
        .is_some_and(|s| s.success()));

    let proxy = Proxy::start(&cfg);
    assert_eq!(
        limit_used(proxy.admin_addr, "rpm").await,
        3.0,
        "a clean stop loses nothing"
    );
    assert_eq!(limit_used(proxy.admin_addr, "daily").await, 3.0);
    calls(&proxy, 2).await;
    assert_eq!(limit_used(proxy.admin_addr, "daily").await, 5.0);
    let (_, history) = admin_get(proxy.admin_addr, "/history?provider=mock&range=1h").await;
    assert!(
        history.contains("\"requests\":5"),
        "history survives too: {history}"
    );
}

#[tokio::test]
async fn sigkill_loses_at_most_one_flush_interval_every_time() {
    let up = MockUpstream::plain(echo()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&up, dir.path(), LIMITS);
    let mut total = 0.0;
    for round in 0..8 {
        let mut proxy = Proxy::start(&cfg);
        assert_eq!(
            limit_used(proxy.admin_addr, "rpm").await,
            total,
            "round {round}: restored count"
        );
        calls(&proxy, 2).await;
        total += 2.0;
        // Past one flush interval, the calls must be on disk.
        let path = dir.path().join("state.json");
        let want = format!("\"requests\":{}", total as u64);
        eventually(
            "the calls reach the state file",
            Duration::from_secs(5),
            || {
                let saved = std::fs::read_to_string(&path).is_ok_and(|t| t.contains(&want));
                async move { saved.then_some(()) }
            },
        )
        .await;
        proxy.signal("KILL");
        proxy.wait_exit(Duration::from_secs(5)).await;
    }
    let proxy = Proxy::start(&cfg);
    assert_eq!(limit_used(proxy.admin_addr, "rpm").await, total);
    assert_eq!(up.requests().len(), total as usize);
}

#[tokio::test]
async fn key_states_survive_a_restart() {
    let up = MockUpstream::plain(fixed(
        429,
        &[("retry-after", "600")],
        "{\"error\":{\"code\":\"rate_limit_exceeded\"}}",
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let extra = "[providers.mock.keys]\npool = [{ id = \"only\", env = \"STATE_KEY\" }]\n[providers.mock.on_limit]\naction = \"reject\"\n";
    let cfg = config(&up, dir.path(), extra);
    let env = [("STATE_KEY", "sk-state-secret")];
    let mut proxy = Proxy::start_with_env(&cfg, &env);
    let r = route(proxy.proxy_addr, "GET", "/mock/x", &[], Bytes::new()).await;
    assert_eq!(r.status, 429);
    proxy.signal("TERM");
    proxy.wait_exit(Duration::from_secs(10)).await;
    let text = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
    assert!(
        !text.contains("sk-state-secret"),
        "no secret in the state file"
    );

    let proxy = Proxy::start_with_env(&cfg, &env);
    let (_, body) = admin_get(proxy.admin_addr, "/status/mock").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["providers"]["mock"]["keys"][0]["state"], "cooling",
        "{body}"
    );
    let r = route(proxy.proxy_addr, "GET", "/mock/x", &[], Bytes::new()).await;
    assert_eq!(r.status, 429);
    assert_eq!(
        r.json()["error"]["code"],
        "keys",
        "the cooling key is not used after the restart"
    );
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn a_corrupt_state_file_stops_the_start() {
    let up = MockUpstream::plain(echo()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&up, dir.path(), LIMITS);
    let path = dir.path().join("state.json");
    for garbage in ["not json at all", "{\"format\":\"quota-proxy-state\",\"version\":1,\"checksum\":\"sha256:00\",\"payload\":{}}", ""] {
        std::fs::write(&path, garbage).unwrap();
        let cfg_path = dir.path().join("c.toml");
        std::fs::write(&cfg_path, &cfg).unwrap();
        let out = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::process::Command::new(env!("CARGO_BIN_EXE_quota-proxy")).arg("run").arg("-c").arg(&cfg_path).output(),
        )
        .await
        .expect("a corrupt state file must stop the start, not hang")
        .unwrap();
        assert!(!out.status.success());
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stdout.contains("listening"), "never announced ready: {stdout}");
        assert!(stderr.contains("state.json"), "names the file: {stderr}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), garbage, "the file is left untouched");
    }
}
