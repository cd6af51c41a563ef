//! Process lifecycle: graceful drain on SIGTERM/SIGINT.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;

/// True once the proxy no longer takes new work: the connect is refused, or a request on a new
/// connection gets a 503 or an immediate close.
async fn refuses_new_connections(proxy_addr: SocketAddr, url: &str) -> bool {
    let Ok(stream) = tokio::net::TcpStream::connect(proxy_addr).await else {
        return true;
    };
    let req = build_request("GET", url, &[], "");
    match tokio::time::timeout(Duration::from_secs(2), send_h1(stream, req)).await {
        Ok(Ok(resp)) => resp.status == 503,
        Ok(Err(_)) => true, // closed without a response
        Err(_) => false,    // accepted but left hanging: not a refusal
    }
}

#[tokio::test]
async fn sigterm_drains_in_flight_request_refuses_new_ones_and_exits_0() {
    let (h, gate) = gated(fixed(200, &[], "finished"));
    let up = MockUpstream::plain(by_path(vec![("/v1/slow", h)], echo())).await;
    let mut proxy = Proxy::start(&mock_config(&up).proxy("drain_timeout", "\"10s\"").build());
    let addr = proxy.proxy_addr;
    let slow_url = mock_url(&up, "/v1/slow");

    let in_flight = tokio::spawn(async move { try_forward(addr, "GET", &slow_url, &[], "").await });
    up.wait_requests(1, Duration::from_secs(5)).await;

    proxy.signal("TERM");
    let probe_url = mock_url(&up, "/v1/probe");
    eventually(
        "new connections refused after SIGTERM",
        Duration::from_secs(5),
        || async {
            refuses_new_connections(addr, &probe_url)
                .await
                .then_some(())
        },
    )
    .await;
    let probes_before = probes_forwarded(&up);
    assert!(
        refuses_new_connections(addr, &probe_url).await,
        "refusing new connections is not permanent during the drain"
    );
    assert!(
        !in_flight.is_finished(),
        "the in-flight request ended before its upstream answered"
    );
    assert_eq!(proxy.try_exit(), None, "exited with a request in flight");

    gate.open();
    let resp = in_flight
        .await
        .unwrap()
        .expect("in-flight request completes during drain");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "finished");

    let status = proxy
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("proxy exits after draining");
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    assert_eq!(
        probes_forwarded(&up),
        probes_before,
        "a request on a new connection was forwarded after the proxy began refusing them"
    );
}

/// Probe requests that reached the upstream. A probe sent before the proxy handled the signal
/// may legitimately be forwarded, so tests compare counts after the first refusal.
fn probes_forwarded(up: &MockUpstream) -> usize {
    up.requests()
        .iter()
        .filter(|r| r.uri.path() == "/v1/probe")
        .count()
}

#[tokio::test]
async fn sigint_with_nothing_in_flight_exits_0() {
    let up = MockUpstream::plain(echo()).await;
    let mut proxy = Proxy::start(&mock_config(&up).build());
    assert_eq!(
        forward(proxy.proxy_addr, "GET", &mock_url(&up, "/v1/x"), &[], "")
            .await
            .status,
        200
    );

    proxy.signal("INT");

    let status = proxy
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("proxy exits on SIGINT");
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
}

#[tokio::test]
async fn drain_timeout_bounds_the_wait_for_a_stuck_request() {
    let up = MockUpstream::plain(hang()).await;
    let mut proxy = Proxy::start(&mock_config(&up).proxy("drain_timeout", "\"1s\"").build());
    let addr = proxy.proxy_addr;
    let url = mock_url(&up, "/v1/stuck");
    let _in_flight = tokio::spawn(async move { try_forward(addr, "GET", &url, &[], "").await });
    up.wait_requests(1, Duration::from_secs(5)).await;

    proxy.signal("TERM");

    // Generous bound: drain_timeout (1 s) plus shutdown work.
    let status = proxy
        .wait_exit(Duration::from_secs(8))
        .await
        .expect("proxy exits once drain_timeout passes");
    assert!(status.code().is_some(), "exited by a signal: {status:?}");
}

