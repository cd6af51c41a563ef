//! Inside an intercepted CONNECT: a TLS ClientHello is answered with a leaf for the CONNECT
//! host (SNI must agree), ALPN picks h2 or HTTP/1.1, and each inner request goes through the
//! same pipeline as plain traffic. A non-TLS first byte is served as plain HTTP in the tunnel.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_rustls::LazyConfigAcceptor;

use super::{ConnInfo, Intercepted, Shared};
use crate::listener::{serve_http, serve_stream, Rewind};
use crate::tls::LeafCache;

/// Boxed so the recursion (pipeline → CONNECT → pipeline) has a nameable, `Send` type.
pub fn serve<S>(
    io: S,
    peer: SocketAddr,
    icpt: Intercepted,
    leaves: Arc<LeafCache>,
    shared: Arc<Shared>,
) -> Pin<Box<dyn Future<Output = ()> + Send>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Box::pin(serve_inner(io, peer, icpt, leaves, shared))
}

async fn serve_inner<S>(
    mut io: S,
    peer: SocketAddr,
    mut icpt: Intercepted,
    leaves: Arc<LeafCache>,
    shared: Arc<Shared>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let timeout = shared.runtime.load().config.proxy.header_read_timeout;
    let mut first = BytesMut::with_capacity(512);
    match tokio::time::timeout(timeout, io.read_buf(&mut first)).await {
        Ok(Ok(n)) if n > 0 => {}
        _ => return,
    }
    let io = Rewind::new(first.clone().freeze(), io);
    if first[0] != 0x16 {
        icpt.tls = false;
        let conn = Arc::new(ConnInfo::new(peer, Some(icpt)));
        return serve_stream(io, conn, shared).await;
    }
    let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
    let start = match tokio::time::timeout(timeout, acceptor).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "bad TLS ClientHello in an intercepted tunnel");
            metrics::counter!("quota_proxy_tls_handshake_errors_total", "reason" => "client_hello")
                .increment(1);
            return;
        }
        Err(_) => return,
    };
    if let Some(sni) = start.client_hello().server_name() {
        let sni = sni.trim_end_matches('.');
        if !sni.eq_ignore_ascii_case(&icpt.host) {
            tracing::warn!(%peer, sni, connect = %icpt.host, "TLS SNI does not match the CONNECT host; connection refused");
            metrics::counter!("quota_proxy_tls_handshake_errors_total", "reason" => "sni_mismatch")
                .increment(1);
            return;
        }
    }
    let config = match leaves.get(&icpt.host) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(%peer, host = %icpt.host, error = %e, "cannot mint a leaf certificate");
            return;
        }
    };
    let tls = match tokio::time::timeout(timeout, start.into_stream(config)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake with the client failed");
            metrics::counter!("quota_proxy_tls_handshake_errors_total", "reason" => "handshake")
                .increment(1);
            return;
        }
        Err(_) => return,
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let conn = Arc::new(ConnInfo::new(peer, Some(icpt)));
    serve_http(tls, Bytes::new(), h2, conn, shared).await;
}
