//! Secrets never leave (SPEC §6, §12): canary keys go through every path — trace logging in
//! JSON format, query-string injection, 401 / 429 / 502 and proxy refusal bodies, `/metrics`,
//! `/status`, `/history`, and the durable state files — and then ALL captured output is
//! searched for each key in raw, URL-encoded and base64 form. The CA key is created 0600 even
//! under a permissive umask. (`tests/keys.rs` covers header injection with text logs.)
#![allow(clippy::unwrap_used)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

/// (id, env var, secret). Secrets hold `/`, `+` and `=` so their encodings differ.
const KEYS: [(&str, &str, &str); 3] = [
    ("c1", "QPT_SEC_C1", "sk-c1/Qm+9=delta-71ac04be"),
    ("c2", "QPT_SEC_C2", "sk-c2/Rn+4=echo-3b9f12d7"),
    ("c3", "QPT_SEC_C3", "sk-c3/Sp+2=foxtrot-e05c6a99"),
];
const APP_SECRET: &str = "app-own/secret+Zz=golf-8d1e";

fn forms(secret: &str) -> Vec<(&'static str, String)> {
    vec![
        ("raw", secret.to_string()),
        ("url-encoded", url_encode(secret)),
        ("form-encoded", url_encode(secret).replace("%20", "+")),
        ("base64", base64(secret.as_bytes())),
        (
            "base64 of Bearer",
            base64(format!("Bearer {secret}").as_bytes()),
        ),
        // The distinctive tail, in case a secret is cut or re-encoded around it.
        ("tail", secret.rsplit('=').next().unwrap().to_string()),
    ]
}

fn key_of(r: &Recorded) -> Option<&'static str> {
    let q = r.uri.query().unwrap_or("");
    KEYS.iter()
        .find(|(_, _, s)| q.contains(&format!("api_key={}", url_encode(s))))
        .map(|(id, _, _)| *id)
}

