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
        }
    }

    pub fn into_response(self) -> Response<Body> {
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

pub fn empty() -> Body {
    full(Bytes::new())
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
