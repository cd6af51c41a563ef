//! After the upstream answers: what its signals say about the key (state transitions,
//! learned limits), the usage tap that settles the real cost when the body ends (or the
//! client leaves), and the tightest limit advertised in `RateLimit` headers.

use std::sync::Arc;

use http::header::{HeaderValue, InvalidHeaderValue};
use http::Response;
use http_body_util::BodyExt;

use super::body::ResponseBody;
use super::Body;
use crate::keys::{KeyEvent, Learned};
use crate::quota::{self, Clock, Costs, Headroom, Micros, Permit, Unit};
use crate::runtime::{learned_unit, ProviderRuntime};
use crate::signals::{self, Signals, TapConfig, TapOutcome, UsageTap, Verdict};

/// Everything needed to settle a call once its response body is done.
pub struct Settlement {
    pub provider: Arc<ProviderRuntime>,
    pub permit: Permit,
    pub key: Option<usize>,
    pub key_label: Option<String>,
    pub estimate: Costs,
    pub model: Option<String>,
    /// The request's path (the route), kept only when the call's credits can be learned
    /// (an upstream cost header, or a usage format that reports credits): the route's
    /// average cost is all it serves. A copy: the request's own shares the connection's
    /// read buffer, which a long stream would keep allocated.
    pub route: Option<Box<str>>,
    /// Credits the upstream said this call cost (header signal).
    pub upstream_cost: Option<f64>,
    pub clock: Arc<dyn Clock>,
}

/// Applies an upstream response's signals to the key that served it.
pub fn observe_key(
    p: &ProviderRuntime,
    key: Option<usize>,
    label: Option<&str>,
    status: u16,
    sig: &Signals,
    now: Micros,
) {
    let learned: Vec<_> = sig
        .units
        .iter()
        .filter_map(|u| {
            let remaining = u.remaining?;
            Some((
                learned_unit(u.unit),
                Learned {
                    limit: u.limit,
                    remaining,
                    reset_at: u.reset_at,
                    seen_at: now,
                },
            ))
        })
        .collect();
    if sig.malformed > 0 {
        metrics::counter!("quota_proxy_signal_errors_total", "provider" => p.config.name.clone())
            .increment(u64::from(sig.malformed));
    }
    if let Some(label) = label {
        for (unit, l) in &learned {
            metrics::gauge!("quota_proxy_upstream_remaining", "provider" => p.config.name.clone(), "key" => label.to_string(), "unit" => unit.name())
                .set(l.remaining);
        }
    }
    let Some(i) = key else { return };
    let event = match sig.verdict {
        Some(Verdict::RateLimited) => KeyEvent::RateLimited {
            until: sig.cooling_until().unwrap_or(now + quota::SECOND),
        },
        Some(Verdict::OutOfCredit) => KeyEvent::OutOfCredit {
            until: sig.cooling_until(),
        },
        Some(Verdict::Invalid) => KeyEvent::Unauthorized,
        None if status == 429 => KeyEvent::RateLimited {
            until: sig.cooling_until().unwrap_or(now + quota::SECOND),
        },
        None => KeyEvent::Ok,
    };
    let mut pool = p.pool.lock().unwrap_or_else(|e| e.into_inner());
    let before = pool.keys.get(i).map(|k| k.state);
    pool.observe(i, event, &learned, now);
    let after = pool.keys.get(i).map(|k| k.state);
    if let (Some(sync), Some(k)) = (&p.key_sync, pool.keys.get(i)) {
        if before != after || !learned.is_empty() {
            sync.changed(&p.config.name, &k.id, before != after);
        }
    }
    drop(pool);
    let (before, after) = (before.map(|s| s.name()), after.map(|s| s.name()));
    if before != after {
        tracing::info!(provider = %p.config.name, key = label.unwrap_or(""), from = before.unwrap_or(""), to = after.unwrap_or(""), status, "key state changed");
    }
}

/// Wraps the response body in a usage tap; when it ends or is dropped, the call is settled
/// to its real cost (or, when usage is unknown, kept at the estimate).
pub fn tap_response(
    resp: Response<ResponseBody>,
    s: Settlement,
    strip_usage: bool,
) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    let config = match &s.provider.usage {
        Some(format) => TapConfig::for_response(format.clone(), &parts.headers),
        None => TapConfig::opaque(),
    }
    .strip_usage_chunk(strip_usage);
    if strip_usage {
        parts.headers.remove(http::header::CONTENT_LENGTH);
    }
    let status = parts.status.as_u16();
    let tapped = UsageTap::new(body, config, move |outcome: TapOutcome| {
        settle(s, status, outcome)
    });
    Response::from_parts(parts, tapped.boxed())
}

