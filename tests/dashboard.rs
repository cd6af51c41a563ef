//! The admin dashboard in a real headless browser (Debian's chromium): after traffic, the page
//! renders a card per provider whose numbers match `/status`, and a screenshot is taken.
//! `tests/run.sh` installs chromium; without it this test fails with that instruction.

#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod support;

use std::process::Command;

use bytes::Bytes;
use support::*;

fn chromium() -> String {
    for bin in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {bin}"))
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return bin.to_string();
        }
    }
    panic!("the dashboard test needs a headless browser: run `bash tests/run.sh` (installs Debian's chromium) or `apt-get install chromium`");
}

/// Runs headless chromium on `url` with `extra` flags and returns stdout.
fn browse(bin: &str, profile: &std::path::Path, url: &str, extra: &[&str]) -> String {
    let out = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
            "--window-size=1200,800",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the first element with `class` inside the card's limit `name`.
fn limit_field(dom: &str, name: &str, class: &str) -> Option<String> {
    let start = dom.find(&format!("data-limit=\"{name}\""))?;
    let rest = &dom[start..];
    let at = rest.find(&format!("class=\"{class}\">"))? + class.len() + 9;
    Some(rest[at..].split('<').next()?.to_string())
}

#[tokio::test]
async fn dashboard_renders_providers_matching_status() {
    let bin = chromium();
    let up = MockUpstream::plain(echo()).await;
    let config = mock_config(&up)
        .raw(
            r#"
[[providers.mock.limits]]
name = "rpm"
amount = 4
window = "1m"
[[providers.mock.limits]]
name = "daily"
amount = 1000
window = "day"
warn_at = 0.5
[providers.mock.on_limit]
action = "reject"
"#,
        )
        .build();
    let proxy = Proxy::start(&config);
    for _ in 0..6 {
        route(proxy.proxy_addr, "GET", "/mock/x", &[], Bytes::new()).await;
    }
    let (status, body) = admin_get(proxy.admin_addr, "/status/mock").await;
    assert_eq!(status, 200);
    let status: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
    let limits = status["providers"]["mock"]["limits"]
        .as_array()
        .expect("limits")
        .clone();

    let profile = tempfile::tempdir().expect("profile dir");
    let url = format!("http://{}/", proxy.admin_addr);
    let dom = tokio::task::spawn_blocking({
        let (bin, url, dir) = (bin.clone(), url.clone(), profile.path().to_path_buf());
        move || browse(&bin, &dir, &url, &["--dump-dom"])
    })
    .await
    .expect("browser task");
    assert!(
        dom.contains("data-provider=\"mock\""),
        "no card for provider mock in:\n{dom}"
    );
    for l in &limits {
        let name = l["name"].as_str().expect("name");
        let used =
            limit_field(&dom, name, "used").unwrap_or_else(|| panic!("limit {name} not rendered"));
        let amount = limit_field(&dom, name, "amount").expect("amount rendered");
        assert_eq!(
            used.parse::<f64>().ok(),
            l["used"].as_f64(),
            "used of {name}"
        );
        assert_eq!(
            amount.parse::<f64>().ok(),
            l["amount"].as_f64(),
            "amount of {name}"
        );
    }
    assert_eq!(
        limit_field(&dom, "rpm", "used").as_deref(),
        Some("4"),
        "4 admitted, 2 refused"
    );
    assert!(dom.contains("class=\"red\""), "a spent limit is drawn red");
    assert!(
        dom.contains("rejected <span class=\"rejected\">2</span>"),
        "totals rendered"
    );

    // Keep a screenshot for people to look at (target/dashboard.png).
    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard.png");
    let _ = std::fs::remove_file(&shot);
    // target/ is absent when the build goes elsewhere (CARGO_TARGET_DIR).
    std::fs::create_dir_all(shot.parent().expect("target dir")).expect("target dir created");
    let flag = format!("--screenshot={}", shot.display());
    tokio::task::spawn_blocking({
        let (bin, dir) = (bin.clone(), profile.path().to_path_buf());
        move || browse(&bin, &dir, &url, &[&flag])
    })
    .await
    .expect("browser task");
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG"), "screenshot is a PNG");
}
