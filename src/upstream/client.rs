//! The upstream client: hyper's connection API (`hyper::client::conn`) over a small pool.
//!
//! The upstream protocol follows the client's: a request that arrived over h2 may go upstream
//! over h2 (TLS offers ALPN `h2` and `http/1.1`, and the upstream chooses), every other one
//! goes over HTTP/1.1 (ALPN `http/1.1` only), as nginx and Envoy do by default. hyper's h2
//! client spawns a task and runs HPACK for every request, so an HTTP/1.1 client's calls cost
//! about 15% fewer instructions on an HTTP/1.1 upstream connection; an h2 client keeps one
//! multiplexed upstream connection instead of one per concurrent call.
//!
//! The pool keeps, per scheme, authority and protocol choice, the connections it opened:
//! HTTP/1.1 senders (one request at a time each) and HTTP/2 senders (shared by every
//! request). A request takes a sender that is ready *now* (an idle HTTP/1.1 connection, or an
//! open HTTP/2 one), else opens a connection (TCP, then TLS for `https`). An HTTP/1.1
//! sender goes back to the pool as soon as the request is handed to its connection: it is
//! busy, and not ready, until its connection has read the whole response and waits for the
//! next request, so no task is spawned to watch for that moment and nothing is copied.
//! A request that never left the proxy because its pooled connection had just closed is sent
//! again on another one.
//!
//! Connections unused for `idle_timeout` are dropped at the next checkout of their
//! authority and by a sweep every [`SWEEP_EVERY`]; at most `max_per_host` are kept per
//! authority (beyond, a connection serves its request and closes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::header::{HeaderValue, HOST};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;
use tower_service::Service;

use super::OverrideResolver;
use crate::proxy::{Body, BoxError};

type Connector = hyper_rustls::HttpsConnector<HttpConnector<OverrideResolver>>;

/// How often connections unused for the idle timeout are closed.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// A request never reached the upstream this many times in a row (its pooled connection
/// closed each time): the last error is returned.
const SEND_ATTEMPTS: usize = 3;

/// An error sending a request upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (resolution, TCP, TLS or the HTTP handshake).
    #[error("{0}")]
    Connect(#[source] BoxError),
    /// The connection failed while the request was sent or the response read.
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// The request URI has no scheme or authority to connect to.
    #[error("the request URI names no upstream")]
    NoAuthority,
}

impl UpstreamError {
    /// Whether no connection was made, so nothing of the request reached the upstream.
    pub fn is_connect(&self) -> bool {
        !matches!(self, UpstreamError::Http(_))
    }
}

/// The pooled upstream client; cheap to clone.
#[derive(Clone)]
pub struct UpstreamClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// ALPN `http/1.1` only, and `h2` + `http/1.1` (for requests that arrived over h2).
    connectors: [Connector; 2],
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    pool: Mutex<Pool>,
    idle_timeout: Duration,
    max_per_host: usize,
}

#[derive(Default)]
struct Pool {
    /// Two lookups per request: foldhash (randomly seeded), not SipHash.
    hosts: HashMap<PoolKey, Vec<Pooled>, foldhash::fast::RandomState>,
    sweeping: bool,
}

/// Scheme and authority, compared and hashed as the authority's bytes: `Authority`'s own
/// `Hash` lower-cases and feeds one byte at a time, which cost more than the rest of a
/// checkout. Two spellings of one host get two pools, which is harmless.
#[derive(Clone)]
struct PoolKey {
    https: bool,
    /// The request arrived over h2 and the upstream is TLS, so the connection may be h2.
    h2: bool,
    authority: Authority,
}

impl PartialEq for PoolKey {
    fn eq(&self, other: &Self) -> bool {
        self.https == other.https
            && self.h2 == other.h2
            && self.authority.as_str() == other.authority.as_str()
    }
}

impl Eq for PoolKey {}

impl std::hash::Hash for PoolKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.https.hash(state);
        self.h2.hash(state);
        self.authority.as_str().hash(state);
    }
}

enum Sender {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    fn is_ready(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_ready(),
            Sender::H2(s) => s.is_ready(),
        }
    }
}

struct Pooled {
    sender: Sender,
    /// When it was last handed a request (or opened).
    used: Instant,
}