fn settle(s: Settlement, status: u16, outcome: TapOutcome) {
    let p = &s.provider;
    let now = s.clock.now();
    if outcome.failed {
        // The head arrived (and was counted) but the body broke off: a reset or truncation.
        p.metrics.count("upstream_error");
        p.stats.record(
            now,
            crate::stats::Bucket {
                upstream_errors: 1,
                ..Default::default()
            },
        );
    }
    if let (Some(i), Some(body)) = (s.key, outcome.body.as_ref()) {
        // Body signals of successful responses (Keepa's tokensLeft/refillIn, custom JSON).
        let mut sig = Signals::default();
        signals::from_body(&p.families, &p.custom, status, body, now, &mut sig);
        if !sig.units.is_empty() {
            observe_key(p, Some(i), s.key_label.as_deref(), status, &sig, now);
        }
    }
    let mut actual = s.estimate;
    let usage = outcome.usage.as_ref();
    if let Some(u) = usage {
        let (input, output) = (u.input_tokens as f64, u.output_tokens as f64);
        actual.set(Unit::InputTokens, input);
        actual.set(Unit::OutputTokens, output);
        actual.set(Unit::Tokens, input + output);
        let model = u.model.as_deref().or(s.model.as_deref());
        if !p.costs.prices.is_empty() || p.costs.usd_per_request.is_some() {
            actual.set(Unit::Usd, p.costs.usd(model, input, output));
        }
        let label = s.key_label.clone().unwrap_or_else(|| "none".into());
        metrics::counter!("quota_proxy_tokens_total", "provider" => p.config.name.clone(), "key" => label.clone(), "kind" => "input").increment(u.input_tokens);
        metrics::counter!("quota_proxy_tokens_total", "provider" => p.config.name.clone(), "key" => label.clone(), "kind" => "output").increment(u.output_tokens);
        let usd = actual.get(Unit::Usd);
        p.stats.record(
            now,
            crate::stats::Bucket {
                input_tokens: u.input_tokens,
                output_tokens: u.output_tokens,
                usd,
                ..Default::default()
            },
        );
        if usd > 0.0 {
            metrics::counter!("quota_proxy_cost_usd_micros_total", "provider" => p.config.name.clone(), "key" => label).increment((usd * 1e6) as u64);
        }
    }
    let credits = s.upstream_cost.or(usage.and_then(|u| u.credits));
    if let Some(c) = credits {
        actual.set(Unit::Credits, c);
        if let Some(route) = &s.route {
            p.averages
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .observe(route, c);
        }
    }
    if status >= 500 || status == 429 {
        // The upstream refused or failed: only the request itself counts.
        actual = Costs::ZERO.with(Unit::Requests, 1.0);
    }
    if let Some(i) = s.key {
        p.pool.lock().unwrap_or_else(|e| e.into_inner()).end(i);
    }
    s.permit.settle(&actual);
}

/// `RateLimit-Policy` values kept per thread ([`Tightest::policy`]).
const POLICY_CACHE: usize = 4;

/// The limit with the least room among those that applied to a call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tightest {
    pub name: Arc<str>,
    pub amount: f64,
    pub remaining: f64,
    pub window_secs: Option<u64>,
    pub reset_secs: Option<u64>,
}

impl Tightest {
    pub(crate) fn from_headroom(h: Headroom, now: Micros) -> Self {
        Tightest {
            name: h.name,
            amount: h.amount,
            remaining: h.remaining,
            window_secs: h.window_secs,
            reset_secs: h
                .resets_at
                .map(|t| t.saturating_sub(now).div_ceil(quota::SECOND)),
        }
    }

    /// `RateLimit: "name";r=REMAINING;t=RESET` (draft-ietf-httpapi-ratelimit-headers).
    pub fn ratelimit(&self) -> Result<HeaderValue, InvalidHeaderValue> {
        // `as` rounds toward zero (the floor of a non-negative number) and makes a negative
        // or NaN remainder 0: no libm call.
        self.header(";r=", self.remaining as u64, ";t=", self.reset_secs)
    }

    /// `RateLimit-Policy: "name";q=AMOUNT;w=WINDOW`. It changes only with the config, so
    /// the last few values built on this thread are kept and a repeat is a cheap clone.
    pub fn policy(&self) -> Result<HeaderValue, InvalidHeaderValue> {
        type Entry = (Arc<str>, u64, Option<u64>, HeaderValue);
        thread_local! {
            static RECENT: std::cell::RefCell<[Option<Entry>; POLICY_CACHE]> =
                const { std::cell::RefCell::new([const { None }; POLICY_CACHE]) };
        }
        let amount = self.amount as u64;
        let window = self.window_secs;
        let same = |e: &Entry| e.1 == amount && e.2 == window && e.0 == self.name;
        RECENT.with_borrow_mut(|recent| {
            if let Some((.., v)) = recent.iter().flatten().find(|e| same(e)) {
                return Ok(v.clone());
            }
            let v = self.header(";q=", amount, ";w=", window)?;
            // The newest first; the oldest falls out.
            recent.rotate_right(1);
            recent[0] = Some((Arc::clone(&self.name), amount, window, v.clone()));
            Ok(v)
        })
    }

