//! Measurements for the reliability suite: the open-files limit, a process's resident memory,
//! latency percentiles, and sums of `quota_proxy_requests_total`.

use std::time::Duration;

/// Raises this process's soft open-files limit to its hard limit (thousands of sockets are
/// opened at once by the load tests); returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).expect("raise RLIMIT_NOFILE")
}

/// Panics unless this process may hold `needed` open files.
pub fn require_nofile(needed: u64) {
    let limit = raise_nofile_limit();
    assert!(
        limit >= needed,
        "this test needs {needed} open files, the hard limit allows {limit}: raise it (ulimit -Hn)"
    );
}

/// `VmRSS` of process `pid` in KiB, from `/proc/PID/status`.
pub fn rss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status:\n{text}"))
}

/// Open file descriptors of process `pid`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or_else(|e| panic!("list /proc/{pid}/fd: {e}"))
}

/// The `p`-th percentile (0..=100) of `samples` (nearest rank); zero when empty.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut s = samples.to_vec();
    s.sort();
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// `quota_proxy_requests_total{provider, outcome}` from a `/metrics` text.
pub fn outcome_count(metrics: &str, provider: &str, outcome: &str) -> f64 {
    super::client::metric_value(
        metrics,
        "quota_proxy_requests_total",
        &[
            &format!("provider=\"{provider}\""),
            &format!("outcome=\"{outcome}\""),
        ],
    )
}
