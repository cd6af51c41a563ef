//! What a call actually used, read from response JSON: whole bodies, or one SSE event's
//! `data` at a time.
//!
//! Each provider shape is a pure function from one JSON document to an update of the
//! running [`Usage`]; later documents overwrite earlier ones field by field (streamed
//! counts are cumulative), so "the last one wins" for Gemini and Anthropic's
//! `message_delta` corrects `message_start`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::signals::types::Family;

/// Token and credit usage of one call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens, cache reads and writes included.
    pub input_tokens: u64,
    /// Completion tokens, reasoning ("thinking") tokens included.
    pub output_tokens: u64,
    /// The model that served the call, when the response names it.
    pub model: Option<String>,
    /// Provider credits the call consumed (Keepa `tokensConsumed`), when reported.
    pub credits: Option<f64>,
}

/// Which response shape to read usage from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageFormat {
    /// `usage.prompt_tokens/completion_tokens` (chat, completions, embeddings),
    /// `usage.input_tokens/output_tokens` (responses API, also inside `response`), `model`.
    OpenAi,
    /// `usage.input_tokens` (+ cache tokens) / `output_tokens`, also inside `message`.
    Anthropic,
    /// `usageMetadata.promptTokenCount` / `candidatesTokenCount` (+ `thoughtsTokenCount`).
    Gemini,
    /// `tokensConsumed` → credits.
    Keepa,
    /// JSON pointers to fields.
    Custom(Vec<(String, UsageField)>),
}

/// The field a custom JSON pointer fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageField {
    /// [`Usage::input_tokens`].
    InputTokens,
    /// [`Usage::output_tokens`].
    OutputTokens,
    /// [`Usage::model`].
    Model,
    /// [`Usage::credits`].
    Credits,
}

impl UsageFormat {
    /// The usage shape of a built-in signal family, if it has one.
    pub fn for_family(family: Family) -> Option<UsageFormat> {
        match family {
            Family::OpenAi => Some(UsageFormat::OpenAi),
            Family::Anthropic => Some(UsageFormat::Anthropic),
            Family::Gemini => Some(UsageFormat::Gemini),
            Family::Keepa => Some(UsageFormat::Keepa),
            Family::Ietf | Family::Github | Family::OddsApi => None,
        }
    }

    /// Whether documents of this shape can report the credits a call consumed (then the
    /// settlement learns the route's average cost from them).
    pub fn reports_credits(&self) -> bool {
        match self {
            UsageFormat::Keepa => true,
            UsageFormat::Custom(fields) => fields.iter().any(|(_, f)| *f == UsageField::Credits),
            UsageFormat::OpenAi | UsageFormat::Anthropic | UsageFormat::Gemini => false,
        }
    }

    /// Cheap pre-check on raw event data: could this document carry usage? Lets the SSE
    /// path skip JSON parsing for the many content-only chunks.
    pub(crate) fn may_carry_usage(&self, data: &[u8]) -> bool {
        match self {
            UsageFormat::OpenAi | UsageFormat::Anthropic => has_object_field(data, b"\"usage\""),
            UsageFormat::Gemini => has_object_field(data, b"\"usageMetadata\""),
            UsageFormat::Keepa => find(data, b"\"tokensConsumed\"").is_some(),
            UsageFormat::Custom(_) => true,
        }
    }
}

/// Apply one JSON document to the running usage; `None` becomes `Some` once a field is seen.
pub(crate) fn apply(format: &UsageFormat, doc: &Value, acc: &mut Option<Usage>) {
    match format {
        UsageFormat::OpenAi => openai(doc, acc),
        UsageFormat::Anthropic => anthropic(doc, acc),
        UsageFormat::Gemini => match doc.as_array() {
            // Non-SSE `streamGenerateContent` answers with an array of responses.
            Some(items) => items.iter().for_each(|d| gemini(d, acc)),
            None => gemini(doc, acc),
        },
        UsageFormat::Keepa => {
            if let Some(c) = number(doc.get("tokensConsumed")) {
                acc.get_or_insert_with(Usage::default).credits = Some(c);
            }
        }
        UsageFormat::Custom(fields) => custom(fields, doc, acc),
    }
}

/// Parse a whole JSON body; `None` when it is not JSON or carries no usage.
pub fn usage_from_json(format: &UsageFormat, body: &[u8]) -> Option<Usage> {
    let doc: Value = serde_json::from_slice(body).ok()?;
    let mut acc = None;
    apply(format, &doc, &mut acc);
    acc
}