    /// `"name"` A=a [B=b], written once into a buffer of its exact size that becomes the
    /// value's own storage (once per response: one allocation, no formatting machinery).
    fn header(
        &self,
        a: &str,
        av: u64,
        b: &str,
        bv: Option<u64>,
    ) -> Result<HeaderValue, InvalidHeaderValue> {
        let (mut ab, mut bb) = (itoa::Buffer::new(), itoa::Buffer::new());
        let av = ab.format(av);
        let bv = bv.map(|v| bb.format(v));
        let len = self.name.len() + 2 + a.len() + av.len() + bv.map_or(0, |v| b.len() + v.len());
        let mut out = Vec::with_capacity(len);
        out.push(b'"');
        out.extend_from_slice(self.name.as_bytes());
        out.push(b'"');
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(av.as_bytes());
        if let Some(v) = bv {
            out.extend_from_slice(b.as_bytes());
            out.extend_from_slice(v.as_bytes());
        }
        // Length equal to capacity: the vector becomes the `Bytes` without a copy or a
        // shared header.
        HeaderValue::from_maybe_shared(bytes::Bytes::from(out))
    }
}

/// The limit with the least room for a call by (client, key, account) at `now`, read from
/// the provider's counters without copying them ([`quota::Provider::tightest`]).
pub fn tightest(
    quota: &quota::Provider,
    client: &str,
    key: Option<&str>,
    account: Option<&str>,
    now: Micros,
) -> Option<Tightest> {
    quota
        .tightest(client, key, account, now)
        .map(|h| Tightest::from_headroom(h, now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::{LimitStatus, Scope};

    /// The reference: filter the full snapshot by scope, smallest remaining fraction.
    fn from_snapshot(
        snapshot: &[LimitStatus],
        client: &str,
        key: Option<&str>,
        account: Option<&str>,
        now: Micros,
    ) -> Option<Tightest> {
        snapshot
            .iter()
            .filter(|l| l.unit != Unit::Concurrent && l.amount > 0.0)
            .filter(|l| match l.scope {
                Scope::Provider => true,
                Scope::Client => l.scope_id == client,
                Scope::Key => Some(l.scope_id.as_str()) == key,
                Scope::Account => Some(l.scope_id.as_str()) == account,
            })
            .min_by(|a, b| (a.remaining / a.amount).total_cmp(&(b.remaining / b.amount)))
            .map(|l| Tightest {
                name: l.name.as_str().into(),
                amount: l.amount,
                remaining: l.remaining,
                window_secs: crate::config::parse_duration(&l.window)
                    .ok()
                    .map(|d| d.as_secs().max(1)),
                reset_secs: l
                    .resets_at
                    .map(|t| t.saturating_sub(now).div_ceil(quota::SECOND)),
            })
    }

    fn status(name: &str, scope: Scope, id: &str, used: f64, amount: f64) -> LimitStatus {
        LimitStatus {
            name: name.into(),
            unit: Unit::Requests,
            scope,
            scope_id: id.into(),
            used,
            amount,
            remaining: amount - used,
            window: "1m".into(),
            resets_at: Some(30 * quota::SECOND),
            shares: vec![],
        }
    }

    /// The kept policy values never stand in for another limit's: a name, amount or window
    /// that differs gets its own value, also after more policies than are kept.
    #[test]
    fn policy_values_follow_name_amount_and_window() {
        let t = |name: &str, amount: f64, window: Option<u64>| Tightest {
            name: name.into(),
            amount,
            remaining: 1.0,
            window_secs: window,
            reset_secs: Some(3),
        };
        for round in 0..3 {
            for i in 0..(POLICY_CACHE as u64 + 2) {
                let amount = 10.0 + i as f64;
                assert_eq!(
                    t("rpm", amount, Some(60)).policy().unwrap(),
                    format!("\"rpm\";q={};w=60", 10 + i).as_str(),
                    "round {round}"
                );
            }
            assert_eq!(t("rpm", 10.9, None).policy().unwrap(), "\"rpm\";q=10");
            assert_eq!(
                t("rpm", 10.0, Some(1)).policy().unwrap(),
                "\"rpm\";q=10;w=1"
            );
            assert_eq!(
                t("tpm", 10.0, Some(60)).policy().unwrap(),
                "\"tpm\";q=10;w=60"
            );
            assert_eq!(
                t("rpm", 10.0, Some(60)).policy().unwrap(),
                "\"rpm\";q=10;w=60"
            );
        }
    }

    /// `r=` is the whole units left: a fraction rounds down, and nothing left is 0 however
    /// the counters read.
    #[test]
    fn ratelimit_remaining_is_whole_and_never_negative() {
        let t = |remaining: f64| Tightest {
            name: "tpm".into(),
            amount: 100.0,
            remaining,
            window_secs: Some(60),
            reset_secs: None,
        };
        for (remaining, want) in [
            (4.9, "\"tpm\";r=4"),
            (100.0, "\"tpm\";r=100"),
            (0.2, "\"tpm\";r=0"),
            (-3.5, "\"tpm\";r=0"),
            (f64::NAN, "\"tpm\";r=0"),
        ] {
            assert_eq!(t(remaining).ratelimit().unwrap(), want, "{remaining}");
        }
    }

    #[test]
    fn tightest_limit_applies_to_the_call() {
        let snap = vec![
            status("rpm", Scope::Provider, "", 10.0, 100.0),
            status("per-client", Scope::Client, "other", 9.0, 10.0),
            status("per-client", Scope::Client, "me", 5.0, 10.0),
            status("per-key", Scope::Key, "k1", 1.0, 10.0),
        ];
        let t = from_snapshot(&snap, "me", Some("k1"), None, 0).unwrap();
        assert_eq!(&*t.name, "per-client");
        assert_eq!(t.ratelimit().unwrap(), "\"per-client\";r=5;t=30");
        assert_eq!(t.policy().unwrap(), "\"per-client\";q=10;w=60");
        assert_eq!(
            &*from_snapshot(&snap, "nobody", None, None, 0).unwrap().name,
            "rpm"
        );
    }

    /// The direct lookup gives what filtering the whole snapshot gives, for callers that
    /// have counters and callers that have none yet, across scopes and window kinds.
    #[test]
    fn direct_lookup_matches_the_snapshot() {
        use crate::quota::{
            CalendarPeriod, Demand, Engine, LimitSpec, ManualClock, ProviderSpec, WindowKind,
        };
        let minute = WindowKind::Rolling {
            len: 60 * quota::SECOND,
        };
        let spec = ProviderSpec::new(
            "p",
            vec![
                LimitSpec::new("rpm", Unit::Requests, 100.0, minute),
                LimitSpec::new("client-rpm", Unit::Requests, 10.0, minute)
                    .with_scope(Scope::Client),
                LimitSpec::new(
                    "key-day",
                    Unit::Requests,
                    20.0,
                    WindowKind::Calendar {
                        period: CalendarPeriod::Day,
                        tz: chrono_tz::UTC,
                    },
                )
                .with_scope(Scope::Key),
                LimitSpec::new(
                    "bucket",
                    Unit::Requests,
                    50.0,
                    WindowKind::TokenBucket {
                        len: 10 * quota::SECOND,
                        burst: 40.0,
                    },
                ),
                LimitSpec::new("acct", Unit::Requests, 7.0, minute).with_scope(Scope::Account),
                LimitSpec::new("inflight", Unit::Concurrent, 10.0, WindowKind::None),
                LimitSpec::new(
                    "sub-second",
                    Unit::Requests,
                    1000.0,
                    WindowKind::Rolling { len: 250_000 },
                ),
            ],
        );
        let clock = Arc::new(ManualClock::new(1_800_000_000 * quota::SECOND));
        let engine = Engine::new(vec![spec], clock.clone());
        let provider = engine.provider("p").unwrap();
        let callers: [(&str, Option<&str>, Option<&str>); 5] = [
            ("a", Some("k1"), Some("acct-1")),
            ("b", Some("k2"), None),
            ("a", None, None),
            ("new-client", Some("k1"), Some("acct-2")),
            ("b", Some("unseen-key"), Some("acct-1")),
        ];
        let check = |label: &str| {
            let now = clock.now();
            let snap = provider.snapshot(now);
            for (client, key, account) in callers {
                assert_eq!(
                    tightest(&provider, client, key, account, now),
                    from_snapshot(&snap, client, key, account, now),
                    "{label}: caller {client} {key:?} {account:?}"
                );
            }
        };
        check("before any call");
        let mut held = Vec::new();
        for (i, (client, key, account)) in callers.iter().take(3).cycle().take(9).enumerate() {
            let mut d = Demand::new(client, Costs::ZERO.with(Unit::Requests, 1.0));
            if let Some(k) = key {
                d = d.with_key(k);
            }
            if let Some(a) = account {
                d = d.with_account(a);
            }
            let permit = provider.try_admit(&d).expect("admitted");
            if i % 2 == 0 {
                permit.settle(&Costs::ZERO.with(Unit::Requests, 1.0));
            } else {
                held.push(permit);
            }
            check("after calls");
            clock.advance(700_000);
        }
        clock.advance(30 * quota::SECOND);
        check("half a minute later");
        drop(held);
        check("in-flight calls ended");
    }
}
