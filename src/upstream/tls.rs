//! rustls client configuration for upstream connections: always verified.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;

use super::UpstreamSetupError;

/// A verifying client config (ring provider) with webpki roots, system roots and extra roots.
pub fn client_config(
    extra_roots: Option<&Path>,
) -> Result<rustls::ClientConfig, UpstreamSetupError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A malformed system certificate is skipped, as every TLS client does.
        let _ = roots.add(cert);
    }
    if let Some(path) = extra_roots {
        let err = |reason: String| UpstreamSetupError::Roots {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| err(e.to_string()))?;
            roots.add(cert).map_err(|e| err(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(err("no PEM certificates in the file".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamSetupError::Roots {
            path: String::new(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}