/// Every file under `dir`, as lossy text, with its path.
fn read_tree(dir: &Path, out: &mut Vec<(String, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            read_tree(&p, out);
        } else if let Ok(bytes) = std::fs::read(&p) {
            out.push((
                p.display().to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
    }
}

#[tokio::test]
async fn canary_keys_never_appear_in_json_trace_logs_bodies_admin_output_or_state_files() {
    // c1 answers 401 (invalid), c2 429 (cooling), c3 works with usage in the body.
    let h = handler(|r: Recorded| async move {
        match key_of(&r) {
            Some("c1") => response(401, &[], "{\"error\":{\"code\":\"invalid_api_key\"}}"),
            Some("c2") => response(
                429,
                &[("retry-after", "60")],
                "{\"error\":{\"code\":\"rate_limit_exceeded\"}}",
            ),
            _ => response(
                200,
                &[("content-type", "application/json")],
                "{\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":3,\"total_tokens\":5}}",
            ),
        }
    });
    let up = MockUpstream::plain(h).await;
    let pool: Vec<String> = KEYS
        .iter()
        .map(|(id, env, _)| format!("{{ id = \"{id}\", env = \"{env}\" }}"))
        .collect();
    let pool = pool.join(", ");
    // A second provider with the same keys whose upstream is down: its 502 must not echo them.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down_port = closed.local_addr().unwrap().port();
    drop(closed);
    let cfg = mock_provider(&up, &[("signals", "[\"openai\"]")])
        .resolve("down.mock.test", "127.0.0.1")
        .provider(
            "down",
            &[
                ("hosts", "[\"down.mock.test\"]"),
                ("route", "\"/down\""),
                ("upstream", &toml_str(&format!("http://down.mock.test:{down_port}"))),
            ],
        )
        .raw(&format!(
            "[providers.mock.keys]\ninject = {{ query = \"api_key\" }}\nstrategy = \"round_robin\"\npool = [{pool}]\n\
             [providers.down.keys]\ninject = {{ query = \"api_key\" }}\npool = [{pool}]\n"
        ))
        .raw(&limit("rpm", "requests", 4.0, "1m", "provider"))
        .raw(&on_limit("reject", "1s", 10))
        .build()
        .replace(
            "backend = \"memory\"",
            "backend = \"local\"\ndir = \"state\"\nflush_interval = \"100ms\"",
        );
    let mut env: Vec<(&str, &str)> = KEYS.iter().map(|(_, e, s)| (*e, *s)).collect();
    env.push(("QUOTA_PROXY_LOG", "trace"));
    env.push(("QUOTA_PROXY_LOG_FORMAT", "json"));
    let mut proxy = Proxy::start_with_env(&cfg, &env);

    let mut captured = String::new();
    let mut record =
        |r: &Resp| captured.push_str(&format!("{} {:?}\n{}\n", r.status, r.headers, r.text()));
    let app_query = format!("/v1/chat?api_key={}&q=1", url_encode(APP_SECRET));
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let r = forward(
            proxy.proxy_addr,
            "POST",
            &mock_url(&up, &app_query),
            &[("content-type", "application/json")],
            "{\"model\":\"m\",\"max_tokens\":5}",
        )
        .await;
        statuses.push(r.status.as_u16());
        record(&r);
    }
    for _ in 0..2 {
        let r = route(
            proxy.proxy_addr,
            "GET",
            &format!("/down{app_query}"),
            &[],
            "",
        )
        .await;
        statuses.push(r.status.as_u16());
        record(&r);
    }
    // Every path was taken: a success, a proxy 429 and a 502 at least.
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses.contains(&502), "{statuses:?}");
    for id in ["c1", "c2", "c3"] {
        assert!(
            up.requests().iter().any(|r| key_of(r) == Some(id)),
            "{id} was used (401/429/200 paths)"
        );
    }
    // The app's own credential was replaced, never forwarded.
    assert!(up
        .requests()
        .iter()
        .all(|r| !r.uri.to_string().contains(&url_encode(APP_SECRET))));

    let mut places: Vec<(String, String)> = vec![("responses".into(), captured)];
    for path in [
        "/metrics",
        "/status",
        "/status/mock",
        "/history?provider=mock&range=24h",
        "/",
    ] {
        let (status, body) = admin_get(proxy.admin_addr, path).await;
        assert_eq!(status, 200, "{path}: {body}");
        places.push((format!("admin {path}"), body));
    }
    // A clean stop flushes the state files.
    proxy.signal("TERM");
    assert!(proxy
        .wait_exit(Duration::from_secs(20))
        .await
        .is_some_and(|s| s.success()));
    let mut files = Vec::new();
    read_tree(&proxy.dir().join("state"), &mut files);
    assert!(!files.is_empty(), "state files were written");
    places.extend(files);
    let logs = proxy.logs();
    assert!(
        logs.contains("\"level\":\"TRACE\""),
        "JSON trace logging is on"
    );
    assert!(!logs.contains("panicked"), "{logs}");
    places.push(("logs (stdout + stderr)".into(), logs));

    let mut leaks = Vec::new();
    let secrets: Vec<(&str, &str)> = KEYS
        .iter()
        .map(|(id, _, s)| (*id, *s))
        .chain([("app credential", APP_SECRET)])
        .collect();
    for (id, secret) in &secrets {
        for (form, needle) in forms(secret) {
            for (place, text) in &places {
                if text.contains(&needle) {
                    leaks.push(format!("{id} ({form}) in {place}"));
                }
            }
        }
    }
    assert!(leaks.is_empty(), "leaks:\n{}", leaks.join("\n"));
    eprintln!(
        "figure: {} secrets x {} forms x {} places searched, 0 found",
        secrets.len(),
        forms("x").len(),
        places.len()
    );
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Runs the binary under `umask 000` (so only an explicit mode can make a file private).
fn run_umask0(dir: &Path, args: &str) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!("umask 000; exec \"$0\" {args}"))
        .arg(support::proxy::binary())
        .current_dir(dir)
        .env_remove("QUOTA_PROXY_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn ca_key_is_0600_from_ca_init_even_under_umask_000() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_umask0(dir.path(), "ca init --dir certs");
    assert!(out.status.success(), "{out:?}");
    let key = dir.path().join("certs/ca.key");
    assert_eq!(mode(&key), 0o600, "ca.key mode");
    // The key never reaches the output.
    let pem = std::fs::read_to_string(&key).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!body.is_empty());
    for line in pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!printed.contains(line), "a line of the CA key was printed");
    }
    // `--force` re-creation keeps it private too.
    let out = run_umask0(dir.path(), "ca init --dir certs --force");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mode(&key), 0o600, "ca.key mode after --force");
}

#[tokio::test]
async fn ca_key_created_on_first_run_is_0600_even_under_umask_000() {
    let up = MockUpstream::plain(echo()).await;
    let cfg = mock_provider(&up, &[("intercept", "true")]).build();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("quota-proxy.toml"), &cfg).unwrap();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("umask 000; exec \"$0\" run -c quota-proxy.toml")
        .arg(support::proxy::binary())
        .current_dir(dir.path())
        .env_remove("QUOTA_PROXY_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let key = dir.path().join("certs/ca.key");
    let m = eventually("the CA key is created", Duration::from_secs(20), || {
        let key = key.clone();
        async move { std::fs::metadata(&key).ok().map(|_| mode(&key)) }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(m, 0o600, "ca.key mode at first sight");
    assert_eq!(mode(&key), 0o600);
}
