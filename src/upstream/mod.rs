//! The upstream side: one pooled hyper-util client speaking HTTP/1.1 and h2 (by ALPN) over
//! rustls with full certificate verification against the webpki roots, the system roots and
//! `tls.extra_upstream_roots`. Name resolution honours `[proxy.resolve]` overrides.

mod resolver;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub use resolver::{resolve, OverrideResolver};
pub use tls::client_config;

use crate::config::Config;
use crate::proxy::Body;

/// The pooled upstream client.
pub type UpstreamClient =
    Client<hyper_rustls::HttpsConnector<HttpConnector<OverrideResolver>>, Body>;

/// Errors building the upstream client (bad extra roots file).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamSetupError {
    #[error("cannot read tls.extra_upstream_roots {path}: {reason}")]
    Roots { path: String, reason: String },
}

/// Builds the client for a config.
pub fn build_client(config: &Config) -> Result<UpstreamClient, UpstreamSetupError> {
    let tls = client_config(config.tls.extra_upstream_roots.as_deref())?;
    let resolver = OverrideResolver::new(Arc::new(config.proxy.resolve.clone()));
    let mut http = HttpConnector::new_with_resolver(resolver);
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.proxy.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .http2_adaptive_window(true)
        .build(https))
}
