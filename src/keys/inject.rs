//! Key injection [pure]: the app's own credential is removed and the pool key written where
//! the provider expects it (header with format, query parameter, or JSON body field). With no
//! pool, the app's credential is read only to scope `key` limits by its hash.

use http::header::{HeaderMap, HeaderValue};

use crate::config::Inject;

/// Headers that carry API credentials, removed before a pool key is injected by header.
const CREDENTIAL_HEADERS: [&str; 5] = [
    "authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "x-subscription-token",
];

/// Why a key could not be injected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InjectError {
    #[error("the key cannot be written into a header (invalid characters)")]
    BadHeaderValue,
    #[error("the request body must be a JSON object to carry the key in `{0}`")]
    NotJsonObject(String),
}

/// Writes `secret` into `headers` per `inject` (header injection only). Query and JSON
/// injection are done by [`with_query_key`] and [`with_json_key`].
pub fn into_headers(
    headers: &mut HeaderMap,
    inject: &Inject,
    secret: &str,
) -> Result<(), InjectError> {
    if let Inject::Header { name, format } = inject {
        for h in CREDENTIAL_HEADERS {
            headers.remove(h);
        }
        let mut value = HeaderValue::from_str(&format.replace("{key}", secret))
            .map_err(|_| InjectError::BadHeaderValue)?;
        value.set_sensitive(true);
        headers.insert(name.clone(), value);
    }
    Ok(())
}

/// `path?query` with every `param` removed and `param=secret` appended.
pub fn with_query_key(path_and_query: &str, param: &str, secret: &str) -> String {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let mut out = String::with_capacity(path_and_query.len() + param.len() + secret.len() + 2);
    out.push_str(path);
    let mut sep = '?';
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n);
        if name != param {
            out.push(sep);
            out.push_str(pair);
            sep = '&';
        }
    }
    out.push(sep);
    out.push_str(param);
    out.push('=');
    percent_encode(secret, &mut out);
    out
}

/// The JSON body with `field` set to `secret` (top-level object field).
pub fn with_json_key(body: &[u8], field: &str, secret: &str) -> Result<Vec<u8>, InjectError> {
    let mut value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| InjectError::NotJsonObject(field.into()))?;
    let obj = value
        .as_object_mut()
        .ok_or_else(|| InjectError::NotJsonObject(field.into()))?;
    obj.insert(
        field.to_string(),
        serde_json::Value::String(secret.to_string()),
    );
    serde_json::to_vec(&value).map_err(|_| InjectError::NotJsonObject(field.into()))
}

/// The app's own credential where the provider expects a key (no pool configured), for
/// per-credential scoping. The JSON-field case needs the body and is read separately.
pub fn app_credential(headers: &HeaderMap, query: Option<&str>, inject: &Inject) -> Option<String> {
    match inject {
        Inject::Header { name, format } => {
            let raw = headers.get(name)?.to_str().ok()?;
            let (prefix, suffix) = format.split_once("{key}").unwrap_or(("", ""));
            let key = raw.strip_prefix(prefix).unwrap_or(raw);
            let key = key.strip_suffix(suffix).unwrap_or(key);
            (!key.is_empty()).then(|| key.to_string())
        }
        Inject::Query { param } => query?
            .split('&')
            .filter_map(|p| p.split_once('='))
            .find(|(n, _)| n == param)
            .map(|(_, v)| v.to_string())
            .filter(|v| !v.is_empty()),
        Inject::JsonField { .. } => None,
    }
}

/// A stable, non-reversible id for an app credential: `cred-` + 12 hex digits of SHA-256.
pub fn credential_id(secret: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let hex: String = digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("cred-{hex}")
}

fn percent_encode(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderName;

    #[test]
    fn header_injection_replaces_app_credentials() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer app-key"));
        h.insert("x-api-key", HeaderValue::from_static("app-key-2"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        let inject = Inject::Header {
            name: HeaderName::from_static("authorization"),
            format: "Bearer {key}".into(),
        };
        into_headers(&mut h, &inject, "sk-pool").unwrap();
        assert_eq!(h["authorization"], "Bearer sk-pool");
        assert!(h["authorization"].is_sensitive());
        assert!(h.get("x-api-key").is_none());
        assert_eq!(h["content-type"], "application/json");
        let bad = into_headers(&mut h, &inject, "bad\nkey");
        assert_eq!(bad, Err(InjectError::BadHeaderValue));
    }

    #[test]
    fn query_injection() {
        let cases = [
            ("/v4/sports", "/v4/sports?apiKey=K1"),
            ("/v4/sports?regions=us", "/v4/sports?regions=us&apiKey=K1"),
            (
                "/v4/sports?apiKey=app&regions=us&apiKey=x",
                "/v4/sports?regions=us&apiKey=K1",
            ),
            ("/p?apiKeyX=1", "/p?apiKeyX=1&apiKey=K1"),
        ];
        for (input, want) in cases {
            assert_eq!(with_query_key(input, "apiKey", "K1"), want);
        }
        assert_eq!(with_query_key("/p", "key", "a b&c"), "/p?key=a%20b%26c");
    }

    #[test]
    fn json_injection() {
        let out = with_json_key(br#"{"query":"x","api_key":"app"}"#, "api_key", "tvly-1").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["api_key"], "tvly-1");
        assert_eq!(v["query"], "x");
        assert!(with_json_key(b"[1]", "api_key", "k").is_err());
        assert!(with_json_key(b"not json", "api_key", "k").is_err());
    }

    #[test]
    fn app_credentials_and_ids() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer sk-app"));
        let inject = Inject::Header {
            name: HeaderName::from_static("authorization"),
            format: "Bearer {key}".into(),
        };
        assert_eq!(app_credential(&h, None, &inject).as_deref(), Some("sk-app"));
        let q = Inject::Query {
            param: "apiKey".into(),
        };
        assert_eq!(
            app_credential(&h, Some("a=1&apiKey=xyz"), &q).as_deref(),
            Some("xyz")
        );
        assert_eq!(app_credential(&h, Some("a=1"), &q), None);
        let id = credential_id("sk-app");
        assert!(id.starts_with("cred-") && id.len() == 17);
        assert!(!id.contains("sk-app"));
        assert_eq!(id, credential_id("sk-app"));
    }
}
