//! Listeners: the accept loop (connection limit, client allow-list), the first-bytes sniff,
//! and hyper HTTP/1.1 or HTTP/2 serving over any stream — plain TCP here, TLS for
//! intercepted tunnels — all feeding [`crate::proxy::handle`].

mod h1;
mod rewind;
mod sniff;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::Instrument;

pub use rewind::Rewind;
pub use sniff::{sniff, Sniff};

use crate::proxy::{self, error, ConnInfo, ProxyError, Shared};

/// Accepts proxy connections until shutdown starts.
pub async fn serve_proxy(listener: TcpListener, shared: Arc<Shared>) {
    let max = shared.runtime.load().config.proxy.max_connections;
    let limit = Arc::new(Semaphore::new(max));
    let mut shutdown = shared.shutdown.clone();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let config = shared.runtime.load().config.clone();
        let nets = &config.proxy.allowed_networks;
        if !nets.is_empty()
            && !peer.ip().is_loopback()
            && !nets.iter().any(|n| n.contains(peer.ip()))
        {
            tracing::info!(%peer, "connection from a network not in proxy.allowed_networks closed");
            continue;
        }
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            metrics::counter!("quota_proxy_connections_refused_total").increment(1);
            tokio::spawn(refuse(
                stream,
                ProxyError::Unavailable(format!("the proxy is at its limit of {max} connections")),
            ));
            continue;
        };
        // Debug level: at the default level a span per connection cost more than accepting
        // the connection (its fields are formatted when it is created); the few warnings
        // raised inside a connection name the peer themselves. Without debug logging the
        // connection is not instrumented at all: entering and leaving even a disabled span
        // on every poll cost 150 instructions per request.
        let shared2 = shared.clone();
        // Boxed: a connection's future (about 2 KiB) is otherwise moved into the task and
        // its stage rewritten whole several times over its life, 1.5k instructions of
        // copying per connection; the box is one allocation and one copy.
        let conn = Box::pin(async move {
            serve_tcp(stream, peer, shared2).await;
            drop(permit);
        });
        if tracing::enabled!(tracing::Level::DEBUG) {
            shared
                .tracker
                .spawn(conn.instrument(tracing::debug_span!("conn", %peer)));
        } else {
            shared.tracker.spawn(conn);
        }
    }
    tracing::info!("proxy listener closed");
}

/// Writes a JSON error on a raw connection and closes it.
async fn refuse<S: AsyncWrite + Unpin>(mut stream: S, err: ProxyError) {
    let bytes = error::raw_response(&err);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(&bytes).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

async fn serve_tcp(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let conn = Arc::new(ConnInfo::new(peer, None));
    serve_stream(stream, conn, shared).await;
}

/// Sniffs the first bytes of `stream` and serves it as HTTP/1.1 or h2c.
pub async fn serve_stream<S>(mut stream: S, conn: Arc<ConnInfo>, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = shared.runtime.load().config.clone();
    let (prefix, kind) = match read_head(
        &mut stream,
        BytesMut::new(),
        config.proxy.header_read_timeout,
        config.proxy.max_header_bytes,
        false,
    )
    .await
    {
        Some(found) => found,
        None => return,
    };
    match kind {
        Sniff::Http1 => h1::serve(stream, prefix.freeze(), conn, shared).await,
        // Boxed: hyper's HTTP/2 connection is large, and would otherwise size the task of
        // every connection, parked HTTP/1.1 ones included.
        Sniff::H2 => Box::pin(serve_http(stream, prefix.freeze(), true, conn, shared)).await,
        other => refuse_head(Rewind::new(prefix.freeze(), stream), other).await,
    }
}

/// Answers a first head that is not HTTP/1.1 or h2c, and closes.
async fn refuse_head<S: AsyncWrite + Unpin>(io: S, kind: Sniff) {
    match kind {
        Sniff::Invalid(err) => {
            tracing::debug!(error = %err, "bad request head");
            refuse(io, err).await;
        }
        Sniff::Tls => {
            let err = ProxyError::BadRequest(
                "TLS sent to the plain proxy port: use http:// for the proxy URL".into(),
            );
            tracing::debug!("TLS on the plain listener");
            refuse(io, err).await;
        }
        Sniff::H2 => {
            let err = ProxyError::BadRequest(
                "an HTTP/2 preface after HTTP/1.1 requests on the same connection".into(),
            );
            refuse(io, err).await;
        }
        Sniff::Http1 | Sniff::Partial => {}
    }
}

/// Reads until the first request head is complete (or is clearly bad), within `timeout`,
/// starting with the bytes already in `buf`. `None` when the peer closed or stalled: it is
/// dropped without an answer. No buffer is held while waiting for the first byte, so a
/// connection that is silent (new, or parked between requests) costs no read buffer.
/// A stall counts in `quota_proxy_header_timeouts_total`, except a kept-alive connection
/// that sent nothing (its idle limit, not a slow head).
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    mut buf: BytesMut,
    timeout: Duration,
    max: usize,
    kept_alive: bool,
) -> Option<(BytesMut, Sniff)> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if !buf.is_empty() {
            match sniff(&buf, max) {
                Sniff::Partial => {
                    if buf.len() > max + 4096 {
                        return Some((buf, Sniff::Invalid(ProxyError::HeadersTooLarge(max))));
                    }
                }
                kind => return Some((buf, kind)),
            }
        }
        let read = if buf.is_empty() {
            tokio::time::timeout_at(deadline, first_bytes(stream, &mut buf)).await
        } else {
            buf.reserve(4096);
            tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await
        };
        match read {
            Err(_) => {
                if !kept_alive || !buf.is_empty() {
                    tracing::debug!(
                        bytes = buf.len(),
                        "request head not complete within header_read_timeout; closing"
                    );
                    metrics::counter!("quota_proxy_header_timeouts_total").increment(1);
                }
                return None;
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "read failed");
                return None;
            }
            Ok(Ok(0)) => return None,
            Ok(Ok(_)) => {}
        }
    }
}

/// Waits for the first bytes with a stack buffer, then copies them into `buf`.
async fn first_bytes<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| {
        let mut tmp = [0u8; 2048];
        let mut rb = ReadBuf::new(&mut tmp);
        std::task::ready!(Pin::new(&mut *stream).poll_read(cx, &mut rb))?;
        // Exactly what arrived: a whole head in one read (the usual case) needs no more.
        buf.extend_from_slice(rb.filled());
        Poll::Ready(Ok(rb.filled().len()))
    })
    .await
}

/// Serves HTTP/1.1 or HTTP/2 on `io` (after `prefix`, bytes already read) until it closes or
/// shutdown drains it.
pub async fn serve_http<I>(io: I, prefix: Bytes, h2: bool, conn: Arc<ConnInfo>, shared: Arc<Shared>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if !h2 {
        return h1::serve(io, prefix, conn, shared).await;
    }
    let config = shared.runtime.load().config.clone();
    let mut shutdown = shared.shutdown.clone();
    let shared2 = shared.clone();
    let service = service_fn(move |req| proxy::handle(shared2.clone(), conn.clone(), req));
    let io = TokioIo::new(Rewind::new(prefix, io));
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_concurrent_streams(config.proxy.max_h2_streams)
        .max_header_list_size(u32::try_from(config.proxy.max_header_bytes).unwrap_or(u32::MAX))
        // Pinned rather than left to library defaults: streams the client resets before
        // they are served (rapid reset) and streams refused by us (floods) each end the
        // connection with GOAWAY past these counts (tests/h2_abuse.rs).
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(1024)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let conn = b.serve_connection(io, service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = proxy::stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
