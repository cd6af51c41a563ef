//! Clients that talk to the proxy: absolute-form and origin-form HTTP/1.1, raw bytes, CONNECT
//! tunnels, TLS over a tunnel trusting a test CA, streaming reads, and the admin API.
//!
//! Every helper bounds its waits with [`IO_TIMEOUT`] so a misbehaving proxy fails a test
//! instead of hanging it.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

use super::ca::TestCa;

/// Upper bound on any single client wait.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A complete response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON (panics with the body when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }
}

/// Asserts `resp` is a proxy-made error: `status`, header `x-quota-proxy: <marker>`, and a body
/// `{"error":{"type":..,"code":..,"message":..}}`. Returns the `error` object.
pub fn assert_proxy_error(resp: &Resp, status: u16, marker: &str) -> serde_json::Value {
    assert_eq!(
        resp.status.as_u16(),
        status,
        "status; body: {}",
        resp.text()
    );
    assert_eq!(
        resp.header("x-quota-proxy"),
        Some(marker),
        "x-quota-proxy header; headers: {:?}",
        resp.headers
    );
    let v = resp.json();
    let err = v
        .get("error")
        .unwrap_or_else(|| panic!("no `error` object in {v}"))
        .clone();
    for field in ["type", "code", "message"] {
        assert!(
            err.get(field)
                .and_then(|f| f.as_str())
                .is_some_and(|s| !s.is_empty()),
            "error.{field} missing or empty in {v}"
        );
    }
    err
}

/// [`assert_proxy_error`] for an error the proxy made itself (`x-quota-proxy: error`) whose
/// message contains `part`.
pub fn assert_error_saying(resp: &Resp, status: u16, part: &str) {
    let err = assert_proxy_error(resp, status, "error");
    assert!(
        err["message"].as_str().is_some_and(|m| m.contains(part)),
        "expected a message containing {part:?}: {err}"
    );
}

/// Builds a request; `Host` is set from the URL's authority unless `headers` has one.
pub fn build_request(
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(uri);
    let has_host = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host"));
    if !has_host {
        if let Some(auth) = uri
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.authority().cloned())
        {
            b = b.header("host", auth.as_str());
        }
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body.into())).expect("build request")
}

async fn with_timeout<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(IO_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out after {IO_TIMEOUT:?}"))
}

/// Sends `req` over `io` with HTTP/1.1 and reads the whole response.
pub async fn send_h1<I>(io: I, req: Request<Full<Bytes>>) -> Result<Resp, String>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("h1 handshake: {e}"))?;
    tokio::spawn(conn);
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("send: {e}"))?;
    collect(resp).await
}

/// Sends `req` over `io` with HTTP/2 (prior knowledge or after ALPN h2).
pub async fn send_h2<I>(io: I, req: Request<Full<Bytes>>) -> Result<Resp, String>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
    tokio::spawn(conn);
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("send: {e}"))?;
    collect(resp).await
}