fn count(v: Option<&Value>) -> Option<u64> {
    let v = v?;
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u64)
    })
}

fn number(v: Option<&Value>) -> Option<f64> {
    let v = v?;
    v.as_f64()
        .or_else(|| v.as_str().and_then(crate::signals::time::parse_number))
}

fn set_model(doc: &Value, key: &str, acc: &mut Option<Usage>) {
    if let Some(m) = doc.get(key).and_then(Value::as_str) {
        acc.get_or_insert_with(Usage::default).model = Some(m.to_string());
    }
}

fn openai(doc: &Value, acc: &mut Option<Usage>) {
    // Responses API stream events wrap the response object: {"type":"response.completed","response":{...}}.
    let doc = doc.get("response").filter(|r| r.is_object()).unwrap_or(doc);
    let Some(usage) = doc.get("usage").filter(|u| u.is_object()) else {
        return;
    };
    let input = count(usage.get("prompt_tokens")).or(count(usage.get("input_tokens")));
    let output = count(usage.get("completion_tokens")).or(count(usage.get("output_tokens")));
    if input.is_none() && output.is_none() {
        return;
    }
    let u = acc.get_or_insert_with(Usage::default);
    u.input_tokens = input.unwrap_or(u.input_tokens);
    u.output_tokens = output.unwrap_or(u.output_tokens);
    set_model(doc, "model", acc);
}

fn anthropic(doc: &Value, acc: &mut Option<Usage>) {
    // message_start nests the message; message_delta and whole bodies carry `usage` on top.
    let doc = doc.get("message").filter(|m| m.is_object()).unwrap_or(doc);
    let Some(usage) = doc.get("usage").filter(|u| u.is_object()) else {
        return;
    };
    let inputs = [
        "input_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ]
    .map(|k| count(usage.get(k)));
    let output = count(usage.get("output_tokens"));
    if inputs.iter().all(Option::is_none) && output.is_none() {
        return;
    }
    let u = acc.get_or_insert_with(Usage::default);
    if inputs.iter().any(Option::is_some) {
        u.input_tokens = inputs.iter().flatten().sum();
    }
    u.output_tokens = output.unwrap_or(u.output_tokens);
    set_model(doc, "model", acc);
}

fn gemini(doc: &Value, acc: &mut Option<Usage>) {
    let Some(meta) = doc.get("usageMetadata").filter(|m| m.is_object()) else {
        return;
    };
    let input = count(meta.get("promptTokenCount"));
    let candidates = count(meta.get("candidatesTokenCount"));
    let thoughts = count(meta.get("thoughtsTokenCount"));
    if input.is_none() && candidates.is_none() && thoughts.is_none() {
        return;
    }
    let u = acc.get_or_insert_with(Usage::default);
    u.input_tokens = input.unwrap_or(u.input_tokens);
    u.output_tokens = candidates.unwrap_or(0) + thoughts.unwrap_or(0);
    set_model(doc, "modelVersion", acc);
}

fn custom(fields: &[(String, UsageField)], doc: &Value, acc: &mut Option<Usage>) {
    for (pointer, field) in fields {
        let v = doc.pointer(pointer);
        match field {
            UsageField::InputTokens => {
                if let Some(n) = count(v) {
                    acc.get_or_insert_with(Usage::default).input_tokens = n;
                }
            }
            UsageField::OutputTokens => {
                if let Some(n) = count(v) {
                    acc.get_or_insert_with(Usage::default).output_tokens = n;
                }
            }
            UsageField::Model => {
                if let Some(m) = v.and_then(Value::as_str) {
                    acc.get_or_insert_with(Usage::default).model = Some(m.to_string());
                }
            }
            UsageField::Credits => {
                if let Some(c) = number(v) {
                    acc.get_or_insert_with(Usage::default).credits = Some(c);
                }
            }
        }
    }
}

/// Index of `needle` in `hay`.
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Does `key` (quoted) occur followed by `:` and an object, i.e. not `"usage":null`?
pub(crate) fn has_object_field(data: &[u8], key: &[u8]) -> bool {
    let mut rest = data;
    while let Some(i) = find(rest, key) {
        rest = &rest[i + key.len()..];
        let mut after = rest.iter().skip_while(|b| b.is_ascii_whitespace());
        if after.next() == Some(&b':') && after.find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
            return true;
        }
    }
    false
}