/// The state flushed every 50 ms, were it kept: a flush runs on tokio's blocking pool, whose
/// threads would be counted with the workers. The tests' state is in memory, which keeps
/// nothing, so it is never flushed.
fn flushed_often(cfg: String) -> String {
    cfg.replace("[state]\n", "[state]\nflush_interval = \"50ms\"\n")
}

/// The names of the proxy process's threads.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).unwrap())
        .map(|name| name.trim().to_string())
        .collect()
}

#[tokio::test]
async fn one_worker_serves_every_connection_on_one_thread() {
    let (h, gate) = gated(fixed(200, &[], "held"));
    let up = MockUpstream::plain(by_path(vec![("/v1/held", h)], echo())).await;
    let proxy = Proxy::start_with_env(
        &flushed_often(mock_config(&up).build()),
        &[("TOKIO_WORKER_THREADS", "1")],
    );
    let addr = proxy.proxy_addr;

    // A request held upstream does not stop the one thread serving others meanwhile.
    let held_url = mock_url(&up, "/v1/held");
    let held = tokio::spawn(async move { forward(addr, "GET", &held_url, &[], "").await });
    eventually(
        "the held request reaches the upstream",
        Duration::from_secs(10),
        || {
            let arrived = up.requests().iter().any(|r| r.uri.path() == "/v1/held");
            async move { arrived.then_some(()) }
        },
    )
    .await;
    let url = mock_url(&up, "/v1/echo");
    let resps = concurrently(20, |i| {
        let url = url.clone();
        async move { forward(addr, "POST", &url, &[], format!("body {i}")).await }
    })
    .await;
    for (i, r) in resps.iter().enumerate() {
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.text().contains(&format!("body {i}")), "{}", r.text());
    }
    let (status, body) = admin_get(proxy.admin_addr, "/status").await;
    assert_eq!(status, 200, "{body}");
    assert!(!held.is_finished(), "the held request is still upstream");
    gate.release();
    let held = held.await.unwrap();
    assert_eq!(held.status, 200);
    assert_eq!(held.text(), "held");

    // Past several flush intervals: a memory store is never flushed, so no blocking thread
    // was started for it either.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let names = thread_names(proxy.pid);
    assert_eq!(
        names.len(),
        1,
        "one worker runs the proxy on one thread, not {names:?}"
    );
}

#[tokio::test]
async fn tokio_worker_threads_sets_the_number_of_workers() {
    let up = MockUpstream::plain(echo()).await;
    let proxy = Proxy::start_with_env(
        &flushed_often(mock_config(&up).build()),
        &[("TOKIO_WORKER_THREADS", "3")],
    );
    let r = forward(proxy.proxy_addr, "GET", &mock_url(&up, "/v1/x"), &[], "").await;
    assert_eq!(r.status, 200);
    // Workers are named tokio-rt-worker (tokio-runtime-worker, cut to 15 bytes, before 1.44);
    // the blocking pool's threads share the name, and nothing here uses it (the state is in
    // memory and never flushed).
    let names = thread_names(proxy.pid);
    let workers = names.iter().filter(|n| n.starts_with("tokio-r")).count();
    assert_eq!(workers, 3, "{names:?}");
}

#[test]
fn a_worker_count_that_is_not_a_positive_number_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = "[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    std::fs::write(dir.path().join("qp.toml"), cfg).unwrap();
    for bad in ["0", "two", ""] {
        let out = run_cli_with_env(
            &["run", "-c", "qp.toml"],
            dir.path(),
            &[("TOKIO_WORKER_THREADS", bad)],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad:?}: {stderr}");
        assert!(
            stderr.contains("TOKIO_WORKER_THREADS must be a whole number above 0"),
            "{bad:?}: {stderr}"
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("listening"),
            "never ready with {bad:?}"
        );
    }
}
