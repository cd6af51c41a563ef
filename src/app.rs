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
use crate::state;
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
    Ca(tls::CaError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error("state file {0}: {1}; move it aside to start with empty counters")]
    Restore(String, String),
    #[error("{}: the file is empty (caught while being written?); a reload never applies an empty config", .0.display())]
    EmptyReload(PathBuf),
}

impl From<tls::CaError> for AppError {
    fn from(e: tls::CaError) -> Self {
        AppError::Ca(e)
    }
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
        let result = refuse_empty(&self.path)
            .and_then(|()| config::load(&self.path).map_err(AppError::from))
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

/// An empty file is a valid config at start (every default), but on reload it is almost
/// always a file caught while being rewritten: applying it would drop every provider and its
/// quotas at once.
fn refuse_empty(path: &std::path::Path) -> Result<(), AppError> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Err(AppError::EmptyReload(path.to_path_buf())),
        _ => Ok(()),
    }
}

/// Loads the saved state into the engine, pools and statistics before anything is served.
/// A corrupt file, or values that cannot be used, stop the start: usage is never read as zero.
fn restore_state(persistent: &Persistent, store: &dyn state::Store) -> Result<(), AppError> {
    match store.load()? {
        Some(snapshot) => {
            let report = state::restore(persistent, snapshot, persistent.engine.clock().now());
            if !report.is_clean() {
                return Err(AppError::Restore(
                    store.describe(),
                    report.errors().join("; "),
                ));
            }
            tracing::info!(backend = %store.describe(), "{report}");
        }
        None => {
            tracing::info!(backend = %store.describe(), "no saved state; starting with empty counters")
        }
    }
    Ok(())
}

/// Saves a snapshot (off the async threads); false when it failed. A store that keeps
/// nothing is not asked.
async fn flush(persistent: &Persistent, store: &Arc<dyn state::Store>) -> bool {
    if !store.persists() {
        return true;
    }
    let snapshot = state::capture(persistent, persistent.engine.clock().now());
    let store = store.clone();
    match tokio::task::spawn_blocking(move || store.save(&snapshot)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            metrics::counter!("quota_proxy_state_backend_errors_total").increment(1);
            tracing::warn!("state flush failed: {e}");
            false
        }
        Err(e) => {
            tracing::error!("state flush task failed: {e}");
            false
        }
    }
}

/// Everything built before the proxy binds and announces itself: the runtime of the config
/// and the saved state, loaded. Failing here means the proxy never says it is ready.
pub struct Prepared {
    path: std::path::PathBuf,
    persistent: Arc<Persistent>,
    runtime: Runtime,
    store: Arc<dyn state::Store>,
}

/// Builds the runtime, connects the shared (Redis) backend when configured, and restores the
/// saved state.
pub async fn prepare(config: Config) -> Result<Prepared, AppError> {
    let path = config.source.clone();
    let persistent = Arc::new(Persistent::new(Arc::new(crate::quota::FastClock::new())));
    let state_settings = config.state.clone();
    let clock = persistent.engine.clock().clone();
    if let Some(backend) = state::open_shared(&state_settings, clock).await? {
        let sync = state::KeySync::start(backend.clone(), Arc::downgrade(&persistent));
        let _ = persistent.key_sync.set(sync);
        persistent.engine.set_backend(backend);
    }
    let runtime = build_runtime(config, &persistent)?;
    let store: Arc<dyn state::Store> = Arc::from(state::open(&state_settings)?);
    restore_state(&persistent, store.as_ref())?;
    Ok(Prepared {
        path,
        persistent,
        runtime,
        store,
    })
}

/// Serves a prepared proxy until `shutdown` resolves, then drains for up to `drain_timeout`
/// and saves the state. `reload_requests` yields each time a reload is asked for (SIGHUP).
pub async fn run(
    prepared: Prepared,
    proxy_listener: TcpListener,
    admin_listener: TcpListener,
    metrics: Option<PrometheusHandle>,
    shutdown: impl Future<Output = ()>,
    mut reload_requests: tokio::sync::mpsc::Receiver<()>,
) -> Result<(), AppError> {
    let Prepared {
        path,
        persistent,
        runtime,
        store,
    } = prepared;
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
    let upkeep = metrics
        .clone()
        .map(|handle| tokio::spawn(crate::telemetry::run_upkeep(handle)));
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
    let flusher = store.persists().then(|| {
        let (shared, store) = (shared.clone(), store.clone());
        tokio::spawn(async move {
            loop {
                // Re-read each time so a reload's flush_interval applies.
                tokio::time::sleep(shared.runtime.load().config.state.flush_interval).await;
                flush(&shared.persistent, &store).await;
            }
        })
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
    if let Some(task) = upkeep {
        task.abort();
    }
    if let Some(flusher) = flusher {
        flusher.abort();
        let _ = flusher.await;
    }
    if !flush(&shared.persistent, &store).await {
        tracing::error!(backend = %store.describe(), "the final state flush failed: usage since the last flush is lost");
    }
    let _ = admin_task.await;
    tracing::info!("stopped");
    Ok(())
}
