//! A mock upstream for the comparison benchmark (`benches/compare.sh`): one tokio worker
//! (current_thread runtime), so it can share a core with the load generator.
//!
//! ```text
//! cargo build --release --example bench_upstream
//! target/release/examples/bench_upstream --listen 127.0.0.1:0            # HTTP/1.1 + h2c
//! target/release/examples/bench_upstream --listen 127.0.0.1:0 \
//!     --tls-cert cert.pem --tls-key key.pem                             # HTTPS, ALPN h2/http1.1
//! ```
//!
//! Prints `listening ADDR` on stdout once bound. Endpoints:
//! - `GET /sse?events=N&gap_ms=M`: N server-sent events, M ms apart (the first at once), each
//!   carrying its send time in µs since the Unix epoch: `data: {"i":0,"sent_us":...}`.
//! - any other path: a fixed ~100-byte JSON body (so route prefixes and probes need no setup).
//!
//! Plain connections speak HTTP/1.1, or HTTP/2 when the client opens with the h2 preface
//! (prior knowledge, as `h2load` does); TLS connections follow the negotiated ALPN.

// Wall-clock timestamps are the point of the SSE endpoint; the crate's clippy.toml bans
// SystemTime::now for the library, not for this tool.
#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    clippy::unwrap_used
)]

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::{header, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The fixed body of `GET /`: small, like a typical JSON API answer.
const BODY: &[u8] = br#"{"id":"bench-0001","object":"bench.response","ok":true,"items":[1,2,3],"note":"fixed body"}"#;
/// What an HTTP/2 client sends first on a cleartext connection (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Caps on `/sse` parameters, so a typo cannot keep a stream open for hours.
const MAX_EVENTS: u64 = 1_000_000;
const MAX_GAP_MS: u64 = 60_000;

#[derive(Parser)]
#[command(
    name = "bench_upstream",
    about = "Mock upstream for quota-proxy benchmarks"
)]
struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

type RespBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(args.listen, tls))
}

async fn serve(addr: SocketAddr, tls: Option<tokio_rustls::TlsAcceptor>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let mut out = std::io::stdout();
    writeln!(out, "listening {}", listener.local_addr()?)?;
    out.flush()?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE during a new-connection storm: back off rather than spin.
                eprintln!("bench_upstream: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let tls = tls.clone();
        tokio::spawn(async move {
            let result = match tls {
                Some(acceptor) => serve_tls(stream, acceptor).await,
                None => serve_plain(stream).await,
            };
            match result {
                // Clients of a load test hang up mid-request all the time (a proxy that
                // is stopped drops its pooled connections): stay quiet about those.
                Err(e) if !is_hangup(&e) => eprintln!("bench_upstream: connection error: {e:#}"),
                _ => {}
            }
        });
    }
}

/// A peer that went away: not worth a line on stderr.
fn is_hangup(e: &anyhow::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    e.chain().any(|cause| {
        cause
            .downcast_ref::<hyper::Error>()
            .is_some_and(|h| h.is_incomplete_message() || h.is_canceled())
            || cause.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    BrokenPipe | ConnectionAborted | ConnectionReset | UnexpectedEof
                )
            })
    })
}

async fn serve_plain(stream: TcpStream) -> anyhow::Result<()> {
    if starts_with_h2_preface(&stream).await? {
        serve_h2(TokioIo::new(stream)).await
    } else {
        serve_h1(TokioIo::new(stream)).await
    }
}

async fn serve_tls(stream: TcpStream, acceptor: tokio_rustls::TlsAcceptor) -> anyhow::Result<()> {
    let tls = acceptor.accept(stream).await?;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    if h2 {
        serve_h2(TokioIo::new(tls)).await
    } else {
        serve_h1(TokioIo::new(tls)).await
    }
}

async fn serve_h1<I>(io: I) -> anyhow::Result<()>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    hyper::server::conn::http1::Builder::new()
        .serve_connection(io, hyper::service::service_fn(handle))
        .await?;
    Ok(())
}

async fn serve_h2<I>(io: I) -> anyhow::Result<()>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(io, hyper::service::service_fn(handle))
        .await?;
    Ok(())
}

/// Peeks (without consuming) until the bytes seen either diverge from the h2 preface or
/// complete it. An HTTP/1.1 request line diverges within its first bytes.
async fn starts_with_h2_preface(stream: &TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 || buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // A partial preface (rare: the client's first segment was split). `peek` would
        // return the same bytes at once, so wait a little for the rest.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn handle(req: Request<Incoming>) -> Result<Response<RespBody>, Infallible> {
    let resp = if req.uri().path() == "/sse" {
        match sse_params(req.uri().query().unwrap_or("")) {
            Ok((events, gap)) => sse(events, gap),
            Err(msg) => plain(StatusCode::BAD_REQUEST, msg),
        }
    } else {
        // Drain a request body, if any, so the connection stays reusable.
        let _ = req.into_body().collect().await;
        Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(BODY)).boxed())
            .unwrap()
    };
    Ok(resp)
}

fn plain(status: StatusCode, msg: String) -> Response<RespBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from(msg + "\n")).boxed())
        .unwrap()
}

/// Parses `events=N&gap_ms=M` (defaults 10 and 100).
fn sse_params(query: &str) -> Result<(u64, Duration), String> {
    let (mut events, mut gap_ms) = (10u64, 100u64);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let n: u64 = v
            .parse()
            .map_err(|_| format!("{k}: expected a whole number, got {v:?}"))?;
        match k {
            "events" => events = n.min(MAX_EVENTS),
            "gap_ms" => gap_ms = n.min(MAX_GAP_MS),
            _ => return Err(format!("unknown parameter {k:?} (expected events, gap_ms)")),
        }
    }
    Ok((events, Duration::from_millis(gap_ms)))
}

/// Streams `events` SSE events `gap` apart. Each is stamped just before it is handed to
/// hyper, so a client can compute per-event delivery latency on the same machine.
fn sse(events: u64, gap: Duration) -> Response<RespBody> {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        for i in 0..events {
            // Scheduled from the start, not from the previous send: gaps do not drift.
            let due = start + gap * u32::try_from(i).unwrap_or(u32::MAX);
            tokio::time::sleep_until(due).await;
            let sent_us = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros())
                .unwrap_or(0);
            let event =
                format!("id: {i}\nevent: tick\ndata: {{\"i\":{i},\"sent_us\":{sent_us}}}\n\n");
            if tx.send(Bytes::from(event)).await.is_err() {
                return; // the client went away
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(ChannelBody { rx }.boxed())
        .unwrap()
}

/// A response body fed by a channel: one data frame per message, ends when the sender drops.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

fn tls_acceptor(cert: &PathBuf, key: &PathBuf) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).with_context(|| format!("cannot open {}", cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("{}: bad PEM", cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{}: no certificate", cert.display());
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).with_context(|| format!("cannot open {}", key.display()))?,
    ))
    .with_context(|| format!("{}: bad PEM", key.display()))?
    .with_context(|| format!("{}: no private key", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