async fn collect(resp: http::Response<hyper::body::Incoming>) -> Result<Resp, String> {
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(Resp {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

/// An open HTTP/1.1 connection to `addr` for several requests (keep-alive).
pub async fn open_h1(
    addr: SocketAddr,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
    tokio::time::timeout(IO_TIMEOUT, async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("h1 handshake: {e}"))?;
        tokio::spawn(conn);
        Ok(sender)
    })
    .await
    .map_err(|_| "connect timed out".to_string())?
}

/// Sends one request on a connection from [`open_h1`].
pub async fn send_on(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Result<Resp, String> {
    tokio::time::timeout(IO_TIMEOUT, async {
        sender
            .ready()
            .await
            .map_err(|e| format!("connection not ready: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("send: {e}"))?;
        collect(resp).await
    })
    .await
    .map_err(|_| format!("timed out after {IO_TIMEOUT:?}"))?
}

/// Like [`forward`], returning connection errors instead of panicking.
pub async fn try_forward(
    proxy: SocketAddr,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Resp, String> {
    let req = build_request(method, url, headers, body);
    tokio::time::timeout(IO_TIMEOUT, async {
        let stream = TcpStream::connect(proxy)
            .await
            .map_err(|e| format!("connect to proxy: {e}"))?;
        send_h1(stream, req).await
    })
    .await
    .map_err(|_| format!("timed out after {IO_TIMEOUT:?}"))?
}

/// Sends an absolute-form HTTP/1.1 request (`GET http://host/path`) to the proxy.
pub async fn forward(
    proxy: SocketAddr,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Resp {
    try_forward(proxy, method, url, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {url} via proxy {proxy}: {e}"))
}

/// Sends an origin-form HTTP/1.1 request (`GET /mock/v1/x`) to the proxy (route mode).
pub async fn route(
    proxy: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Resp {
    let mut req = build_request(method, path, headers, body);
    if !req.headers().contains_key("host") {
        req.headers_mut()
            .insert("host", proxy.to_string().parse().expect("host value"));
    }
    with_timeout("route request", async {
        let stream = TcpStream::connect(proxy).await.expect("connect to proxy");
        send_h1(stream, req)
            .await
            .unwrap_or_else(|e| panic!("{method} {path} via proxy {proxy}: {e}"))
    })
    .await
}

/// Writes `bytes` to `addr` and reads the response: until the peer closes, until one complete
/// response with a `Content-Length` has arrived, or until `IO_TIMEOUT`. Returns what was read.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("connect for raw request");
    // The peer may close before reading everything (e.g. on a too-large head): ignore.
    let _ = stream.write_all(bytes).await;
    let out = read_response_bytes(&mut stream, IO_TIMEOUT).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads from `stream` until close, one complete Content-Length response, or `timeout`.
pub async fn read_response_bytes<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if response_complete(&out) {
            return out;
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

fn response_complete(data: &[u8]) -> bool {
    let Some(end) = find(data, b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().ok())
        })
        .flatten();
    matches!(len, Some(len) if data.len() >= end + 4 + len)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The status code of a raw HTTP/1.x response text, if it has one.
pub fn raw_status(resp: &str) -> Option<u16> {
    let line = resp.lines().next()?;
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// The body of a raw response text (after the blank line).
pub fn raw_body(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

/// A CONNECT the proxy refused.
#[derive(Debug)]
pub struct TunnelRefused {
    pub status: u16,
    /// The raw response text (head and body).
    pub response: String,
}

impl TunnelRefused {
    pub fn body(&self) -> &str {
        raw_body(&self.response)
    }

    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.response.split("\r\n\r\n").next().unwrap_or("");
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    /// The body parsed as JSON (panics when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.body()).unwrap_or_else(|e| {
            panic!(
                "CONNECT refusal body is not JSON ({e}): {:?}",
                self.response
            )
        })
    }
}

/// Sends `CONNECT authority` and, on a 2xx, returns the stream positioned after the response
/// head (nothing of the tunnel is consumed). Otherwise returns the refusal.
pub async fn connect_tunnel(
    proxy: SocketAddr,
    authority: &str,
) -> Result<TcpStream, TunnelRefused> {
    with_timeout("CONNECT", async {
        let mut stream = TcpStream::connect(proxy).await.expect("connect to proxy");
        let req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
        stream
            .write_all(req.as_bytes())
            .await
            .expect("write CONNECT");
        // Read the head byte by byte so no tunnel bytes are swallowed.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => {
                    let text = String::from_utf8_lossy(&head).into_owned();
                    return Err(TunnelRefused {
                        status: raw_status(&text).unwrap_or(0),
                        response: text,
                    });
                }
            }
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        let status = raw_status(&text).unwrap_or(0);
        if (200..300).contains(&status) {
            return Ok(stream);
        }
        let mut rest = head;
        let mut s = stream;
        // Read the refusal's body (Content-Length) or until close.
        let body_len = text.to_ascii_lowercase().lines().find_map(|l| {
            l.strip_prefix("content-length:")
                .and_then(|v| v.trim().parse::<usize>().ok())
        });
        let head_len = rest.len();
        let mut buf = [0u8; 4096];
        loop {
            if body_len.is_some_and(|n| rest.len() >= head_len + n) {
                break;
            }
            match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => rest.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        Err(TunnelRefused {
            status,
            response: String::from_utf8_lossy(&rest).into_owned(),
        })
    })
    .await
}

/// Starts TLS over `io` to `server_name`, trusting only `ca`, offering `alpn`.
pub async fn tls_connect<I>(
    io: I,
    ca: &TestCa,
    server_name: &str,
    alpn: &[&str],
) -> Result<TlsStream<I>, std::io::Error>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    tls_connect_config(io, ca.client_config(alpn), server_name).await
}

/// A CONNECT to `authority` through `proxy`, then TLS to `host` trusting the proxy's own CA
/// (`certs/ca.crt` under `proxy_dir`): an intercepted HTTP/1.1 session.
pub async fn intercepted_h1_tls(
    proxy: SocketAddr,
    proxy_dir: &std::path::Path,
    authority: &str,
    host: &str,
) -> TlsStream<TcpStream> {
    let tunnel = connect_tunnel(proxy, authority)
        .await
        .expect("CONNECT accepted");
    let roots = super::ca::roots_from_pem_file(&proxy_dir.join("certs/ca.crt"));
    tls_connect_config(
        tunnel,
        super::ca::client_config_for_roots(roots, &["http/1.1"]),
        host,
    )
    .await
    .expect("TLS with the proxy's leaf")
}

/// Starts TLS over `io` to `server_name` with a given client config (see [`super::ca`]).
pub async fn tls_connect_config<I>(
    io: I,
    config: std::sync::Arc<rustls::ClientConfig>,
    server_name: &str,
) -> Result<TlsStream<I>, std::io::Error>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tokio::time::timeout(IO_TIMEOUT, connector.connect(name, io))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}

/// The ALPN protocol a client TLS stream negotiated.
pub fn negotiated_alpn<I>(tls: &TlsStream<I>) -> Option<String> {
    tls.get_ref()
        .1
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned())
}

/// One body frame and when the client got it.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub at: Instant,
    pub data: Bytes,
}

/// A response whose body is read as it arrives.
pub struct StreamResp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    rx: mpsc::UnboundedReceiver<Result<Chunk, String>>,
    pending: Vec<u8>,
}

impl StreamResp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The next body frame, `None` at the end of the body; panics on error or after `timeout`.
    pub async fn next_chunk(&mut self, timeout: Duration) -> Option<Chunk> {
        match tokio::time::timeout(timeout, self.rx.recv()).await {
            Err(_) => panic!("no body frame within {timeout:?}"),
            Ok(None) => None,
            Ok(Some(Err(e))) => panic!("body error: {e}"),
            Ok(Some(Ok(c))) => Some(c),
        }
    }

    /// Reads until the body contains `needle`; returns the text through `needle` and keeps the
    /// rest for the next call. Panics if the body ends or `timeout` passes first.
    pub async fn read_until(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pos) = find(&self.pending, needle.as_bytes()) {
                let rest = self.pending.split_off(pos + needle.len());
                let got = std::mem::replace(&mut self.pending, rest);
                return String::from_utf8_lossy(&got).into_owned();
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => panic!(
                    "{needle:?} not received within {timeout:?}; got so far {:?}",
                    String::from_utf8_lossy(&self.pending)
                ),
                Ok(None) => panic!(
                    "body ended before {needle:?}; got {:?}",
                    String::from_utf8_lossy(&self.pending)
                ),
                Ok(Some(Err(e))) => panic!("body error before {needle:?}: {e}"),
                Ok(Some(Ok(c))) => self.pending.extend_from_slice(&c.data),
            }
        }
    }

    /// Reads the rest of the body (until its end, panicking after `timeout`).
    pub async fn read_to_end(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => panic!("body did not end within {timeout:?}"),
                Ok(None) => {
                    return String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned()
                }
                Ok(Some(Err(e))) => panic!("body error: {e}"),
                Ok(Some(Ok(c))) => self.pending.extend_from_slice(&c.data),
            }
        }
    }
}

