//! Custom signals: `[[providers.X.signals.custom]]` mappings from a header or a JSON pointer
//! to a unit's limit, remaining or reset, or to the call's cost, in a declared [`Format`].

use http::HeaderMap;
use serde_json::Value;

use crate::signals::headers::text;
use crate::signals::time::{
    epoch_to_micros, parse_duration, parse_number, parse_rfc3339, secs_to_micros,
};
use crate::signals::types::{CustomSignal, Field, Format, Signals, Source};
use crate::signals::Micros;

/// A raw value: JSON numbers stay numbers, headers and JSON strings are text.
#[derive(Clone, Copy)]
enum Raw<'a> {
    Num(f64),
    Text(&'a str),
}

/// Apply the header-sourced mappings.
pub(crate) fn headers(custom: &[CustomSignal], h: &HeaderMap, now: Micros, s: &mut Signals) {
    for c in custom {
        let Source::Header(name) = &c.source else {
            continue;
        };
        if let Some(v) = text(h, name, s) {
            if apply(c, Raw::Text(&v), now, s).is_none() {
                s.malformed += 1;
            }
        }
    }
}

/// True when some mapping reads the body.
pub(crate) fn wants_body(custom: &[CustomSignal]) -> bool {
    custom.iter().any(|c| matches!(c.source, Source::Json(_)))
}

/// Apply the JSON-pointer mappings to a parsed body.
pub(crate) fn json(custom: &[CustomSignal], json: &Value, now: Micros, s: &mut Signals) {
    for c in custom {
        let Source::Json(pointer) = &c.source else {
            continue;
        };
        let raw = match json.pointer(pointer) {
            None | Some(Value::Null) => continue,
            Some(Value::Number(n)) => n.as_f64().map(Raw::Num),
            Some(Value::String(t)) => Some(Raw::Text(t)),
            Some(_) => None,
        };
        if raw.and_then(|raw| apply(c, raw, now, s)).is_none() {
            s.malformed += 1;
        }
    }
}

fn number(raw: Raw<'_>) -> Option<f64> {
    match raw {
        Raw::Num(n) => Some(n).filter(|n| n.is_finite()),
        Raw::Text(t) => parse_number(t),
    }
}

fn reset(format: Format, raw: Raw<'_>, now: Micros) -> Option<Micros> {
    let after = |d: Micros| now.saturating_add(d);
    match (format, raw) {
        (Format::Number | Format::Seconds, _) => secs_to_micros(number(raw)?).map(after),
        (Format::Epoch, _) => epoch_to_micros(number(raw)?),
        (Format::Duration, Raw::Text(t)) => parse_duration(t).map(after),
        (Format::Duration, Raw::Num(n)) => secs_to_micros(n).map(after),
        (Format::Rfc3339, Raw::Text(t)) => parse_rfc3339(t),
        (Format::Rfc3339, Raw::Num(_)) => None,
    }
}

fn apply(c: &CustomSignal, raw: Raw<'_>, now: Micros, s: &mut Signals) -> Option<()> {
    match c.field {
        Field::Cost => s.cost = Some(number(raw)?),
        Field::Limit => s.unit_mut(c.unit).limit = Some(number(raw)?),
        Field::Remaining => s.unit_mut(c.unit).remaining = Some(number(raw)?),
        Field::Reset => s.unit_mut(c.unit).reset_at = Some(reset(c.format, raw, now)?),
    }
    Some(())
}
