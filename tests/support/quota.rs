//! Helpers for quota, key and usage tests: providers with extra fields, an upstream wrapper
//! that records arrival times and in-flight counts, scripted SSE upstreams, checks of the
//! proxy's 429 shape, RateLimit header parsing, metrics, and concurrent client launches.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Barrier, Notify};
use tokio::time::Instant;

use super::client::{admin_get, Resp};
use super::config::{toml_str, ConfigBuilder};
use super::handlers::{handler, streaming_response, Handler};
use super::upstream::{MockUpstream, Recorded};
use super::MOCK_HOST;

/// Like [`super::mock_config`], with extra raw-TOML fields in `[providers.mock]`
/// (e.g. `("signals", "[\"openai\"]")`, `("mode", "\"shadow\"")`).
pub fn mock_provider(up: &MockUpstream, fields: &[(&str, &str)]) -> ConfigBuilder {
    let hosts = format!("[{}]", toml_str(MOCK_HOST));
    let upstream = toml_str(&up.url_for(MOCK_HOST));
    let mut all: Vec<(&str, &str)> = vec![
        ("hosts", hosts.as_str()),
        ("route", "\"/mock\""),
        ("upstream", upstream.as_str()),
    ];
    all.extend_from_slice(fields);
    ConfigBuilder::new()
        .resolve(MOCK_HOST, "127.0.0.1")
        .provider("mock", &all)
}

/// A `[[providers.mock.limits]]` table. `window` may be empty for `concurrent` limits.
pub fn limit(name: &str, unit: &str, amount: f64, window: &str, scope: &str) -> String {
    let mut s = format!(
        "[[providers.mock.limits]]\nname = {}\nunit = {}\namount = {amount}\nscope = {}\n",
        toml_str(name),
        toml_str(unit),
        toml_str(scope)
    );
    if !window.is_empty() {
        s.push_str(&format!("window = {}\n", toml_str(window)));
    }
    s
}

/// `[providers.mock.on_limit]` with `action`, `max_delay` and `max_queue`.
pub fn on_limit(action: &str, max_delay: &str, max_queue: usize) -> String {
    format!(
        "[providers.mock.on_limit]\naction = {}\nmax_delay = {}\nmax_queue = {max_queue}\n",
        toml_str(action),
        toml_str(max_delay)
    )
}

/// What a [`tracked`] upstream saw: when each request arrived and how many were in its
/// handler at once.
#[derive(Clone, Default)]
pub struct Tracker {
    inner: Arc<Mutex<TrackState>>,
}

#[derive(Default)]
struct TrackState {
    arrivals: Vec<Instant>,
    in_flight: usize,
    max_in_flight: usize,
}

impl Tracker {
    /// Arrival instants, in arrival order.
    pub fn arrivals(&self) -> Vec<Instant> {
        self.inner.lock().expect("tracker lock").arrivals.clone()
    }

    /// Requests whose handler has not produced a response head yet.
    pub fn in_flight(&self) -> usize {
        self.inner.lock().expect("tracker lock").in_flight
    }

    /// The most requests ever inside the handler at once.
    pub fn max_in_flight(&self) -> usize {
        self.inner.lock().expect("tracker lock").max_in_flight
    }
}

struct InFlightGuard(Tracker);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut s = self.0.inner.lock().expect("tracker lock");
        s.in_flight = s.in_flight.saturating_sub(1);
    }
}

/// Wraps `inner`, recording arrival times and in-flight counts. A request counts as in
/// flight from its arrival until `inner` returns the response head (before the proxy can see
/// it), so the observed maximum never exceeds the real one.
/// Asserts that sorted `arrivals` (timed at the mock) never put more than `max` calls in any
/// interval of `window`: arrival `i + max` is at least `window` after arrival `i`. Arrivals
/// are timed after the proxy's admission plus a transit time that varies by a few ms (more on
/// a loaded machine), so `JITTER` is allowed, no more.
pub fn assert_paced(arrivals: &[Instant], max: usize, window: Duration) {
    const JITTER: Duration = Duration::from_millis(50);
    for i in 0..arrivals.len().saturating_sub(max) {
        let gap = arrivals[i + max] - arrivals[i];
        assert!(
            gap >= window - JITTER,
            "arrivals {i} and {} only {gap:?} apart ({} calls in one {window:?} window); all: {:?}",
            i + max,
            max + 1,
            arrivals
                .iter()
                .map(|t| *t - arrivals[0])
                .collect::<Vec<_>>()
        );
    }
}

