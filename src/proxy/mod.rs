//! The proxy pipeline: ONE request path serving plain forward-proxy, route-mode and
//! intercepted requests alike (CONNECT is decided here too, before the 200).
//!
//! `handle` → classify (CONNECT / absolute-form / route / intercepted) → [`forward`]:
//! caller hints → policy → upstream → response. Errors become responses only in [`error`].

mod body;
mod connect;
pub mod error;
mod forward;
pub mod handoff;
pub mod headers;
mod intercept;
mod metered;
mod settle;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use tokio_util::task::TaskTracker;

pub use error::ProxyError;

pub use crate::runtime::Runtime;

/// Boxed error for bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type used on both sides.
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// Process-wide state shared by every connection.
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    /// Quota state and key pools, kept across reloads.
    pub persistent: Arc<crate::runtime::Persistent>,
    /// Tracks connections and tunnels so shutdown can drain them.
    pub tracker: TaskTracker,
    /// Fires when shutdown starts.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// What the connection a request arrived on is.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// For requests inside an intercepted CONNECT: the CONNECT host and port, and the client
    /// name and proxy password given on the CONNECT.
    pub intercepted: Option<Intercepted>,
    /// An HTTP/1.1 CONNECT's tunnel, run by the listener once the 200 is written.
    pub handoff: handoff::Handoff,
    /// The upstream timer its requests share.
    upstream_timer: crate::deadline::TimerSlot,
    /// Its last absolute-form destination with a provider.
    last_destination: forward::DestinationSlot,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, intercepted: Option<Intercepted>) -> Self {
        ConnInfo {
            peer,
            intercepted,
            handoff: handoff::Handoff::default(),
            upstream_timer: crate::deadline::TimerSlot::default(),
            last_destination: forward::DestinationSlot::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Intercepted {
    /// Shared with each inner request's destination (no copy per request).
    pub host: Arc<str>,
    pub port: u16,
    /// The client named on the CONNECT (header or proxy user), used when inner requests
    /// name none.
    pub client: String,
    /// Whether the tunnel carries TLS (terminated here) or plain HTTP.
    pub tls: bool,
}

/// Serves one request: never fails, every error becomes a response.
///
/// A plain function around an async block, as `metered::send` (an `async fn` would keep the
/// request twice in the per-request future).
#[allow(clippy::manual_async_fn)]
pub fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> impl Future<Output = Result<Response<Body>, Infallible>> + Send {
    async move {
        let runtime = shared.runtime.load_full();
        let result = match the_host(&req) {
            Err(e) => Err(e),
            Ok(_) if req.method() == Method::CONNECT && conn.intercepted.is_none() => {
                connect::handle(&shared, &runtime, &conn, req).await
            }
            Ok(host) => forward::handle(&shared, &runtime, &conn, req, host).await,
        };
        Ok(result.unwrap_or_else(|e| {
            tracing::debug!(status = e.status().as_u16(), error = %e, "refused");
            e.into_response()
        }))
    }
}

/// `host[:port]` split, with IPv6 brackets removed and the host lower-cased.
pub fn split_authority(authority: &str, default_port: u16) -> Option<(String, u16)> {
    let uri_auth: http::uri::Authority = authority.parse().ok()?;
    split_parsed_authority(&uri_auth, default_port)
}

/// [`split_authority`] of an authority already parsed (a request URI's): no second parse,
/// one pass over its bytes (the `http` crate's `host()` and `port_u16()` each search it again).
/// A port that is not a number up to 65535 is refused; an empty one (`host:`) is the default.
pub fn split_parsed_authority(
    uri_auth: &http::uri::Authority,
    default_port: u16,
) -> Option<(String, u16)> {
    let s = uri_auth.as_str().as_bytes();
    if s.contains(&b'@') {
        return None;
    }
    let (host, port) = match s.strip_prefix(b"[") {
        Some(rest) => {
            let end = rest.iter().position(|&b| b == b']')?;
            (&rest[..end], &rest[end + 1..])
        }
        None => match s.iter().rposition(|&b| b == b':') {
            Some(i) => (&s[..i], &s[i..]),
            None => (s, &s[s.len()..]),
        },
    };
    let port = match port {
        [] | [b':'] => default_port,
        [b':', digits @ ..] if digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit) => {
            let n = digits
                .iter()
                .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
            u16::try_from(n).ok()?
        }
        _ => return None,
    };
    if host.is_empty() {
        return None;
    }
    // The authority parsed, so its bytes are ASCII.
    let host = std::str::from_utf8(host).ok()?;
    Some((host.to_ascii_lowercase(), port))
}

/// The request's one `Host`, if any. RFC 9112 §3.2: an HTTP/1.1 request carries exactly one
/// (CONNECT is let off, as some clients omit it there); more than one is always refused. The
/// listener checks the first head of a connection; this checks every request, kept-alive
/// ones included. The value is kept (a shared buffer's count, not a copy): the request's
/// checks and its upstream `Host` all read it, with no second lookup.
fn the_host<B>(req: &Request<B>) -> Result<Option<http::HeaderValue>, ProxyError> {
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host header".into()));
    }
    if host.is_none() && req.version() == http::Version::HTTP_11 && req.method() != Method::CONNECT
    {
        return Err(ProxyError::BadRequest(
            "an HTTP/1.1 request needs a Host header".into(),
        ));
    }
    Ok(host.cloned())
}

/// Resolves once shutdown has started.
pub async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await.map(|_| ());
}

/// Records one outcome in `quota_proxy_requests_total`.
pub fn count(provider: &str, outcome: &'static str) {
    crate::telemetry::handles::requests(provider, outcome).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_split() {
        let cases = [
            ("API.example.com:8443", 443, Some(("api.example.com", 8443))),
            ("example.com", 80, Some(("example.com", 80))),
            ("[::1]:9000", 80, Some(("::1", 9000))),
            ("Example.com:", 80, Some(("example.com", 80))),
            ("[2001:DB8::1]", 443, Some(("2001:db8::1", 443))),
            ("user@example.com", 80, None),
            ("", 80, None),
            ("a b", 80, None),
            ("example.com:65536", 80, None),
            ("example.com:99999999", 80, None),
            ("[::1]x", 80, None),
            ("[]:80", 80, None),
            (":80", 80, None),
            ("example.com:+80", 80, None),
        ];
        for (given, default, want) in cases {
            let want = want.map(|(h, p)| (h.to_string(), p));
            assert_eq!(split_authority(given, default), want, "{given:?}");
        }
    }
}
