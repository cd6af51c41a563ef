//! OpenAI streamed usage: a streamed chat completion reports token usage only when the
//! request asks with `stream_options.include_usage`, and then in one extra final chunk
//! whose `choices` is empty. When the app did not ask, the proxy asks on its behalf
//! ([`openai_request_add_include_usage`]) and the usage tap removes that extra chunk again,
//! so the app receives the stream it asked for.
//!
//! One visible difference remains: with the option on, OpenAI also adds `"usage":null` to
//! every other chunk. Clients ignore it; removing it would mean rewriting every event.

use serde_json::{Map, Value};

/// Does this OpenAI path take `stream_options.include_usage`? True for chat completions and
/// legacy completions; the Responses API reports usage in `response.completed` unasked and
/// rejects unknown stream options.
pub fn openai_path_takes_include_usage(path: &str) -> bool {
    let path = path.split('?').next().unwrap_or(path).trim_end_matches('/');
    path.ends_with("/chat/completions") || path.ends_with("/completions")
}

/// If the JSON request streams (`"stream": true`) without `stream_options.include_usage:
/// true`, the body rewritten to set it; else `None` (including for anything not a JSON
/// object).
///
/// When `stream_options` is absent, the field is spliced in before the closing brace so the
/// rest of the body stays byte-identical; otherwise the body is re-serialised.
pub fn openai_request_add_include_usage(body: &[u8]) -> Option<Vec<u8>> {
    let Value::Object(mut obj) = serde_json::from_slice::<Value>(body).ok()? else {
        return None;
    };
    if obj.get("stream") != Some(&Value::Bool(true)) {
        return None;
    }
    match obj.get_mut("stream_options") {
        None => {
            let close = body.iter().rposition(|&b| b == b'}')?;
            let mut out = Vec::with_capacity(body.len() + 48);
            out.extend_from_slice(&body[..close]);
            out.extend_from_slice(br#","stream_options":{"include_usage":true}"#);
            out.extend_from_slice(&body[close..]);
            Some(out)
        }
        Some(opts) => {
            if opts.get("include_usage") == Some(&Value::Bool(true)) {
                return None;
            }
            match opts {
                Value::Object(o) => {
                    o.insert("include_usage".into(), Value::Bool(true));
                }
                other => {
                    let mut o = Map::new();
                    o.insert("include_usage".into(), Value::Bool(true));
                    *other = Value::Object(o);
                }
            }
            serde_json::to_vec(&Value::Object(obj)).ok()
        }
    }
}

/// Is this chunk the extra usage-only one: `choices` empty and `usage` an object?
pub(crate) fn is_usage_only_chunk(doc: &Value) -> bool {
    let empty_choices = doc
        .get("choices")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty);
    empty_choices && doc.get("usage").is_some_and(Value::is_object)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(s: &str) -> Option<String> {
        openai_request_add_include_usage(s.as_bytes()).map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn adds_when_streaming_without_it() {
        let body =
            r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"}"}]}"#;
        let out = rewrite(body).unwrap();
        assert_eq!(
            out,
            r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"}"}],"stream_options":{"include_usage":true}}"#
        );
        let pretty = "{\n  \"stream\": true\n}\n";
        let v: Value = serde_json::from_str(&rewrite(pretty).unwrap()).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], Value::Bool(true));
    }

    #[test]
    fn sets_it_in_existing_options() {
        let out = rewrite(r#"{"stream":true,"stream_options":{"include_usage":false,"x":1}}"#);
        let v: Value = serde_json::from_str(&out.unwrap()).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], Value::Bool(true));
        assert_eq!(v["stream_options"]["x"], 1);
        let out = rewrite(r#"{"stream":true,"stream_options":null}"#);
        let v: Value = serde_json::from_str(&out.unwrap()).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], Value::Bool(true));
    }

    #[test]
    fn leaves_others_alone() {
        for body in [
            r#"{"stream":true,"stream_options":{"include_usage":true}}"#,
            r#"{"stream":false}"#,
            r#"{"stream":"true"}"#,
            r#"{"model":"x"}"#,
            r#"[{"stream":true}]"#,
            "not json",
            "",
        ] {
            assert_eq!(rewrite(body), None, "{body}");
        }
    }

    #[test]
    fn paths() {
        assert!(openai_path_takes_include_usage("/v1/chat/completions"));
        assert!(openai_path_takes_include_usage(
            "/openai/v1/completions?x=1"
        ));
        assert!(!openai_path_takes_include_usage("/v1/responses"));
        assert!(!openai_path_takes_include_usage("/v1/embeddings"));
    }

    #[test]
    fn usage_only_chunk() {
        let yes: Value = serde_json::from_str(
            r#"{"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}"#,
        )
        .unwrap();
        assert!(is_usage_only_chunk(&yes));
        let no: Value = serde_json::from_str(
            r#"{"choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}"#,
        )
        .unwrap();
        assert!(!is_usage_only_chunk(&no));
        let no: Value = serde_json::from_str(r#"{"choices":[],"usage":null}"#).unwrap();
        assert!(!is_usage_only_chunk(&no));
    }
}
