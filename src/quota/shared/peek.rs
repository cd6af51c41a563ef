//! The shared counters as status (`/status`, the `limit_*` gauges, key exhaustion): one
//! read-only script call per provider reads every counter on the server's clock. Which
//! scope ids exist is learned from the counters themselves (`SCAN` of the provider's hash
//! tag), plus the configured keys and accounts, so a client or credential first seen by
//! another replica is listed too.

use std::collections::{BTreeMap, BTreeSet};

use crate::quota::clock::Micros;
use crate::quota::provider::ProviderHandle;
use crate::quota::shared::backend::RedisBackend;
use crate::quota::shared::keys::{escape, hash_tag};
use crate::quota::shared::options::BackendError;
use crate::quota::shared::plan::{counter_of, Kind, PlanCtx};
use crate::quota::spec::Scope;
use crate::quota::status::LimitStatus;

/// Scope ids by (escaped limit name, scope), as found in counter key names.
type Found = BTreeMap<(String, String), BTreeSet<String>>;

/// `SCAN` steps at most per status read (1000 keys each).
const MAX_SCAN_STEPS: usize = 50;

/// Undoes [`escape`] (`%XX` bytes).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The scope id of a counter key `<tag>:q:<limit>:<unit>:<window>:<scope>:<id>[:<period>]`.
fn parse_counter(tag: &str, key: &str) -> Option<((String, String), String)> {
    let rest = key.strip_prefix(tag)?.strip_prefix(":q:")?;
    let parts: Vec<&str> = rest.split(':').collect();
    match parts.as_slice() {
        [limit, _unit, _window, scope, id, ..] => {
            Some(((limit.to_string(), scope.to_string()), unescape(id)))
        }
        _ => None,
    }
}

/// `s` with the characters `SCAN MATCH` treats as a pattern escaped.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl RedisBackend {
    /// Every scope id with a counter under `tag`.
    async fn scope_ids(&self, tag: &str) -> Result<Found, BackendError> {
        let pattern = format!("{}:q:*", glob_escape(tag));
        let mut found = Found::new();
        let mut cursor = 0u64;
        for _ in 0..MAX_SCAN_STEPS {
            let cmd = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .clone();
            let (next, keys): (u64, Vec<String>) = self
                .call(|mut c| async move { cmd.query_async(&mut c).await })
                .await?;
            for (k, id) in keys.iter().filter_map(|k| parse_counter(tag, k)) {
                found.entry(k).or_default().insert(id);
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(found)
    }
}

impl ProviderHandle {
    /// Every shared counter of this provider at `now`: provider scope, the configured
    /// `keys` and `accounts`, and every scope id Redis holds a counter for.
    pub(crate) async fn shared_snapshot(
        &self,
        b: &RedisBackend,
        keys: &[String],
        accounts: &[String],
        now: Micros,
    ) -> Result<Vec<LimitStatus>, BackendError> {
        let tag = hash_tag(b.prefix(), self.name());
        let found = b.scope_ids(&tag).await?;
        let ctx = PlanCtx {
            tag: &tag,
            now: b.redis_now(now),
            lease: 0,
            member: &String::new,
        };
        let mut rows: Vec<(LimitStatus, Kind, String)> = Vec::new();
        for e in &self.lock().entries {
            let spec = &e.spec;
            let mut ids: BTreeSet<String> = found
                .get(&(escape(&spec.name), spec.scope.as_str().to_string()))
                .cloned()
                .unwrap_or_default();
            match spec.scope {
                Scope::Provider => ids = BTreeSet::from([String::new()]),
                Scope::Key => ids.extend(keys.iter().cloned()),
                Scope::Account => ids.extend(accounts.iter().cloned()),
                Scope::Client => {}
            }
            for id in ids {
                let (kind, key, amount) = counter_of(spec, &id, &ctx);
                let status = LimitStatus {
                    name: spec.name.clone(),
                    unit: spec.unit,
                    scope: spec.scope,
                    scope_id: id,
                    used: 0.0,
                    amount,
                    remaining: amount,
                    window: spec.window.to_string(),
                    resets_at: None,
                    shares: Vec::new(),
                };
                rows.push((status, kind, key));
            }
        }
        if rows.is_empty() {
            return Ok(rows.into_iter().map(|r| r.0).collect());
        }
        let mut inv = b.peek.prepare_invoke();
        inv.arg(rows.len());
        for (_, kind, key) in &rows {
            let (k, p1, p2) = kind.args();
            inv.key(key).arg(k).arg(p1).arg(p2);
        }
        let reply: Vec<String> = b
            .call(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        if reply.len() != 2 * rows.len() + 1 {
            return Err(BackendError::Malformed(format!(
                "{} values for {} counters",
                reply.len(),
                rows.len()
            )));
        }
        let num = |s: &str| {
            s.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| BackendError::Malformed(format!("{s:?} is not a number")))
        };
        let mut out = Vec::with_capacity(rows.len());
        for ((mut status, _, _), pair) in rows.into_iter().zip(reply.chunks_exact(2)) {
            let (used, resets) = (num(&pair[0])?.max(0.0), num(&pair[1])?);
            status.used = used;
            status.remaining = (status.amount - used).max(0.0);
            status.resets_at = (resets > 0.0).then(|| b.to_local(resets as Micros));
            out.push(status);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_names_give_back_their_scope_ids() {
        let tag = hash_tag("qp", "open:ai");
        let key = format!("{tag}:q:daily%20usd:usd:cday-UTC:client:eu%3Awest:1780000000");
        assert_eq!(
            parse_counter(&tag, &key),
            Some((
                ("daily%20usd".to_string(), "client".to_string()),
                "eu:west".to_string()
            ))
        );
        assert_eq!(parse_counter(&tag, &format!("{tag}:key:k1")), None);
        assert_eq!(parse_counter(&hash_tag("qp", "other"), &key), None);
        assert_eq!(unescape(&escape("a b:{c}%é")), "a b:{c}%é");
        assert_eq!(unescape("%zz%4"), "%zz%4");
        assert_eq!(glob_escape("{q*p}[1]"), "{q\\*p}\\[1\\]");
    }
}