impl Pooled {
    /// Closed, or ready (so idle) and unused for longer than `timeout`.
    fn is_stale(&self, now: Instant, timeout: Duration) -> bool {
        self.sender.is_closed()
            || (self.sender.is_ready() && now.saturating_duration_since(self.used) > timeout)
    }
}

impl UpstreamClient {
    pub(super) fn new(
        connectors: [Connector; 2],
        idle_timeout: Duration,
        max_per_host: usize,
    ) -> Self {
        let mut h1 = http1::Builder::new();
        h1.writev(false);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new()).adaptive_window(true);
        UpstreamClient {
            inner: Arc::new(Inner {
                connectors,
                h1,
                h2,
                pool: Mutex::new(Pool::default()),
                idle_timeout,
                max_per_host,
            }),
        }
    }

    /// Sends `req` (an absolute URI) on a pooled or new connection: h2 only if `req` is an
    /// HTTP/2 request and TLS negotiates it. On HTTP/1.1 a missing `Host` is set from the URI
    /// and the target is sent in origin form; HTTP/2 carries the authority as `:authority`.
    pub async fn request(&self, req: Request<Body>) -> Result<Response<Incoming>, UpstreamError> {
        self.request_then(req, || {}).await
    }

    /// [`request`](Self::request), calling `connected` each time a new connection is ready
    /// for `req`, just before `req` is written to it: a metered call restamps its permit
    /// there, since a connection (a TLS handshake especially) can take a noticeable part of
    /// a window. A pooled connection is ready at once, and calls nothing.
    pub async fn request_then(
        &self,
        mut req: Request<Body>,
        mut connected: impl FnMut(),
    ) -> Result<Response<Incoming>, UpstreamError> {
        // Taken out of the request: HTTP/1.1 sends the origin form, HTTP/2 puts it back.
        let uri = std::mem::take(req.uri_mut());
        let key = PoolKey::of(&uri, req.version()).ok_or(UpstreamError::NoAuthority)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let now = Instant::now();
            let sender = match self.checkout(&key, now) {
                Some(s) => s,
                // Boxed: the connect future is large, and the request future is moved.
                None => {
                    let sender = Box::pin(self.connect(&key)).await?;
                    connected();
                    sender
                }
            };
            let sent = match sender {
                Sender::H1(mut s) => {
                    // An HTTP/1.x request arrives with its Host set (the proxy's pipeline sets
                    // it); an h2 client's names its authority in `:authority` instead, and
                    // needs one to go out over HTTP/1.1.
                    if req.version() == http::Version::HTTP_2 && !req.headers().contains_key(HOST) {
                        let host =
                            HeaderValue::from_str(host_header(key.authority.as_str(), key.https))
                                .map_err(|_| UpstreamError::NoAuthority)?;
                        req.headers_mut().insert(HOST, host);
                    }
                    *req.uri_mut() = origin_form(&uri);
                    *req.version_mut() = http::Version::HTTP_11;
                    let response = s.try_send_request(req);
                    // Busy until its connection has read the response: pooled already.
                    self.put_back(&key, Sender::H1(s), now);
                    response.await
                }
                Sender::H2(mut s) => {
                    *req.uri_mut() = uri.clone();
                    s.try_send_request(req).await
                }
            };
            match sent {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if attempt < SEND_ATTEMPTS => req = unsent,
                    _ => return Err(UpstreamError::Http(e.into_error())),
                },
            }
        }
    }

    /// A sender ready now for `key`, dropping the stale ones met on the way (newest first,
    /// so a warm connection is reused before an older one).
    fn checkout(&self, key: &PoolKey, now: Instant) -> Option<Sender> {
        let mut pool = self.inner.pool.lock().unwrap_or_else(|e| e.into_inner());
        let list = pool.hosts.get_mut(key)?;
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            if list[i].is_stale(now, self.inner.idle_timeout) {
                list.swap_remove(i);
                continue;
            }
            if !list[i].sender.is_ready() {
                continue;
            }
            let entry = &mut list[i];
            if let Sender::H2(s) = &entry.sender {
                entry.used = now;
                return Some(Sender::H2(s.clone()));
            }
            return Some(list.swap_remove(i).sender);
        }
        None
    }

    /// Returns a sender to the pool, unless the authority already has the most it keeps;
    /// `now` is when its request was sent (one clock read serves the checkout and this).
    fn put_back(&self, key: &PoolKey, sender: Sender, now: Instant) {
        let mut pool = self.inner.pool.lock().unwrap_or_else(|e| e.into_inner());
        let list = match pool.hosts.get_mut(key) {
            Some(list) => list,
            None => pool.hosts.entry(key.clone()).or_default(),
        };
        if list.len() < self.inner.max_per_host {
            list.push(Pooled { sender, used: now });
        }
    }

    /// Opens a connection to `key`, HTTP/2 when TLS negotiated it, and pools an HTTP/2 one
    /// at once (it serves every request).
    async fn connect(&self, key: &PoolKey) -> Result<Sender, UpstreamError> {
        self.start_sweeper();
        let target = Uri::builder()
            .scheme(if key.https {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            })
            .authority(key.authority.clone())
            .path_and_query(PathAndQuery::from_static("/"))
            .build()
            .map_err(|_| UpstreamError::NoAuthority)?;
        let mut connector = self.inner.connectors[usize::from(key.h2)].clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(UpstreamError::Connect)?;
        let io = connector
            .call(target)
            .await
            .map_err(UpstreamError::Connect)?;
        let handshake = |e: hyper::Error| UpstreamError::Connect(Box::new(e));
        if io.connected().is_negotiated_h2() {
            let (sender, conn) = self.inner.h2.handshake(io).await.map_err(handshake)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream h2 connection ended with an error");
                }
            });
            self.put_back(key, Sender::H2(sender.clone()), Instant::now());
            Ok(Sender::H2(sender))
        } else {
            let (sender, conn) = self.inner.h1.handshake(io).await.map_err(handshake)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream connection ended with an error");
                }
            });
            Ok(Sender::H1(sender))
        }
    }

    /// Starts, once, the task closing connections left unused (it ends with the client).
    fn start_sweeper(&self) {
        {
            let mut pool = self.inner.pool.lock().unwrap_or_else(|e| e.into_inner());
            if std::mem::replace(&mut pool.sweeping, true) {
                return;
            }
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SWEEP_EVERY);
            every.tick().await;
            loop {
                every.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let now = Instant::now();
                let mut pool = inner.pool.lock().unwrap_or_else(|e| e.into_inner());
                pool.hosts.retain(|_, list| {
                    list.retain(|p| !p.is_stale(now, inner.idle_timeout));
                    !list.is_empty()
                });
            }
        });
    }
}