pub fn tracked(inner: Handler) -> (Handler, Tracker) {
    let t = Tracker::default();
    let t2 = t.clone();
    let h = handler(move |r: Recorded| {
        let (t, inner) = (t2.clone(), inner.clone());
        async move {
            {
                let mut s = t.inner.lock().expect("tracker lock");
                s.arrivals.push(Instant::now());
                s.in_flight += 1;
                s.max_in_flight = s.max_in_flight.max(s.in_flight);
            }
            let _guard = InFlightGuard(t.clone());
            inner(r).await
        }
    });
    (h, t)
}

/// Set when a [`sse_script_then_hold`] upstream saw the proxy drop its response body.
#[derive(Clone, Default)]
pub struct Flag {
    set: Arc<AtomicBool>,
    notify: Arc<Notify>,
}

impl Flag {
    pub fn set(&self) {
        self.set.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::SeqCst)
    }

    /// Waits until set (panics naming `what` after `timeout`).
    pub async fn wait(&self, what: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.notify.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.is_set() {
                return;
            }
            if tokio::time::timeout_at(deadline, n).await.is_err() {
                panic!("{what}: not seen within {timeout:?}");
            }
        }
    }
}

const SSE_HEADERS: &[(&str, &str)] = &[
    ("content-type", "text/event-stream"),
    ("cache-control", "no-cache"),
];

/// An SSE upstream sending each of `chunks` as one body frame, in order, then ending.
pub fn sse_script(chunks: Vec<String>) -> Handler {
    let chunks = Arc::new(chunks);
    handler(move |_| {
        let chunks = chunks.clone();
        async move {
            let (resp, tx) = streaming_response(200, SSE_HEADERS);
            tokio::spawn(async move {
                for c in chunks.iter() {
                    if tx.send(Bytes::from(c.clone())).await.is_err() {
                        return;
                    }
                    // Let each chunk leave as its own frame.
                    tokio::task::yield_now().await;
                }
            });
            resp
        }
    })
}

