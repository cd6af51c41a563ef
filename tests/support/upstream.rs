//! In-process mock upstreams on `127.0.0.1:0`.
//!
//! Plain mocks speak HTTP/1.1 and prior-knowledge h2c (chosen by sniffing the h2 preface);
//! TLS mocks speak HTTP/1.1 and h2 chosen by ALPN. Every request is recorded (method, URI with
//! query, version, headers, body) before the handler runs, and accepted TCP connections are
//! counted, so tests assert on what the upstream actually received.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::ca::{server_config, Leaf};
pub use super::handlers::{Handler, MockBody};

/// One request as the mock upstream received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Whether it arrived over TLS.
    pub tls: bool,
    /// The SNI the client sent (TLS only).
    pub sni: Option<String>,
    /// The ALPN protocol negotiated (TLS only).
    pub alpn: Option<String>,
}

impl Recorded {
    /// The first value of header `name`, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Path and query as sent (`/v1/x?q=1`).
    pub fn path_and_query(&self) -> String {
        self.uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default()
    }

    /// The `Host` header, or for HTTP/2 the `:authority`.
    pub fn authority(&self) -> Option<String> {
        self.header("host")
            .map(str::to_string)
            .or_else(|| self.uri.authority().map(|a| a.as_str().to_string()))
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<Recorded>>,
    connections: AtomicUsize,
    changed: Notify,
}

/// A running mock upstream; stops accepting when dropped.
pub struct MockUpstream {
    pub addr: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

#[derive(Clone)]
struct TlsInfo {
    sni: Option<String>,
    alpn: Option<String>,
}

impl MockUpstream {
    /// A plain HTTP/1.1 + h2c mock.
    pub async fn plain(handler: Handler) -> MockUpstream {
        Self::start(handler, None).await
    }

    /// A TLS mock presenting `leaf` (HTTP/1.1 and h2 by ALPN).
    pub async fn tls(handler: Handler, leaf: &Leaf) -> MockUpstream {
        Self::start(handler, Some(server_config(leaf, &["h2", "http/1.1"]))).await
    }

    /// A TLS mock that only offers HTTP/1.1 by ALPN.
    pub async fn tls_h1_only(handler: Handler, leaf: &Leaf) -> MockUpstream {
        Self::start(handler, Some(server_config(leaf, &["http/1.1"]))).await
    }

    /// [`tls_h1_only`](Self::tls_h1_only) whose every new connection waits `delay` before
    /// its TLS handshake (an upstream far away, or busy): a connection is ready `delay`
    /// after the proxy opens it.
    pub async fn tls_h1_only_slow(handler: Handler, leaf: &Leaf, delay: Duration) -> MockUpstream {
        let tls = server_config(leaf, &["http/1.1"]);
        Self::start_with(handler, Some(tls), delay).await
    }

    async fn start(handler: Handler, tls: Option<Arc<rustls::ServerConfig>>) -> MockUpstream {
        Self::start_with(handler, tls, Duration::ZERO).await
    }

    async fn start_with(
        handler: Handler,
        tls: Option<Arc<rustls::ServerConfig>>,
        handshake_delay: Duration,
    ) -> MockUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind mock upstream");
        let addr = listener.local_addr().expect("mock addr");
        let shared = Arc::new(Shared::default());
        let is_tls = tls.is_some();
        let accept = tokio::spawn(accept_loop(
            listener,
            handler,
            tls,
            handshake_delay,
            shared.clone(),
        ));
        MockUpstream {
            addr,
            tls: is_tls,
            shared,
            accept,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT` (or `https://` for a TLS mock).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port())
    }

    /// `SCHEME://host:PORT`, for a name the proxy resolves to 127.0.0.1.
    pub fn url_for(&self, host: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{host}:{}", self.port())
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().expect("requests lock").clone()
    }

