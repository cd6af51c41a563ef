//! The one place where failures become HTTP responses (SPEC §8): a status, an
//! `x-quota-proxy` marker header and an OpenAI-shaped JSON body that SDKs can parse.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::Body;

/// Header marking responses the proxy made itself.
pub const MARKER: &str = "x-quota-proxy";

/// Everything the proxy can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("proxy authentication required")]
    ProxyAuthRequired,
    #[error("{0}")]
    Misdirected(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("request headers are larger than {0} bytes")]
    HeadersTooLarge(usize),
    #[error("{0}")]
    BadGateway(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("the upstream did not answer within {0}")]
    GatewayTimeout(String),
    /// A quota refusal: answered with the SPEC §8 429 (or 503 for a full queue).
    #[error("{refusal}")]
    Quota {
        provider: String,
        refusal: crate::quota::Refusal,
    },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Forbidden(_) => StatusCode::FORBIDDEN,
            ProxyError::NotFound(_) => StatusCode::NOT_FOUND,
            ProxyError::ProxyAuthRequired => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            ProxyError::Misdirected(_) => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Quota {
                refusal:
                    crate::quota::Refusal::QueueFull { .. } | crate::quota::Refusal::BackendDown,
                ..
            } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Quota { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The `error.type` field.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::Forbidden(_) => "forbidden",
            ProxyError::NotFound(_) => "not_found",
            ProxyError::ProxyAuthRequired => "proxy_auth_required",
            ProxyError::Misdirected(_) => "misdirected_request",
            ProxyError::PayloadTooLarge(_) => "payload_too_large",
            ProxyError::HeadersTooLarge(_) => "headers_too_large",
            ProxyError::BadGateway(_) => "bad_gateway",
            ProxyError::Unavailable(_) => "service_unavailable",
            ProxyError::GatewayTimeout(_) => "gateway_timeout",
            ProxyError::Quota { .. } => "quota_exceeded",
        }
    }

    pub fn into_response(self) -> Response<Body> {
        if let ProxyError::Quota { provider, refusal } = &self {
            return quota_refusal(provider, refusal);
        }
        let mut resp = json_error(
            self.status(),
            self.kind(),
            self.kind(),
            &self.to_string(),
            "error",
        );
        if matches!(self, ProxyError::ProxyAuthRequired) {
            resp.headers_mut().insert(
                header::PROXY_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"quota-proxy\""),
            );
        }
        resp
    }
}

/// A JSON error body in the SPEC §8 shape with the `x-quota-proxy` marker.
pub fn json_error(
    status: StatusCode,
    kind: &str,
    code: &str,
    message: &str,
    marker: &'static str,
) -> Response<Body> {
    let body = serde_json::json!({ "error": { "type": kind, "code": code, "message": message } });
    json_response(status, &body, marker)
}

/// A JSON response with the marker header.
pub fn json_response(
    status: StatusCode,
    body: &serde_json::Value,
    marker: &'static str,
) -> Response<Body> {
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(MARKER, HeaderValue::from_static(marker));
    resp
}

/// The whole response as bytes, for writing on a raw socket before hyper takes over.
pub fn raw_response(err: &ProxyError) -> Vec<u8> {
    let body = serde_json::json!({
        "error": { "type": err.kind(), "code": err.kind(), "message": err.to_string() }
    })
    .to_string();
    let status = err.status();
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\n{MARKER}: error\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes()
}

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body: zero-sized, so its box allocates nothing.
pub fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// The proxy's own 429 (or 503 for a full queue) for a quota refusal (SPEC §8):
/// `Retry-After` in whole seconds rounded up, `x-quota-proxy: rejected`, OpenAI-shaped body.
pub fn quota_refusal(provider: &str, refusal: &crate::quota::Refusal) -> Response<Body> {
    use crate::quota::Refusal;
    let (status, code, limit, scope, scope_id, message) = match refusal {
        Refusal::Limited { limit, scope, scope_id, retry_after } => (
            StatusCode::TOO_MANY_REQUESTS,
            limit.clone(),
            limit.clone(),
            scope.as_str(),
            scope_id.clone(),
            format!(
                "quota-proxy: limit {limit:?} of provider {provider:?} has no room; retry after {:.1}s",
                *retry_after as f64 / 1e6
            ),
        ),
        Refusal::TooLarge(t) => (
            StatusCode::TOO_MANY_REQUESTS,
            "request_too_large".to_string(),
            t.limit.clone(),
            t.scope.as_str(),
            t.scope_id.clone(),
            format!(
                "quota-proxy: this call costs {} but limit {:?} allows at most {} per window; it can never be admitted",
                t.cost, t.limit, t.cap
            ),
        ),
        Refusal::QueueFull { max_queue } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "queue_full".to_string(),
            "queue".to_string(),
            "provider",
            String::new(),
            format!("quota-proxy: {max_queue} calls already wait for provider {provider:?}"),
        ),
        Refusal::BackendDown => (
            StatusCode::SERVICE_UNAVAILABLE,
            "state_backend_down".to_string(),
            String::new(),
            "provider",
            String::new(),
            "quota-proxy: the shared quota backend (Redis) is unreachable and on_backend_error = \"deny\"".to_string(),
        ),
        Refusal::UnknownProvider(p) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "unknown_provider".to_string(),
            String::new(),
            "provider",
            String::new(),
            format!("quota-proxy: provider {p:?} is not loaded"),
        ),
    };
    let retry_after = refusal.retry_after().map(|us| us as f64 / 1e6);
    let mut error = serde_json::json!({
        "type": "quota_exceeded",
        "code": code,
        "message": message,
        "provider": provider,
        "limit": limit,
        "scope": scope,
        "scope_id": scope_id,
    });
    if let Some(secs) = retry_after {
        error["retry_after_seconds"] = serde_json::json!((secs * 10.0).ceil() / 10.0);
    }
    let mut resp = json_response(status, &serde_json::json!({ "error": error }), "rejected");
    if let Some(secs) = retry_after {
        let whole = secs.ceil().max(1.0) as u64;
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(whole));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn error_bodies_have_the_spec_shape() {
        let resp = ProxyError::BadGateway("upstream refused".into()).into_response();
        assert_eq!(resp.status(), 502);
        assert_eq!(resp.headers()[MARKER], "error");
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["error"]["type"], "bad_gateway");
        assert_eq!(v["error"]["message"], "upstream refused");
    }

    #[test]
    fn raw_responses_are_complete_http() {
        let raw = String::from_utf8(raw_response(&ProxyError::HeadersTooLarge(65536))).unwrap();
        assert!(raw.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(body.contains("headers_too_large"));
    }
}
