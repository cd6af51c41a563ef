//! Redis key names (pure). Every key of one provider starts with the hash tag
//! `{<prefix>:<provider>}`, so all of them live in one Redis Cluster slot and one script
//! call may touch them all:
//!
//! ```text
//! {quota-proxy:openai}:q:<limit>:<unit>:<window>:<scope>:<scope id>[:<period start µs>]
//! ```
//!
//! Components are escaped (`{`, `}`, `:`, `%`, spaces and control characters become
//! `%XX`) so that no name can end the hash tag early or collide with another. Only ids
//! appear in keys (limit names, key ids, client ids), never secrets.

use std::fmt::Write;

use crate::quota::spec::{LimitSpec, Scope, WindowKind};

/// `s` with the characters that structure a key name percent-encoded.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '{' | '}' | ':' | '%') || c.is_whitespace() || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The hash tag of one provider's keys: `{<prefix>:<provider>}`.
pub fn hash_tag(prefix: &str, provider: &str) -> String {
    format!("{{{}:{}}}", escape(prefix), escape(provider))
}

/// A short, stable description of a limit's window, part of its identity: a reload that
/// changes the window starts a new counter rather than misreading the old one.
fn window_id(w: &WindowKind) -> String {
    match w {
        // The geometry is part of the name: replicas that count in other sub-buckets (another
        // version) never read each other's fields as their own.
        WindowKind::Rolling { len } => {
            let (width, n) = crate::quota::rolling::geometry(*len);
            format!("r{len}w{width}n{n}")
        }
        WindowKind::TokenBucket { len, burst } => format!("b{len}x{burst}"),
        WindowKind::Calendar { period, tz } => format!("c{}-{}", period.as_str(), tz.name()),
        WindowKind::None => "k".to_string(),
    }
}

/// The key of one limit's counter for one scope id (calendar: without the period).
pub fn counter_key(tag: &str, spec: &LimitSpec, scope_id: &str) -> String {
    counter_key_after(&counter_prefix(tag, spec), spec, scope_id)
}

/// The part of a limit's counter keys that does not depend on the scope id (cached per
/// limit by the plan: building it is most of a key's cost).
pub fn counter_prefix(tag: &str, spec: &LimitSpec) -> String {
    format!(
        "{tag}:q:{}:{}:{}:{}:",
        escape(&spec.name),
        spec.unit.as_str(),
        escape(&window_id(&spec.window)),
        spec.scope.as_str(),
    )
}

/// [`counter_key`] from the limit's [`counter_prefix`].
pub fn counter_key_after(prefix: &str, spec: &LimitSpec, scope_id: &str) -> String {
    let scope_id = match spec.scope {
        Scope::Provider => "",
        _ => scope_id,
    };
    let mut key = String::with_capacity(prefix.len() + scope_id.len());
    key.push_str(prefix);
    if scope_id
        .chars()
        .any(|c| matches!(c, '{' | '}' | ':' | '%') || c.is_whitespace() || c.is_control())
    {
        key.push_str(&escape(scope_id));
    } else {
        key.push_str(scope_id);
    }
    key
}

/// The key of a calendar counter for the period starting at `start`.
pub fn period_key(counter: &str, start: u64) -> String {
    format!("{counter}:{start}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::spec::CalendarPeriod;
    use crate::quota::unit::Unit;

    #[test]
    fn names_carry_the_tag_and_escape_structure() {
        let tag = hash_tag("qp", "open{ai}");
        assert_eq!(tag, "{qp:open%7Bai%7D}");
        // A 1 min window: 128 sub-buckets of 468.75 ms, counted with one more as a margin.
        let rpm = LimitSpec::new(
            "rpm",
            Unit::Requests,
            10.0,
            WindowKind::Rolling { len: 60_000_000 },
        )
        .with_scope(Scope::Key);
        assert_eq!(
            counter_key(&tag, &rpm, "k:1"),
            "{qp:open%7Bai%7D}:q:rpm:requests:r60000000w468750n129:key:k%3A1"
        );
        let day = LimitSpec::new(
            "daily usd",
            Unit::Usd,
            5.0,
            WindowKind::Calendar {
                period: CalendarPeriod::Day,
                tz: chrono_tz::Europe::Paris,
            },
        );
        let key = counter_key(&tag, &day, "ignored for provider scope");
        assert_eq!(
            key,
            "{qp:open%7Bai%7D}:q:daily%20usd:usd:cday-Europe/Paris:provider:"
        );
        assert_eq!(period_key(&key, 7), format!("{key}:7"));
        assert_eq!(escape("é%"), "é%25");
    }
}
