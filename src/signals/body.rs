//! Reading signals from a response body the proxy holds a copy of: error bodies (429 and
//! other 4xx/5xx) for OpenAI, Anthropic, Gemini and The Odds API, every Keepa JSON body,
//! and custom JSON-pointer mappings.
//!
//! Bodies that are not JSON are silently skipped (an HTML error page says nothing about
//! quotas); JSON fields of the wrong type count as malformed.

use serde_json::Value;

use crate::signals::types::{CustomSignal, Family, Signals};
use crate::signals::{anthropic, custom, gemini, keepa, odds_api, openai, Micros};

/// Add what `body` says to `into` (usually the result of
/// [`from_headers`](crate::signals::from_headers) for the same response).
///
/// Error-body families are consulted only for statuses ≥ 400, so a 2xx body is parsed only
/// when Keepa or a custom JSON mapping is configured.
pub fn from_body(
    families: &[Family],
    custom: &[CustomSignal],
    status: u16,
    body: &[u8],
    now: Micros,
    into: &mut Signals,
) {
    if families.contains(&Family::Keepa) {
        keepa::body(status, body, now, into);
    }
    let error_families = status >= 400
        && families.iter().any(|f| {
            matches!(
                f,
                Family::OpenAi | Family::Anthropic | Family::Gemini | Family::OddsApi
            )
        });
    let wants_custom = custom::wants_body(custom);
    if !(error_families || wants_custom) {
        into.prune();
        return;
    }
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        into.prune();
        return;
    };
    if error_families {
        for family in families {
            match family {
                Family::OpenAi => openai::body(&json, into),
                Family::Anthropic => anthropic::body(&json, into),
                Family::Gemini => gemini::body(&json, now, into),
                Family::OddsApi => odds_api::body(&json, into),
                Family::Ietf | Family::Github | Family::Keepa => {}
            }
        }
    }
    custom::json(custom, &json, now, into);
    into.prune();
}
