//! The upstream side: one pooled client ([`client`]) speaking HTTP/1.1 and h2 (by ALPN) over
//! rustls with full certificate verification against the webpki roots, the system roots and
//! `tls.extra_upstream_roots`. Name resolution honours `[proxy.resolve]` overrides.

mod client;
mod resolver;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;

pub use client::{host_header, UpstreamClient, UpstreamError};
pub use resolver::{resolve, OverrideResolver};
pub use tls::client_config;

use crate::config::Config;

/// Idle upstream connections are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Connections kept per upstream scheme and authority.
const POOL_MAX_PER_HOST: usize = 256;

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
    let h1_only = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http.clone());
    let h1_or_h2 = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(UpstreamClient::new(
        [h1_only, h1_or_h2],
        POOL_IDLE_TIMEOUT,
        POOL_MAX_PER_HOST,
    ))
}