    /// Number of TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// The only request received so far; panics unless exactly one arrived.
    pub fn single_request(&self) -> Recorded {
        let reqs = self.requests();
        assert_eq!(
            reqs.len(),
            1,
            "expected exactly one upstream request, got {reqs:#?}"
        );
        reqs.into_iter().next().expect("one request")
    }

    /// Waits until at least `n` requests arrived (panics after `timeout`).
    pub async fn wait_requests(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        self.wait_for(timeout, |s| s.requests.lock().expect("lock").len() >= n)
            .await
            .unwrap_or_else(|| panic!("mock upstream: fewer than {n} requests after {timeout:?}"));
        self.requests()
    }

    /// Waits until at least `n` connections were accepted (panics after `timeout`).
    pub async fn wait_connections(&self, n: usize, timeout: Duration) {
        self.wait_for(timeout, |s| s.connections.load(Ordering::SeqCst) >= n)
            .await
            .unwrap_or_else(|| {
                panic!("mock upstream: fewer than {n} connections after {timeout:?}")
            });
    }

    /// Asserts no connection was accepted so far: opens one itself and checks it is the only
    /// one once the mock has seen it (accepts are processed in order, so an earlier connection,
    /// e.g. from the proxy, would show up first).
    pub async fn assert_no_connection_made(&self) {
        let _probe = TcpStream::connect(self.addr)
            .await
            .expect("probe connection to mock");
        self.wait_connections(1, Duration::from_secs(5)).await;
        assert_eq!(
            self.connections(),
            1,
            "something (the proxy?) connected to this upstream"
        );
        assert_eq!(self.requests().len(), 0, "this upstream received requests");
    }

    async fn wait_for(&self, timeout: Duration, cond: impl Fn(&Shared) -> bool) -> Option<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if cond(&self.shared) {
                return Some(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    handler: Handler,
    tls: Option<Arc<rustls::ServerConfig>>,
    handshake_delay: Duration,
    shared: Arc<Shared>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        shared.changed.notify_waiters();
        let (handler, shared, tls) = (handler.clone(), shared.clone(), tls.clone());
        tokio::spawn(async move {
            match tls {
                None => {
                    let h2 = sniff_h2_preface(&stream).await;
                    serve(stream, h2, None, handler, shared).await;
                }
                Some(cfg) => {
                    tokio::time::sleep(handshake_delay).await;
                    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                    let Ok(tls_stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let (_, conn) = tls_stream.get_ref();
                    let info = TlsInfo {
                        sni: conn.server_name().map(str::to_string),
                        alpn: conn
                            .alpn_protocol()
                            .map(|p| String::from_utf8_lossy(p).into_owned()),
                    };
                    let h2 = info.alpn.as_deref() == Some("h2");
                    serve(tls_stream, h2, Some(info), handler, shared).await;
                }
            }
        });
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// True when the client opens with the HTTP/2 connection preface (prior-knowledge h2c).
async fn sniff_h2_preface(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 24];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        if buf[..n] != H2_PREFACE[..n] {
            return false;
        }
        if n == H2_PREFACE.len() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        // peek returns at once while bytes are buffered; wait for more to arrive.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn serve<I>(io: I, h2: bool, tls: Option<TlsInfo>, handler: Handler, shared: Arc<Shared>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req: Request<Incoming>| {
        let (handler, shared, tls) = (handler.clone(), shared.clone(), tls.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let rec = Recorded {
                method: parts.method,
                uri: parts.uri,
                version: parts.version,
                headers: parts.headers,
                body,
                tls: tls.is_some(),
                sni: tls.as_ref().and_then(|t| t.sni.clone()),
                alpn: tls.as_ref().and_then(|t| t.alpn.clone()),
            };
            shared
                .requests
                .lock()
                .expect("requests lock")
                .push(rec.clone());
            shared.changed.notify_waiters();
            Ok::<Response<MockBody>, Infallible>(handler(rec).await)
        }
    });
    let io = TokioIo::new(io);
    if h2 {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc)
            .await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .await;
    }
}

/// Boxed future returned by handlers.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Response<MockBody>> + Send>>;