impl PoolKey {
    fn of(uri: &Uri, version: http::Version) -> Option<PoolKey> {
        let https = match uri.scheme_str()? {
            "https" => true,
            "http" => false,
            _ => return None,
        };
        Some(PoolKey {
            https,
            // h2 is only negotiated by TLS: plain upstreams share one HTTP/1.1 pool.
            h2: https && version == http::Version::HTTP_2,
            authority: uri.authority()?.clone(),
        })
    }
}

/// The `Host` value for an authority: without the scheme's default port when it is spelled
/// `:80` / `:443` (a suffix test: parsing the port cost 300 instructions per request; a port
/// with leading zeros stays, which names the same origin).
pub fn host_header(authority: &str, https: bool) -> &str {
    authority
        .strip_suffix(if https { ":443" } else { ":80" })
        .unwrap_or(authority)
}

/// The request target HTTP/1.1 sends to an origin server: the path and query.
fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(pq) if pq.as_str() != "/" => {
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = Some(pq.clone());
            Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
        }
        _ => Uri::from_static("/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_drops_the_default_port_only() {
        assert_eq!(host_header("api.example.com", true), "api.example.com");
        assert_eq!(host_header("api.example.com:443", true), "api.example.com");
        assert_eq!(
            host_header("api.example.com:443", false),
            "api.example.com:443"
        );
        assert_eq!(host_header("127.0.0.1:8080", false), "127.0.0.1:8080");
        assert_eq!(host_header("[::1]:80", false), "[::1]");
        assert_eq!(
            host_header("api.example.com:1443", true),
            "api.example.com:1443"
        );
        assert_eq!(
            host_header("api.example.com:8080", false),
            "api.example.com:8080"
        );
    }

    #[test]
    fn origin_form_keeps_path_and_query() {
        let u: Uri = "http://h:1/v1/x?a=1".parse().expect("uri");
        assert_eq!(origin_form(&u), "/v1/x?a=1");
        let u: Uri = "http://h:1".parse().expect("uri");
        assert_eq!(origin_form(&u), "/");
    }
}
