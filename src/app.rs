//! Wiring: build the runtime from a config, serve the proxy and admin listeners, reload on
//! demand, and drain on shutdown. Entry points take bound listeners and a shutdown future so
//! tests and embedders choose the ports.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::config::{self, Config};
use crate::proxy::{Runtime, Shared};
use crate::runtime::Persistent;
use crate::tls::{self, CaFiles, CertificateAuthority, LeafCache};
use crate::upstream::{self, UpstreamSetupError};

/// Errors that stop the proxy from starting.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Upstream(#[from] UpstreamSetupError),
    #[error("TLS interception CA: {0}")]
    Ca(#[from] tls::CaError),
}

/// Builds everything a config produces.
pub fn build_runtime(config: Config, persistent: &Persistent) -> Result<Runtime, AppError> {
    let client = upstream::build_client(&config)?;
    let providers = crate::runtime::providers(&config, persistent);
    let leaves = if config.intercepts() {
        Some(Arc::new(load_or_create_ca(&config)?))
    } else {
        None
    };
    Ok(Runtime {
        config: Arc::new(config),
        client,
        leaves,
        providers,
    })
}

/// Loads the CA for interception, creating it on first run (and saying how to trust it).
fn load_or_create_ca(config: &Config) -> Result<LeafCache, AppError> {
    let files = CaFiles {
        cert: config.tls.ca_cert.clone(),
        key: config.tls.ca_key.clone(),
    };
    if !files.cert.exists() && !files.key.exists() {
        tls::create(&files, false, &[])?;
        tracing::info!(path = %files.cert.display(), "created a local CA for TLS interception");
        eprintln!(
            "created a local CA at {} for TLS interception.\n{}",
            files.cert.display(),
            tls::trust_instructions(&files.cert)
        );
    }
    let ca = CertificateAuthority::load(&files.cert, &files.key)?;
    Ok(LeafCache::new(
        Arc::new(ca),
        config.tls.leaf_cache_size,
        config.tls.leaf_cache_ttl,
    ))
}

/// Reloads the config file and swaps the runtime whole, or keeps the old one.
pub struct Reloader {
    path: PathBuf,
    shared: Arc<Shared>,
}

impl Reloader {
    pub fn reload(&self) -> Result<(), String> {
        let result = config::load(&self.path)
            .map_err(AppError::from)
            .and_then(|c| build_runtime(c, &self.shared.persistent))
            .map_err(|e| e.to_string());
        match result {
            Ok(runtime) => {
                let old = self.shared.runtime.load();
                for (what, before, after) in [
                    (
                        "proxy.listen",
                        old.config.proxy.listen,
                        runtime.config.proxy.listen,
                    ),
                    (
                        "admin.listen",
                        old.config.admin.listen,
                        runtime.config.admin.listen,
                    ),
                ] {
                    if before != after {
                        tracing::warn!("{what} changed from {before} to {after}: listeners change only on restart");
                    }
                }
                self.shared.runtime.store(Arc::new(runtime));
                metrics::counter!("quota_proxy_config_reloads_total", "result" => "ok")
                    .increment(1);
                tracing::info!(path = %self.path.display(), "config reloaded");
                Ok(())
            }
            Err(e) => {
                metrics::counter!("quota_proxy_config_reloads_total", "result" => "error")
                    .increment(1);
                tracing::error!("config reload failed, keeping the old config: {e}");
                Err(e)
            }
        }
    }
}

/// Runs the proxy until `shutdown` resolves, then drains for up to `drain_timeout`.
/// `reload` yields each time a reload is requested (SIGHUP).
pub async fn run(
    config: Config,
    proxy_listener: TcpListener,
    admin_listener: TcpListener,
    metrics: Option<PrometheusHandle>,
    shutdown: impl Future<Output = ()>,
    mut reload_requests: tokio::sync::mpsc::Receiver<()>,
) -> Result<(), AppError> {
    let path = config.source.clone();
    let persistent = Arc::new(Persistent::new(Arc::new(crate::quota::SystemClock::new())));
    let runtime = build_runtime(config, &persistent)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared {
        runtime: ArcSwap::from_pointee(runtime),
        persistent,
        tracker: TaskTracker::new(),
        shutdown: stop_rx,
    });
    let reloader = Arc::new(Reloader {
        path,
        shared: shared.clone(),
    });
    let admin = Arc::new(crate::admin::Admin {
        shared: shared.clone(),
        metrics,
        reloader: reloader.clone(),
    });

    let proxy_task = tokio::spawn(crate::listener::serve_proxy(proxy_listener, shared.clone()));
    let admin_task = tokio::spawn(crate::admin::serve(admin_listener, admin));
    let reload_task = tokio::spawn(async move {
        while reload_requests.recv().await.is_some() {
            let _ = reloader.reload();
        }
    });

    shutdown.await;
    let drain = shared.runtime.load().config.proxy.drain_timeout;
    tracing::info!(drain_timeout = %config::format_duration(drain), "shutting down: draining in-flight requests");
    let _ = stop_tx.send(true);
    let _ = proxy_task.await;
    shared.tracker.close();
    if tokio::time::timeout(drain, shared.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = shared.tracker.len(),
            "drain timeout reached; closing the remaining connections"
        );
    }
    reload_task.abort();
    let _ = admin_task.await;
    tracing::info!("stopped");
    Ok(())
}
