//! Slowloris (SPEC §12): a thousand connections trickling their request heads a byte a second
//! are each closed once `header_read_timeout` has passed, while a normal client keeps being
//! served throughout. The figures (close times, the normal client's p50/p99) are printed for
//! docs/reliability.md; only the bounds below are asserted.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const ATTACKERS: usize = 1_000;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Each attacker must be closed within the timeout plus this, counted from its connect.
const SLACK: Duration = Duration::from_secs(1);

/// Connects, then sends `head` one byte per second until the proxy closes the connection;
/// returns how long after the connect that was (or `None` if it stayed open for 30 s).
async fn trickle(addr: std::net::SocketAddr, head: Arc<Vec<u8>>) -> Option<Duration> {
    let mut stream = TcpStream::connect(addr).await.expect("attacker connect");
    let opened = Instant::now();
    let mut buf = [0u8; 512];
    let mut next = 0;
    let give_up = opened + Duration::from_secs(30);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Some(opened.elapsed()),
                // Only a 408 could come back; keep reading until the close.
                Ok(_) => {}
            },
            _ = tick.tick() => {
                if next < head.len() {
                    if stream.write_all(&head[next..next + 1]).await.is_err() {
                        return Some(opened.elapsed());
                    }
                    next += 1;
                }
            }
            _ = tokio::time::sleep_until(give_up) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_slow_heads_are_closed_after_the_timeout_while_a_client_is_served() {
    require_nofile(ATTACKERS as u64 + 512);
    let up = MockUpstream::plain(echo()).await;
    let proxy = Proxy::start(
        &mock_config(&up)
            .proxy("header_read_timeout", "\"2s\"")
            .build(),
    );
    let url = mock_url(&up, "/v1/normal");
    let head = Arc::new(
        format!(
            "GET {url} HTTP/1.1\r\nHost: {MOCK_HOST}:{}\r\nx-slow: {}\r\n\r\n",
            up.port(),
            "a".repeat(64)
        )
        .into_bytes(),
    );

    // The normal client: one request after another on new connections until the attack is over.
    let attack_over = Arc::new(AtomicBool::new(false));
    let normal = {
        let (addr, url, over) = (proxy.proxy_addr, url.clone(), attack_over.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !over.load(Ordering::SeqCst) {
                let t = Instant::now();
                let r = try_forward(addr, "GET", &url, &[], "").await;
                let r =
                    r.unwrap_or_else(|e| panic!("normal request {} failed: {e}", latencies.len()));
                assert_eq!(r.status, 200, "normal request: {}", r.text());
                latencies.push(t.elapsed());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            latencies
        })
    };

    let started = Instant::now();
    let attackers: Vec<_> = (0..ATTACKERS)
        .map(|_| tokio::spawn(trickle(proxy.proxy_addr, head.clone())))
        .collect();
    let mut closed_after = Vec::with_capacity(ATTACKERS);
    for a in attackers {
        closed_after.push(a.await.unwrap());
    }
    let attack = started.elapsed();
    attack_over.store(true, Ordering::SeqCst);
    let latencies = normal.await.unwrap();

    let still_open = closed_after.iter().filter(|c| c.is_none()).count();
    assert_eq!(still_open, 0, "slow connections never closed");
    let closed: Vec<Duration> = closed_after.into_iter().flatten().collect();
    let max = *closed.iter().max().unwrap();
    let min = *closed.iter().min().unwrap();
    println!(
        "slowloris: {ATTACKERS} connections closed {min:?}..{max:?} after connecting \
         (header_read_timeout {HEADER_READ_TIMEOUT:?}); attack lasted {attack:?}; normal client \
         {} requests, p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        percentile(&latencies, 100.0),
    );
    assert!(
        max <= HEADER_READ_TIMEOUT + SLACK,
        "a slow connection stayed open {max:?} (timeout {HEADER_READ_TIMEOUT:?})"
    );
    assert!(
        // (The proxy's clock starts at its accept, ours once connect returns in this busy
        // process: ours may start late, so allow some slack below the timeout.)
        min >= HEADER_READ_TIMEOUT - Duration::from_millis(500),
        "a slow connection was closed after {min:?}, before its timeout"
    );
    assert!(
        latencies.len() >= 10,
        "the normal client was served throughout: {} requests",
        latencies.len()
    );
    // None of the partial heads reached the upstream; every normal request did.
    assert_eq!(up.requests().len(), latencies.len());
    let m = metrics_text(proxy.admin_addr).await;
    assert_eq!(
        metric_value(&m, "quota_proxy_header_timeouts_total", &[]),
        ATTACKERS as f64,
        "each slow connection is counted once"
    );
}
