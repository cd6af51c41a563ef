//! Faults (SPEC §8, §11): an upstream resetting mid-body or answering 5xx, Redis frozen,
//! the proxy SIGKILLed again and again under load, a full disk while flushing state, and a
//! broken config reloaded under load. Upstream down (502) and slow (504) are in
//! tests/errors.rs; Redis killed and restarted empty in tests/redis.rs; eight SIGKILLs
//! without load in tests/state.rs.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- upstream resets mid-body

/// A raw upstream: `/v1/reset` answers a head promising 100,000 bytes, sends 1,000 and resets
/// the connection (SO_LINGER 0); anything else gets a complete `200 ok`.
async fn resetting_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if String::from_utf8_lossy(&head).contains("/v1/reset") {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n")
                        .await;
                    let _ = s.write_all(&[b'x'; 1000]).await;
                    let _ = s.flush().await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let _ = s.set_zero_linger();
                    drop(s);
                } else {
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn upstream_reset_mid_body_is_an_upstream_error_that_releases_its_concurrency() {
    let addr = resetting_upstream().await;
    let upstream = format!("http://{MOCK_HOST}:{}", addr.port());
    let cfg = ConfigBuilder::new()
        .resolve(MOCK_HOST, "127.0.0.1")
        .simple_provider("mock", MOCK_HOST, &upstream)
        .raw(&limit("inflight", "concurrent", 1.0, "", "provider"))
        .raw(&on_limit("reject", "30s", 10))
        .build();
    let proxy = Proxy::start(&cfg);
    let reset_url = format!("{upstream}/v1/reset");
    let ok_url = format!("{upstream}/v1/ok");
    for round in 0..5 {
        match try_forward(proxy.proxy_addr, "GET", &reset_url, &[], "").await {
            Err(e) => assert!(!e.contains("timed out"), "round {round}: {e}"),
            Ok(r) => assert!(
                r.status != 200 || r.body.len() < 100_000,
                "round {round}: a reset body arrived complete"
            ),
        }
        // The one concurrency slot was released: the next call is admitted, not a 429.
        let r = forward(proxy.proxy_addr, "GET", &ok_url, &[], "").await;
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
        assert_eq!(r.text(), "ok");
    }
    let errors = eventually("upstream errors counted", WAIT, || async {
        let m = metrics_text(proxy.admin_addr).await;
        let n = outcome_count(&m, "mock", "upstream_error");
        (n >= 5.0).then_some(n)
    })
    .await;
    assert_eq!(errors, 5.0, "one upstream_error per reset");
    assert!(proxy.logs().contains("listening"));
    assert!(!proxy.logs().contains("panicked"), "{}", proxy.logs());
}

#[tokio::test]
async fn upstream_down_and_upstream_timeouts_under_concurrency_are_counted_and_release_their_slot()
{
    let up = MockUpstream::plain(by_path(vec![("/v1/hang", hang())], fixed(200, &[], "ok"))).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = mock_provider(&up, &[])
        .proxy("upstream_timeout", "\"1s\"")
        .raw(&limit("inflight", "concurrent", 2.0, "", "provider"))
        .raw(&on_limit("reject", "30s", 10))
        .build();
    let proxy = Proxy::start(&cfg);
    let down = ConfigBuilder::new()
        .resolve(MOCK_HOST, "127.0.0.1")
        .simple_provider("mock", MOCK_HOST, &format!("http://{MOCK_HOST}:{closed}"))
        .raw(&limit("inflight", "concurrent", 2.0, "", "provider"))
        .raw(&on_limit("reject", "30s", 10))
        .build();
    let dead = Proxy::start(&down);
    // Six timeouts, two at a time (the concurrency limit): each 504, each slot released.
    for round in 0..3 {
        let resps = concurrently(2, |_| {
            let url = mock_url(&up, "/v1/hang");
            let addr = proxy.proxy_addr;
            async move { forward(addr, "GET", &url, &[], "").await }
        })
        .await;
        for r in &resps {
            assert_proxy_error(r, 504, "error");
        }
        let r = forward(proxy.proxy_addr, "GET", &mock_url(&up, "/v1/ok"), &[], "").await;
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
    }
    // Six calls to a closed port: each 502, none holds a slot.
    for _ in 0..6 {
        let url = format!("http://{MOCK_HOST}:{closed}/v1/x");
        let r = forward(dead.proxy_addr, "GET", &url, &[], "").await;
        assert_proxy_error(&r, 502, "error");
    }
    let m = metrics_text(proxy.admin_addr).await;
    assert_eq!(outcome_count(&m, "mock", "upstream_error"), 6.0, "{m}");
    let m = metrics_text(dead.admin_addr).await;
    assert_eq!(outcome_count(&m, "mock", "upstream_error"), 6.0, "{m}");
}

// ---------------------------------------------------------------- upstream 5xx

#[tokio::test]
async fn upstream_5xx_is_retried_per_config_and_counted() {
    let calls = Arc::new(AtomicU64::new(0));
    let c2 = calls.clone();
    let flaky = handler(move |r: Recorded| {
        let n = c2.fetch_add(1, Ordering::SeqCst);
        let always = r.uri.path().contains("always");
        async move {
            if always || n < 2 {
                response(503, &[], "{\"error\":\"overloaded\"}")
            } else {
                response(200, &[], "ok")
            }
        }
    });
    let up = MockUpstream::plain(flaky).await;
    let cfg = mock_provider(&up, &[])
        .raw("[providers.mock.retry]\non = [502, 503, 504]\nmax_attempts = 3\n")
        .build();
    let proxy = Proxy::start(&cfg);

    // Two 503s, then a 200: the client sees only the 200.
    let r = forward(
        proxy.proxy_addr,
        "GET",
        &mock_url(&up, "/v1/flaky"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.requests().len(), 3);
    // Always 503: three attempts, then the upstream's 503 is passed on.
    let r = forward(
        proxy.proxy_addr,
        "GET",
        &mock_url(&up, "/v1/always"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(up.requests().len(), 6, "max_attempts bounds the tries");
    // A POST is not idempotent: a 503 is not retried without any_method.
    let r = forward(
        proxy.proxy_addr,
        "POST",
        &mock_url(&up, "/v1/always"),
        &[],
        "{}",
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(up.requests().len(), 7);

    let m = metrics_text(proxy.admin_addr).await;
    let retries = metric_value(
        &m,
        "quota_proxy_retries_total",
        &["provider=\"mock\"", "reason=\"503\""],
    );
    assert_eq!(retries, 4.0, "2 + 2 retries counted: {m}");
}

// ---------------------------------------------------------------- SIGKILL under load
fn local_state(cfg: &str, dir: &Path, flush: &str) -> String {
    let state = format!(
        "backend = \"local\"\ndir = {}\nflush_interval = {}",
        toml_str(&dir.display().to_string()),
        toml_str(flush)
    );
    cfg.replace("backend = \"memory\"", &state)
}

/// Clients sending requests on new connections until `stop` or a failure (the proxy died);
/// returns (attempts, completion instants of the successes).
async fn load_until(
    addr: SocketAddr,
    url: String,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> (u64, Vec<Instant>) {
    let attempts = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (stop, attempts, done, url) =
                (stop.clone(), attempts.clone(), done.clone(), url.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    attempts.fetch_add(1, Ordering::SeqCst);
                    match try_forward(addr, "GET", &url, &[], "").await {
                        Ok(r) if r.status == 200 => done.lock().unwrap().push(Instant::now()),
                        Ok(r) => panic!("status {} while the proxy ran: {}", r.status, r.text()),
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let done = done.lock().unwrap().clone();
    (attempts.load(Ordering::SeqCst), done)
}

/// The usage of limit `rpm` in the state file, and its `saved_at` (µs).
fn saved_usage(state: &Path) -> (f64, u64) {
    let text = std::fs::read_to_string(state).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let p = &v["payload"];
    let used = p["engine"]["providers"]["mock"]["limits"][0]["counters"][0]["meter"]["buckets"]
        .as_array()
        .map_or(0.0, |b| b.iter().filter_map(|x| x[1].as_f64()).sum());
    (used, p["saved_at"].as_u64().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_twenty_times_restores_the_last_flush_every_time() {
    let up = MockUpstream::plain(fixed(200, &[], "ok")).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let cfg = local_state(
        &mock_provider(&up, &[])
            .raw(&limit("rpm", "requests", 1e9, "1h", "provider"))
            .build(),
        dir.path(),
        "200ms",
    );
    let url = mock_url(&up, "/v1/kill");
    let (mut attempts, mut on_disk) = (0u64, 0.0);
    let (mut lost, mut staleness) = (Vec::new(), Vec::new());
    for round in 0..20 {
        let mut proxy = Proxy::start(&cfg);
        let restored = limit_used(proxy.admin_addr, "rpm").await;
        assert_eq!(
            restored, on_disk,
            "round {round}: the state file written before the kill is restored exactly"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let load = tokio::spawn(load_until(proxy.proxy_addr, url.clone(), 4, stop.clone()));
        // Let the load run across several flushes, then kill it mid-stream.
        let before = restored;
        eventually("a flush under load", WAIT, || {
            let fresh = state.exists() && saved_usage(&state).0 > before;
            async move { fresh.then_some(()) }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.signal("KILL");
        proxy.wait_exit(WAIT).await.expect("killed proxy exits");
        // The wall clock, to compare with the file's `saved_at` (the proxy's wall clock).
        #[allow(clippy::disallowed_methods)]
        let killed_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        stop.store(true, Ordering::SeqCst);
        let (n, _) = load.await.unwrap();
        attempts += n;
        let (saved, saved_at) = saved_usage(&state);
        assert!(
            saved > before && saved <= attempts as f64,
            "round {round}: saved {saved}, restored {before}, attempted {attempts}"
        );
        lost.push(attempts as f64 - saved - lost.iter().sum::<f64>());
        staleness.push(Duration::from_micros(killed_at.saturating_sub(saved_at)));
        on_disk = saved;
    }
    let proxy = Proxy::start(&cfg);
    assert_eq!(limit_used(proxy.admin_addr, "rpm").await, on_disk);
    println!(
        "sigkill x20 under load: {attempts} attempts, {} reached the upstream, {on_disk} restored \
         at the end; per kill: calls lost {lost:?}, age of the last flush {staleness:?}",
        up.requests().len()
    );
}

// ---------------------------------------------------------------- disk full

/// A full disk under the state dir: a 64 KiB tmpfs mounted there when this process may mount
/// (root), else the proxy's temp file made a symlink to `/dev/full` (writes fail with ENOSPC).
enum FullDisk {
    Tmpfs { filler: PathBuf },
    DevFull { link: PathBuf },
}

impl FullDisk {
    /// Mounts the tmpfs; false when not permitted (or `FAULTS_NO_MOUNT` is set, to exercise
    /// the `/dev/full` variant).
    fn mount(dir: &Path) -> bool {
        if std::env::var_os("FAULTS_NO_MOUNT").is_some() {
            return false;
        }
        std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Fills the disk (the state file already exists, so the next flush's temp copy fails).
    fn fill(dir: &Path, tmpfs: bool, pid: u32) -> FullDisk {
        if tmpfs {
            let filler = dir.join("filler");
            let mut f = std::fs::File::create(&filler).unwrap();
            let chunk = [0u8; 4096];
            loop {
                use std::io::Write;
                if f.write_all(&chunk).and_then(|()| f.sync_all()).is_err() {
                    break;
                }
            }
            FullDisk::Tmpfs { filler }
        } else {
            let link = dir.join(format!("state.json.tmp.{pid}"));
            // A flush may be writing its own temp file right now: retry until it is gone.
            let mut tries = 0;
            while let Err(e) = std::os::unix::fs::symlink("/dev/full", &link) {
                tries += 1;
                assert!(tries < 500, "cannot create {}: {e}", link.display());
                std::thread::sleep(Duration::from_millis(2));
            }
            FullDisk::DevFull { link }
        }
    }

    /// Frees the space again.
    fn free(&self) {
        match self {
            FullDisk::Tmpfs { filler, .. } => std::fs::remove_file(filler).unwrap(),
            FullDisk::DevFull { link } => {
                let _ = std::fs::remove_file(link);
            }
        }
    }
}

/// Unmounts the tmpfs on drop.
struct Unmount(Option<PathBuf>);

impl Drop for Unmount {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(dir)
                .status();
        }
    }
}

#[tokio::test]
async fn a_full_disk_fails_the_flush_visibly_serving_continues_and_the_next_flush_succeeds() {
    let up = MockUpstream::plain(fixed(200, &[], "ok")).await;
    let dir = tempfile::tempdir().unwrap();
    let tmpfs = FullDisk::mount(dir.path());
    let _unmount = Unmount(tmpfs.then(|| dir.path().to_path_buf()));
    println!(
        "disk full simulated with {}",
        if tmpfs {
            "a 64 KiB tmpfs"
        } else {
            "a /dev/full temp file"
        }
    );
    let cfg = local_state(
        &mock_provider(&up, &[])
            .raw(&limit("rpm", "requests", 1e6, "1h", "provider"))
            .build(),
        dir.path(),
        "100ms",
    );
    let mut proxy = Proxy::start(&cfg);
    let state = dir.path().join("state.json");
    let saved = |n: u64| {
        let want = format!("\"requests\":{n}");
        let state = state.clone();
        move || {
            let ok = std::fs::read_to_string(&state).is_ok_and(|t| t.contains(&want));
            async move { ok.then_some(()) }
        }
    };
    assert_eq!(
        forward(proxy.proxy_addr, "GET", &mock_url(&up, "/v1/a"), &[], "")
            .await
            .status,
        200
    );
    eventually("the first call is flushed", WAIT, saved(1)).await;

    let full = FullDisk::fill(dir.path(), tmpfs, proxy.pid);
    for _ in 0..3 {
        let r = forward(proxy.proxy_addr, "GET", &mock_url(&up, "/v1/b"), &[], "").await;
        assert_eq!(
            r.status,
            200,
            "serving continues on a full disk: {}",
            r.text()
        );
    }
    proxy.wait_for_log("state flush failed", WAIT).await;
    let m = metrics_text(proxy.admin_addr).await;
    assert!(
        metric_value(&m, "quota_proxy_state_backend_errors_total", &[]) >= 1.0,
        "{m}"
    );
    assert!(proxy.try_exit().is_none(), "the proxy is still running");
    if tmpfs {
        // (With /dev/full the failed temp link is removed, so the next flush already succeeds.)
        assert!(
            std::fs::read_to_string(&state)
                .unwrap()
                .contains("\"requests\":1"),
            "the last good state file is intact while the disk is full"
        );
    }

    full.free();
    eventually("the next flush succeeds once space is back", WAIT, saved(4)).await;
    assert_eq!(
        forward(proxy.proxy_addr, "GET", &mock_url(&up, "/v1/c"), &[], "")
            .await
            .status,
        200
    );
    let log = proxy.logs();
    let line = log
        .lines()
        .find(|l| l.contains("state flush failed"))
        .unwrap();
    println!("flush failure logged as: {line}");
    assert!(!log.contains("panicked"), "{log}");
}

// ---------------------------------------------------------------- broken config reload under load

/// Replaces the proxy's config file atomically: write a sibling, rename it over.
fn replace_config(proxy: &Proxy, toml: &str) {
    let tmp = proxy.config_path().with_extension("toml.new");
    std::fs::write(&tmp, toml).unwrap();
    std::fs::rename(&tmp, proxy.config_path()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_reloaded_under_load_keeps_the_old_one_and_fails_no_request() {
    let up = MockUpstream::plain(fixed(200, &[], "ok")).await;
    let good = mock_provider(&up, &[])
        .raw(&limit("rpm", "requests", 1e9, "1m", "provider"))
        .build();
    let proxy = Proxy::start(&good);
    let url = mock_url(&up, "/v1/reload");
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (stop, ok, url, addr) = (stop.clone(), ok.clone(), url.clone(), proxy.proxy_addr);
            tokio::spawn(async move {
                let mut conn = open_h1(addr).await.unwrap();
                while !stop.load(Ordering::SeqCst) {
                    // Half on one keep-alive connection, half on new connections.
                    let r = if i % 2 == 0 {
                        send_on(&mut conn, build_request("GET", &url, &[], "")).await
                    } else {
                        try_forward(addr, "GET", &url, &[], "").await
                    };
                    let r = r.unwrap_or_else(|e| panic!("client {i}: {e}"));
                    assert_eq!(r.status, 200, "client {i}: {}", r.text());
                    ok.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();

    let reloads = |result: &'static str, at_least: f64| {
        let admin = proxy.admin_addr;
        move || async move {
            let m = metrics_text(admin).await;
            let n = metric_value(
                &m,
                "quota_proxy_config_reloads_total",
                &[&format!("result=\"{result}\"")],
            );
            (n >= at_least).then_some(n)
        }
    };
    up.wait_requests(50, WAIT).await;
    // Each file replaces the config atomically (rename), as a ConfigMap update does; an
    // empty file is refused too (a file caught while being rewritten in place).
    for broken in [
        "",
        "[proxy\nlisten = ",
        "[proxy]\nlisten = \"127.0.0.1:0\"\nbogus = 1\n",
    ] {
        replace_config(&proxy, broken);
        proxy.signal("HUP");
        let (status, body) = admin_post(proxy.admin_addr, "/reload", "").await;
        assert_eq!(status, 400, "{body}");
    }
    // Three SIGHUPs and three POSTs, all refused, before the good file comes back.
    eventually(
        "every failed reload is counted",
        WAIT,
        reloads("error", 6.0),
    )
    .await;
    let before = up.requests().len();
    up.wait_requests(before + 50, WAIT).await;
    replace_config(&proxy, &good);
    let (status, body) = admin_post(proxy.admin_addr, "/reload", "").await;
    assert_eq!(status, 200, "{body}");
    let before = up.requests().len();
    up.wait_requests(before + 50, WAIT).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let served = ok.load(Ordering::SeqCst);
    assert_eq!(
        up.requests().len() as u64,
        served,
        "every request reached the upstream"
    );
    let m = metrics_text(proxy.admin_addr).await;
    assert_eq!(outcome_count(&m, "mock", "forwarded"), served as f64);
    assert!(
        metric_value(
            &m,
            "quota_proxy_config_reloads_total",
            &["result=\"error\""]
        ) == 6.0,
        "{m}"
    );
    println!("reload under load: {served} requests, 0 failed, 6 broken reloads refused");
}
