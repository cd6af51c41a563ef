//! CONNECT: the policy is decided before the 200 (deny, port, private destinations); then a
//! blind TCP tunnel, or TLS interception for providers with `intercept = true`.

use std::sync::Arc;

use std::future::Future;

use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::{Instrument, Span};

use super::handoff::BoxIo;
use super::{
    count, error, headers, split_authority, Body, ConnInfo, Intercepted, ProxyError, Runtime,
    Shared,
};
use crate::config::Unmatched;
use crate::policy;

pub async fn handle(
    shared: &Arc<Shared>,
    runtime: &Arc<Runtime>,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let config = &runtime.config;
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .ok_or_else(|| ProxyError::BadRequest("CONNECT needs host:port".into()))?;
    let (host, port) = match split_authority(&authority, 0) {
        Some((h, p)) if p != 0 => (h, p),
        _ => {
            return Err(ProxyError::BadRequest(format!(
                "CONNECT target {authority:?} is not host:port"
            )))
        }
    };
    let hints = headers::take_caller_hints(req.headers_mut()).map_err(ProxyError::BadRequest)?;
    super::forward::check_proxy_auth(config, &hints, conn)?;
    let provider = policy::match_host(config, &host, port).cloned();
    let label = provider
        .as_ref()
        .map(|p| p.name.as_str())
        .unwrap_or("unmatched")
        .to_string();
    if provider.is_none() {
        if config.proxy.unmatched == Unmatched::Deny {
            count(&label, "denied");
            return Err(ProxyError::Forbidden(format!(
                "{host} is not a configured provider and unmatched = \"deny\""
            )));
        }
        if !config.proxy.connect_ports.contains(&port) {
            count(&label, "denied");
            return Err(ProxyError::Forbidden(format!(
                "CONNECT to port {port} is not allowed (proxy.connect_ports)"
            )));
        }
    }
    if let Some(p) = provider.as_ref().filter(|p| p.intercept) {
        let Some(leaves) = runtime.leaves.clone() else {
            return Err(ProxyError::Unavailable(
                "interception is configured but no CA is loaded".into(),
            ));
        };
        let icpt = Intercepted {
            host: host.as_str().into(),
            port,
            client: hints.client.to_string(),
            tls: true,
        };
        let (shared2, peer) = (shared.clone(), conn.peer);
        let span = tracing::debug_span!("intercept", %host, port, provider = %p.name);
        after_ok(shared, conn, req, span, move |io| {
            super::intercept::serve(io, peer, icpt, leaves, shared2)
        });
        return Ok(ok_response());
    }
    let check_private = provider.is_none() && !config.proxy.allow_private_destinations;
    let upstream = super::forward::connect_tcp(config, &host, port, check_private).await?;
    count(&label, "tunneled");
    let span = tracing::debug_span!("tunnel", %host, port, provider = %label);
    after_ok(shared, conn, req, span, move |io| tunnel(io, upstream));
    Ok(ok_response())
}

fn ok_response() -> Response<Body> {
    let mut resp = Response::new(error::empty());
    *resp.status_mut() = StatusCode::OK;
    resp
}

/// Runs `serve` on the client's stream once the 200 is written: for HTTP/1.1 the listener
/// runs it on the raw stream ([`ConnInfo::handoff`]); for HTTP/2 (extended CONNECT) it
/// waits for hyper's upgrade.
fn after_ok<F, Fut>(
    shared: &Arc<Shared>,
    conn: &ConnInfo,
    req: Request<Incoming>,
    span: Span,
    serve: F,
) where
    F: FnOnce(BoxIo) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    if req.version() == Version::HTTP_2 {
        shared.tracker.spawn(
            async move {
                match hyper::upgrade::on(req).await {
                    Ok(upgraded) => serve(Box::new(TokioIo::new(upgraded))).await,
                    Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
                }
            }
            .instrument(span),
        );
    } else {
        conn.handoff
            .set(Box::new(move |io| Box::pin(serve(io).instrument(span))));
    }
}

async fn tunnel(mut client: BoxIo, mut upstream: TcpStream) {
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => tracing::debug!(bytes_up = up, bytes_down = down, "tunnel closed"),
        Err(e) => tracing::debug!(error = %e, "tunnel ended with an error"),
    }
}
