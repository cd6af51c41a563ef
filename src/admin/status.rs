//! `/status` and `/history` documents (SPEC §9), and the gauges refreshed at each scrape
//! (`limit_used`, `limit_amount`, `limit_remaining`, `queue_length`, `key_state`).

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::keys::{KeyState, LearnedUnit};
use crate::quota::{Engine, LimitStatus, Micros};
use crate::runtime::{ProviderRuntime, Runtime};
use crate::stats::Bucket;

/// RFC 3339 (UTC) for a time in µs since the epoch.
pub fn rfc3339(t: Micros) -> String {
    chrono::DateTime::from_timestamp_micros(i64::try_from(t).unwrap_or(i64::MAX))
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// One provider's limits as the status shows them, and where the figures come from.
pub struct Limits {
    pub limits: Vec<LimitStatus>,
    /// `"local"` (this process's counters), `"redis"` (shared by every replica), or
    /// `"local (redis unreachable)"`.
    pub source: &'static str,
}

/// The limits of every provider (or only `only`): from Redis when they are shared there,
/// else from this process.
pub async fn limits(rt: &Runtime, engine: &Engine, only: Option<&str>) -> HashMap<String, Limits> {
    let now = engine.clock().now();
    let mut out = HashMap::new();
    for (name, p) in rt
        .providers
        .iter()
        .filter(|(n, _)| only.is_none_or(|o| o == n.as_str()))
    {
        let keys: Vec<String> = p.config.keys.keys.iter().map(|k| k.id.clone()).collect();
        let mut accounts: Vec<String> = p
            .config
            .keys
            .keys
            .iter()
            .filter_map(|k| k.account.clone())
            .collect();
        accounts.sort();
        accounts.dedup();
        let entry = match p.quota.shared_snapshot(&keys, &accounts, now).await {
            None => Limits {
                limits: p.quota.snapshot(now),
                source: "local",
            },
            Some(Ok(limits)) => Limits {
                limits,
                source: "redis",
            },
            Some(Err(e)) => {
                tracing::debug!(provider = %name, "shared counters unreadable: {e}");
                Limits {
                    limits: p.quota.snapshot(now),
                    source: "local (redis unreachable)",
                }
            }
        };
        out.insert(name.clone(), entry);
    }
    out
}

/// The whole status, or one provider's (None if no such provider). `limits` from [`limits`].
pub fn status(
    rt: &Runtime,
    engine: &Engine,
    limits: &HashMap<String, Limits>,
    only: Option<&str>,
) -> Option<Value> {
    let now = engine.clock().now();
    let mut names: Vec<&String> = rt
        .providers
        .keys()
        .filter(|n| only.is_none_or(|o| o == n.as_str()))
        .collect();
    if names.is_empty() && only.is_some() {
        return None;
    }
    names.sort();
    let providers: serde_json::Map<String, Value> = names
        .into_iter()
        .filter_map(|n| {
            Some((
                n.clone(),
                provider_status(&rt.providers[n], limits.get(n)?, now),
            ))
        })
        .collect();
    Some(json!({ "generated_at": rfc3339(now), "providers": providers }))
}

fn provider_status(p: &ProviderRuntime, l: &Limits, now: Micros) -> Value {
    p.refresh_key_states(&l.limits, now);
    let limits: Vec<Value> = l.limits.iter().map(|l| limit_json(p, l, now)).collect();
    let pool = p.pool.lock().unwrap_or_else(|e| e.into_inner());
    let keys: Vec<Value> = pool
        .keys
        .iter()
        .map(|k| {
            let signals: serde_json::Map<String, Value> = LearnedUnit::ALL
                .iter()
                .filter_map(|u| {
                    let l = k.learned[*u as usize]?;
                    Some((
                        u.name().to_string(),
                        json!({"limit": l.limit, "remaining": l.remaining, "reset_at": l.reset_at.map(rfc3339), "seen_at": rfc3339(l.seen_at)}),
                    ))
                })
                .collect();
            json!({
                "id": k.id,
                "account": k.account,
                "state": k.state.name(),
                "until": k.state.until().filter(|_| k.state != KeyState::Active).map(rfc3339),
                "in_flight": k.in_flight,
                "sent": k.sent,
                "signals": signals,
            })
        })
        .collect();
    drop(pool);
    let t = p.stats.totals();
    json!({
        "mode": if p.config.mode == crate::config::Mode::Shadow { "shadow" } else { "enforce" },
        "hosts": p.config.hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
        "route": p.config.route,
        "limits": limits,
        "counters": l.source,
        "keys": keys,
        "queue_length": p.quota.queue_len(),
        "totals": totals_json(&t),
    })
}

fn limit_json(p: &ProviderRuntime, l: &LimitStatus, now: Micros) -> Value {
    let warn_at = p
        .config
        .limits
        .iter()
        .find(|c| c.name == l.name)
        .and_then(|c| c.warn_at);
    let shares: Vec<Value> = l
        .shares
        .iter()
        .map(|s| json!({"client": s.client, "used": s.used, "guaranteed": s.guaranteed}))
        .collect();
    json!({
        "name": l.name,
        "unit": l.unit.as_str(),
        "scope": l.scope.as_str(),
        "scope_id": l.scope_id,
        "used": round(l.used),
        "amount": l.amount,
        "remaining": round(l.remaining),
        "percentage": if l.amount > 0.0 { round(100.0 * l.used / l.amount) } else { 0.0 },
        "window": l.window,
        "resets_at": l.resets_at.map(rfc3339),
        "seconds_until_reset": l.resets_at.map(|t| round(t.saturating_sub(now) as f64 / 1e6)),
        "warn_at": warn_at,
        "shares": shares,
    })
}

fn round(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

fn totals_json(t: &Bucket) -> Value {
    json!({
        "requests": t.requests,
        "tokens": t.input_tokens + t.output_tokens,
        "input_tokens": t.input_tokens,
        "output_tokens": t.output_tokens,
        "usd": round(t.usd),
        "delayed": t.delayed,
        "rejected": t.rejected,
        "upstream_429": t.upstream_429,
        "upstream_errors": t.upstream_errors,
    })
}

/// `/history?provider=P&range=24h`: hourly buckets per provider.
pub fn history(rt: &Runtime, engine: &Engine, query: Option<&str>) -> Result<Value, String> {
    let mut provider = None;
    let mut hours = 24usize;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("provider", v)) => provider = Some(v.to_string()),
            Some(("range", v)) => {
                let d = crate::config::parse_duration(v).map_err(|e| format!("range: {e}"))?;
                hours = (d.as_secs().div_ceil(3600) as usize).clamp(1, crate::stats::HISTORY_HOURS);
            }
            _ => {
                return Err(format!(
                    "unknown parameter {pair:?}; expected provider=NAME and range=24h"
                ))
            }
        }
    }
    if let Some(p) = &provider {
        if !rt.providers.contains_key(p) {
            return Err(format!("no provider named {p:?}"));
        }
    }
    let now = engine.clock().now();
    let mut out = serde_json::Map::new();
    let mut names: Vec<&String> = rt
        .providers
        .keys()
        .filter(|n| provider.as_ref().is_none_or(|p| p == *n))
        .collect();
    names.sort();
    for name in names {
        let buckets: Vec<Value> = rt.providers[name]
            .stats
            .history(now, hours)
            .into_iter()
            .map(|(start, b)| {
                let mut v = totals_json(&b);
                v["start"] = json!(rfc3339(start));
                v
            })
            .collect();
        out.insert(name.clone(), Value::Array(buckets));
    }
    Ok(json!({ "range_hours": hours, "providers": out }))
}