/// Sends `req` over `io` (HTTP/1.1) and returns as soon as the response head arrives; the body
/// frames are delivered by [`StreamResp`] as they arrive.
pub async fn send_h1_streaming<I>(io: I, req: Request<Full<Bytes>>) -> StreamResp
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    with_timeout("streaming request", async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .expect("h1 handshake");
        tokio::spawn(conn);
        let resp = sender
            .send_request(req)
            .await
            .expect("send streaming request");
        let (parts, mut body) = resp.into_parts();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(frame) = body.frame().await {
                let item = match frame {
                    Ok(f) => match f.into_data() {
                        Ok(data) => Ok(Chunk {
                            at: Instant::now(),
                            data,
                        }),
                        Err(_) => continue, // trailers
                    },
                    Err(e) => Err(e.to_string()),
                };
                if tx.send(item).is_err() {
                    return;
                }
            }
        });
        StreamResp {
            status: parts.status,
            headers: parts.headers,
            rx,
            pending: Vec::new(),
        }
    })
    .await
}

/// Absolute-form request to the proxy whose body is read as it arrives.
pub async fn forward_streaming(
    proxy: SocketAddr,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> StreamResp {
    let req = build_request(method, url, headers, body);
    let stream = TcpStream::connect(proxy).await.expect("connect to proxy");
    send_h1_streaming(stream, req).await
}

/// Origin-form (route mode) request to the proxy whose body is read as it arrives.
pub async fn route_streaming(
    proxy: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> StreamResp {
    let mut req = build_request(method, path, headers, body);
    if !req.headers().contains_key("host") {
        req.headers_mut()
            .insert("host", proxy.to_string().parse().expect("host value"));
    }
    let stream = TcpStream::connect(proxy).await.expect("connect to proxy");
    send_h1_streaming(stream, req).await
}

/// `GET` on the admin listener: (status, body).
pub async fn admin_get(admin: SocketAddr, path: &str) -> (StatusCode, String) {
    let r = route(admin, "GET", path, &[], Bytes::new()).await;
    (r.status, r.text())
}

/// `POST` on the admin listener: (status, body).
pub async fn admin_post(admin: SocketAddr, path: &str, body: &str) -> (StatusCode, String) {
    let r = route(
        admin,
        "POST",
        path,
        &[],
        Bytes::copy_from_slice(body.as_bytes()),
    )
    .await;
    (r.status, r.text())
}

/// Lines of a Prometheus exposition that start with `metric` and contain every `labels` entry
/// (written `name="value"`).
pub fn metric_lines<'a>(metrics: &'a str, metric: &str, labels: &[&str]) -> Vec<&'a str> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ', '_']))
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .collect()
}

/// The sum of the values of the samples [`metric_lines`] selects (exact metric name only).
pub fn metric_value(metrics: &str, metric: &str, labels: &[&str]) -> f64 {
    metric_lines(metrics, metric, labels)
        .into_iter()
        .filter(|l| l[metric.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}
