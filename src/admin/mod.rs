//! The admin listener (SPEC §9): `/healthz`, `/readyz`, `/metrics`, `/status`, `/status/{p}`,
//! `/history`, `POST /reload`, `POST /providers/{p}/keys/{id}/reset`. It sits beside the
//! proxy, never inside the request path.

mod status;
pub mod terminal;

/// The self-contained dashboard (no external assets); it polls `/status` and `/history`.
const DASHBOARD: &str = include_str!("dashboard.html");

use std::convert::Infallible;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::app::Reloader;
use crate::proxy::error::{full, json_error, json_response};
use crate::proxy::{Body, Shared};

/// What the admin endpoints need.
pub struct Admin {
    pub shared: Arc<Shared>,
    pub metrics: Option<PrometheusHandle>,
    pub reloader: Arc<Reloader>,
}

/// Serves the admin API until shutdown starts.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    let mut shutdown = admin.shared.shutdown.clone();
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = crate::proxy::stopped(&mut shutdown) => break,
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(route(&admin, req).await) }
            });
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10));
            if let Err(e) = b.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(error = %e, "admin connection error");
            }
        });
    }
}

async fn route(admin: &Admin, req: Request<Incoming>) -> Response<Body> {
    let config = admin.shared.runtime.load().config.clone();
    if let Some(token) = &config.admin.token {
        let given = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // The dashboard page holds no data; it sends the token with its own API calls.
        let open = matches!(req.uri().path(), "/healthz" | "/readyz" | "/");
        if !open && given != Some(token.expose()) {
            return json_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "admin_token",
                "admin calls need Authorization: Bearer <token>",
                "error",
            );
        }
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => {
            let mut resp = text(StatusCode::OK, DASHBOARD);
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            resp
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            let backend = admin.shared.persistent.engine.backend();
            if *admin.shared.shutdown.borrow() {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
            } else if let Some(b) = backend
                .filter(|b| b.is_down() && b.on_error() == crate::quota::shared::OnError::Deny)
            {
                // With `on_backend_error = "deny"` every quota call is refused meanwhile.
                let msg = format!(
                    "not ready: the redis state backend (prefix {:?}) is unreachable\n",
                    b.prefix()
                );
                text(StatusCode::SERVICE_UNAVAILABLE, msg)
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        (&Method::GET, "/metrics") => match &admin.metrics {
            Some(h) => {
                let (rt, engine) = (admin.shared.runtime.load(), &admin.shared.persistent.engine);
                let limits = status::limits(&rt, engine, None).await;
                status::refresh_gauges(&rt, engine, &limits);
                let mut resp = text(StatusCode::OK, h.render());
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                resp
            }
            None => text(StatusCode::NOT_FOUND, "metrics are not enabled\n"),
        },
        (&Method::POST, "/reload") => match admin.reloader.reload() {
            Ok(()) => json_response(
                StatusCode::OK,
                &serde_json::json!({"status": "reloaded"}),
                "admin",
            ),
            Err(e) => json_error(
                StatusCode::BAD_REQUEST,
                "invalid_config",
                "reload_failed",
                &e,
                "error",
            ),
        },
        (&Method::GET, "/status") => {
            let (rt, engine) = (admin.shared.runtime.load(), &admin.shared.persistent.engine);
            let limits = status::limits(&rt, engine, None).await;
            let v = status::status(&rt, engine, &limits, None);
            json_response(StatusCode::OK, &v.unwrap_or_default(), "admin")
        }
        (&Method::GET, path) if path.starts_with("/status/") => {
            let name = &path["/status/".len()..];
            let (rt, engine) = (admin.shared.runtime.load(), &admin.shared.persistent.engine);
            let limits = status::limits(&rt, engine, Some(name)).await;
            match status::status(&rt, engine, &limits, Some(name)) {
                Some(v) => json_response(StatusCode::OK, &v, "admin"),
                None => json_error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "provider",
                    &format!("no provider named {name:?}"),
                    "error",
                ),
            }
        }
        (&Method::GET, "/history") => {
            match status::history(
                &admin.shared.runtime.load(),
                &admin.shared.persistent.engine,
                req.uri().query(),
            ) {
                Ok(v) => json_response(StatusCode::OK, &v, "admin"),
                Err(e) => json_error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "history",
                    &e,
                    "error",
                ),
            }
        }
        (&Method::POST, path) if path.starts_with("/providers/") && path.ends_with("/reset") => {
            reset_key(admin, path)
        }
        (_, "/healthz" | "/readyz" | "/metrics" | "/reload" | "/status" | "/history") => {
            json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method",
                "method not allowed",
                "error",
            )
        }
        (_, path) => json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "path",
            &format!("no admin endpoint {path}"),
            "error",
        ),
    }
}

/// `POST /providers/{p}/keys/{id}/reset`: clears a key's cooling/invalid/out_of_credit state.
fn reset_key(admin: &Admin, path: &str) -> Response<Body> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (provider, key) = match parts.as_slice() {
        ["providers", p, "keys", k, "reset"] => (*p, *k),
        _ => {
            return json_error(
                StatusCode::NOT_FOUND,
                "not_found",
                "path",
                "expected /providers/{provider}/keys/{id}/reset",
                "error",
            )
        }
    };
    let rt = admin.shared.runtime.load();
    let Some(p) = rt.provider(provider) else {
        return json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "provider",
            &format!("no provider named {provider:?}"),
            "error",
        );
    };
    if p.pool.lock().unwrap_or_else(|e| e.into_inner()).reset(key) {
        tracing::info!(provider, key, "key state reset by the admin API");
        if let Some(sync) = &p.key_sync {
            sync.reset(provider, key);
        }
        json_response(
            StatusCode::OK,
            &serde_json::json!({"provider": provider, "key": key, "state": "active"}),
            "admin",
        )
    } else {
        json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "key",
            &format!("provider {provider:?} has no key {key:?}"),
            "error",
        )
    }
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp
}