/// Sets the per-limit, queue and key-state gauges from the current state.
pub fn refresh_gauges(rt: &Runtime, engine: &Engine, limits: &HashMap<String, Limits>) {
    let now = engine.clock().now();
    for (name, p) in &rt.providers {
        let Some(limits) = limits.get(name) else {
            continue;
        };
        for l in &limits.limits {
            let labels = [
                ("provider", name.clone()),
                ("limit", l.name.clone()),
                ("scope_id", l.scope_id.clone()),
            ];
            metrics::gauge!("quota_proxy_limit_used", &labels).set(l.used);
            metrics::gauge!("quota_proxy_limit_amount", &labels).set(l.amount);
            metrics::gauge!("quota_proxy_limit_remaining", &labels).set(l.remaining);
        }
        metrics::gauge!("quota_proxy_queue_length", "provider" => name.clone())
            .set(p.quota.queue_len() as f64);
        p.refresh_key_states(&limits.limits, now);
        let pool = p.pool.lock().unwrap_or_else(|e| e.into_inner());
        for k in &pool.keys {
            for state in KeyState::NAMES {
                let v = if k.state.name() == state { 1.0 } else { 0.0 };
                metrics::gauge!("quota_proxy_key_state", "provider" => name.clone(), "key" => k.id.clone(), "state" => state).set(v);
            }
        }
    }
}