/// An SSE upstream sending `chunks` and then, instead of ending, an SSE comment
/// (`": ping"`) every 50 ms until the proxy drops the stream; `closed` is set then.
pub fn sse_script_then_trickle(chunks: Vec<String>) -> (Handler, Flag) {
    let closed = Flag::default();
    let c2 = closed.clone();
    let chunks = Arc::new(chunks);
    let h = handler(move |_| {
        let (chunks, closed) = (chunks.clone(), c2.clone());
        async move {
            let (resp, tx) = streaming_response(200, SSE_HEADERS);
            tokio::spawn(async move {
                for c in chunks.iter() {
                    if tx.send(Bytes::from(c.clone())).await.is_err() {
                        closed.set();
                        return;
                    }
                }
                loop {
                    tokio::select! {
                        _ = tx.closed() => break,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {
                            if tx.send(Bytes::from_static(b": ping\n\n")).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                closed.set();
            });
            resp
        }
    });
    (h, closed)
}

/// Asserts `resp` is the proxy's own quota 429 (SPEC §8) with error code `code`: header
/// `x-quota-proxy: rejected`, `retry-after` whole seconds ≥ 1, body
/// `{"error":{"type":"quota_exceeded","code","limit","scope","provider","retry_after_seconds","message"}}`.
/// Returns (the `error` object, retry-after seconds).
pub fn assert_quota_429(resp: &Resp, code: &str, provider: &str) -> (serde_json::Value, u64) {
    assert_eq!(
        resp.status.as_u16(),
        429,
        "expected the proxy's 429; headers {:?} body {}",
        resp.headers,
        resp.text()
    );
    assert_eq!(
        resp.header("x-quota-proxy"),
        Some("rejected"),
        "x-quota-proxy; headers {:?} body {}",
        resp.headers,
        resp.text()
    );
    let v = resp.json();
    let err = v
        .get("error")
        .unwrap_or_else(|| panic!("no error object in {v}"))
        .clone();
    assert_eq!(err["type"], "quota_exceeded", "{v}");
    assert_eq!(err["code"], code, "{v}");
    assert_eq!(err["provider"], provider, "{v}");
    for f in ["limit", "scope", "message"] {
        assert!(err[f].is_string(), "error.{f} missing in {v}");
    }
    assert!(
        !err["message"].as_str().unwrap_or_default().is_empty(),
        "{v}"
    );
    let ra = resp
        .header("retry-after")
        .unwrap_or_else(|| panic!("no retry-after; headers {:?} body {v}", resp.headers));
    let secs: u64 = ra
        .parse()
        .unwrap_or_else(|_| panic!("retry-after {ra:?} is not whole seconds"));
    assert!(secs >= 1, "retry-after {secs} < 1");
    let ras = err["retry_after_seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("retry_after_seconds missing or not a number in {v}"));
    assert!(ras > 0.0, "retry_after_seconds {ras} in {v}");
    assert!(
        (secs as f64) >= ras.ceil() - 1e-9 && (secs as f64) <= ras.ceil().max(1.0) + 1.0,
        "retry-after {secs} does not round up retry_after_seconds {ras}"
    );
    (err, secs)
}

/// Parses a structured `RateLimit` value `"name";r=R;t=T` into (name, r, t).
pub fn parse_ratelimit(v: &str) -> Option<(String, f64, f64)> {
    let mut parts = v.split(';').map(str::trim);
    let name = parts.next()?.trim_matches('"').to_string();
    let (mut r, mut t) = (None, None);
    for p in parts {
        if let Some(x) = p.strip_prefix("r=") {
            r = x.parse().ok();
        } else if let Some(x) = p.strip_prefix("t=") {
            t = x.parse().ok();
        }
    }
    Some((name, r?, t?))
}

/// Parses `RateLimit-Policy` `"name";q=Q;w=W` into (name, q, w).
pub fn parse_policy(v: &str) -> Option<(String, f64, f64)> {
    let mut parts = v.split(';').map(str::trim);
    let name = parts.next()?.trim_matches('"').to_string();
    let (mut q, mut w) = (None, None);
    for p in parts {
        if let Some(x) = p.strip_prefix("q=") {
            q = x.parse().ok();
        } else if let Some(x) = p.strip_prefix("w=") {
            w = x.parse().ok();
        }
    }
    Some((name, q?, w?))
}

/// The admin `/metrics` text (asserting 200).
/// `used` of limit `limit` of provider `mock` in the admin `/status` (0 when not listed).
pub async fn limit_used(admin: std::net::SocketAddr, limit: &str) -> f64 {
    let (status, body) = admin_get(admin, "/status/mock").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("status is JSON");
    v["providers"]["mock"]["limits"]
        .as_array()
        .expect("limits")
        .iter()
        .find(|l| l["name"] == limit)
        .and_then(|l| l["used"].as_f64())
        .unwrap_or(0.0)
}

pub async fn metrics_text(admin: std::net::SocketAddr) -> String {
    let (status, body) = admin_get(admin, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Runs `n` copies of `f(i)` at once, all released together by a barrier; results in index
/// order.
pub async fn concurrently<T, F, Fut>(n: usize, f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let b = barrier.clone();
            let fut = f(i);
            tokio::spawn(async move {
                b.wait().await;
                fut.await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.expect("concurrent task"));
    }
    out
}

/// Standard base64 (with padding) of `data`, for grepping outputs for encoded secrets.
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
