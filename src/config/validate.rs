//! Validation: raw config → [`Config`]. Each check reports the span of the offending value.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use super::load::{ConfigError, Locator};
use super::model::{self, *};
use super::presets::{self, PresetInject};
use super::raw::{self, RawConfig, RawLimit, RawProvider};
use super::values::Text;

type Result<T> = std::result::Result<T, ConfigError>;

pub fn validate(raw: RawConfig, loc: &Locator<'_>) -> Result<Config> {
    let proxy = proxy_settings(raw.proxy, loc)?;
    let admin = AdminSettings {
        listen: raw
            .admin
            .listen
            .map(|l| l.0)
            .unwrap_or(([127, 0, 0, 1], 9090).into()),
        token: match raw.admin.token_env {
            Some(Text(var)) => Some(secret_from_env(&var).map_err(|m| loc.at(None, m))?),
            None => None,
        },
    };
    let tls = TlsSettings {
        ca_cert: path_or(raw.tls.ca_cert, "certs/ca.crt"),
        ca_key: path_or(raw.tls.ca_key, "certs/ca.key"),
        extra_upstream_roots: match raw.tls.extra_upstream_roots {
            Some(s) => {
                let span = s.span();
                let p = PathBuf::from(s.into_inner().0);
                if !p.is_file() {
                    return Err(loc.at(
                        Some(span),
                        format!("extra_upstream_roots: no such file {}", p.display()),
                    ));
                }
                Some(p)
            }
            None => None,
        },
        leaf_cache_size: raw.tls.leaf_cache_size.unwrap_or(1000).max(1),
        leaf_cache_ttl: raw
            .tls
            .leaf_cache_ttl
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(12 * 3600)),
    };
    let state = StateSettings {
        backend: raw.state.backend.unwrap_or(Backend::Local),
        dir: path_or(raw.state.dir, "state"),
        flush_interval: raw
            .state
            .flush_interval
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(1)),
        redis_url: raw.state.redis_url.map(|t| t.0 .0),
        redis_prefix: raw
            .state
            .redis_prefix
            .map(|t| t.0)
            .unwrap_or_else(|| "quota-proxy".into()),
        redis_timeout: raw
            .state
            .redis_timeout
            .map(|d| d.0)
            .unwrap_or(Duration::from_millis(100)),
        on_backend_error: raw.state.on_backend_error.unwrap_or(OnBackendError::Local),
    };
    if state.backend == Backend::Redis && state.redis_url.is_none() {
        return Err(loc.at(None, "[state] backend = \"redis\" needs redis_url"));
    }
    security_checks(&proxy, &admin, loc)?;

    let mut providers = Vec::new();
    let mut routes: HashMap<String, String> = HashMap::new();
    for (name, spanned) in raw.providers {
        let span = spanned.span();
        let p = provider(&name, spanned.into_inner(), loc)?;
        if let Some(route) = &p.route {
            if let Some(other) = routes.insert(route.clone(), name.clone()) {
                return Err(loc.at(
                    Some(span),
                    format!("providers `{other}` and `{name}` both use route {route:?}"),
                ));
            }
        }
        providers.push(Arc::new(p));
    }
    Ok(Config {
        source: loc.file.to_path_buf(),
        proxy,
        admin,
        tls,
        state,
        providers,
    })
}

fn path_or(value: Option<Text>, default: &str) -> PathBuf {
    PathBuf::from(value.map(|t| t.0).unwrap_or_else(|| default.to_string()))
}

fn secret_from_env(var: &str) -> std::result::Result<Secret, String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(Secret::new(v)),
        _ => Err(format!("environment variable `{var}` is not set")),
    }
}

fn proxy_settings(raw: raw::RawProxy, loc: &Locator<'_>) -> Result<ProxySettings> {
    let mut allowed_networks = Vec::new();
    for n in raw.allowed_networks.unwrap_or_default() {
        let span = n.span();
        let net = Network::from_str(&n.into_inner().0).map_err(|m| loc.at(Some(span), m))?;
        allowed_networks.push(net);
    }
    let auth_password = match raw.auth {
        Some(a) => Some(
            secret_from_env(&a.password_env.0)
                .map_err(|m| loc.at(None, format!("[proxy.auth] password_env: {m}")))?,
        ),
        None => None,
    };
    let max_header_bytes = raw.max_header_bytes.unwrap_or(64 * 1024);
    if max_header_bytes < 1024 {
        return Err(loc.at(None, "[proxy] max_header_bytes must be at least 1024"));
    }
    let resolve = raw
        .resolve
        .unwrap_or_default()
        .into_iter()
        .map(|(host, ip)| (host.to_ascii_lowercase(), ip.0))
        .collect();
    Ok(ProxySettings {
        listen: raw
            .listen
            .map(|l| l.0)
            .unwrap_or(([127, 0, 0, 1], 8080).into()),
        unmatched: raw.unmatched.unwrap_or(Unmatched::Tunnel),
        connect_ports: raw.connect_ports.unwrap_or_else(|| vec![443]),
        allow_private_destinations: raw.allow_private_destinations.unwrap_or(false),
        drain_timeout: raw
            .drain_timeout
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(30)),
        header_read_timeout: raw
            .header_read_timeout
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(10)),
        connect_timeout: raw
            .connect_timeout
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(10)),
        upstream_timeout: raw
            .upstream_timeout
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(300)),
        max_connections: raw.max_connections.unwrap_or(10_000).max(1),
        max_header_bytes,
        max_body_buffer: raw.max_body_buffer.unwrap_or(4 * 1024 * 1024),
        max_h2_streams: raw.max_h2_streams.unwrap_or(100).max(1),
        allowed_networks,
        auth_password,
        resolve,
    })
}

/// SPEC §12: listeners off loopback need proxy auth or a client allow-list.
fn security_checks(proxy: &ProxySettings, admin: &AdminSettings, loc: &Locator<'_>) -> Result<()> {
    let guarded = proxy.auth_password.is_some() || !proxy.allowed_networks.is_empty();
    if !proxy.listen.ip().is_loopback() && !guarded {
        return Err(loc.at(
            None,
            format!(
                "[proxy] listen = \"{}\" is not loopback: set [proxy.auth] password_env or \
                 [proxy] allowed_networks so the proxy is not open to the network",
                proxy.listen
            ),
        ));
    }
    if !admin.listen.ip().is_loopback()
        && admin.token.is_none()
        && proxy.allowed_networks.is_empty()
    {
        return Err(loc.at(
            None,
            format!(
                "[admin] listen = \"{}\" is not loopback: set [admin] token_env or \
                 [proxy] allowed_networks",
                admin.listen
            ),
        ));
    }
    Ok(())
}

fn provider(name: &str, raw: RawProvider, loc: &Locator<'_>) -> Result<Provider> {
    let err = |span: Option<std::ops::Range<usize>>, msg: String| {
        loc.at(span, format!("providers.{name}: {msg}"))
    };
    let preset = match &raw.preset {
        Some(p) => Some(presets::find(p.get_ref()).ok_or_else(|| {
            err(
                Some(p.span()),
                format!(
                    "unknown preset {:?}; expected one of {}",
                    p.get_ref(),
                    presets::names()
                ),
            )
        })?),
        None => None,
    };
    let mut hosts = Vec::new();
    match raw.hosts {
        Some(list) => {
            for h in list {
                let span = h.span();
                hosts.push(
                    HostPattern::from_str(&h.into_inner().0).map_err(|m| err(Some(span), m))?,
                );
            }
        }
        None => {
            for h in preset.map(|p| p.hosts).unwrap_or_default() {
                hosts.push(HostPattern::from_str(h).map_err(|m| err(None, m))?);
            }
        }
    }
    let route = match raw.route {
        Some(r) => {
            let span = r.span();
            Some(normalize_route(&r.into_inner().0).map_err(|m| err(Some(span), m))?)
        }
        None => preset.map(|p| p.route.to_string()),
    };
    let upstream = match raw.upstream {
        Some(u) => {
            let span = u.span();
            Some(parse_upstream(&u.into_inner().0).map_err(|m| err(Some(span), m))?)
        }
        None => match preset {
            Some(p) => Some(parse_upstream(p.upstream).map_err(|m| err(None, m))?),
            None => None,
        },
    };
    if hosts.is_empty() && route.is_none() {
        return Err(err(
            None,
            "needs `hosts` or `route` (or a `preset`) so traffic can reach it".into(),
        ));
    }
    if route.is_some() && upstream.is_none() {
        return Err(err(
            None,
            "`route` needs `upstream` (where route-mode calls are sent)".into(),
        ));
    }
    let keys = key_pool(name, raw.keys, preset, loc)?;
    let mut limits = Vec::new();
    let mut names = HashSet::new();
    for l in raw.limits {
        let span = l.span();
        let limit = limit(l.into_inner(), span.clone()).map_err(|(at, m)| err(Some(at), m))?;
        if !names.insert(limit.name.clone()) {
            return Err(err(
                Some(span),
                format!("two limits are named {:?}", limit.name),
            ));
        }
        limits.push(limit);
    }
    for key in &keys.keys {
        for lname in key.limits.keys() {
            let ok = limits
                .iter()
                .any(|l| &l.name == lname && matches!(l.scope, Scope::Key | Scope::Account));
            if !ok {
                return Err(err(None, format!(
                    "key `{}` overrides limit {lname:?}, but no limit of that name has scope \"key\" or \"account\"",
                    key.id
                )));
            }
        }
    }
    let on_limit = match raw.on_limit {
        Some(o) => OnLimit {
            action: o.action.unwrap_or_default(),
            max_delay: o.max_delay.map(|d| d.0).unwrap_or(Duration::from_secs(30)),
            max_queue: o.max_queue.unwrap_or(1000),
        },
        None => OnLimit {
            action: Action::Delay,
            max_delay: Duration::from_secs(30),
            max_queue: 1000,
        },
    };
    let retry = retry(raw.retry).map_err(|(span, m)| err(span, m))?;
    let prices = raw
        .prices
        .into_iter()
        .map(|(model, p)| {
            if p.input < 0.0 || p.output < 0.0 || !p.input.is_finite() || !p.output.is_finite() {
                Err(err(
                    None,
                    format!("price of {model:?} must be a non-negative number"),
                ))
            } else {
                Ok((
                    model,
                    Price {
                        input: p.input,
                        output: p.output,
                    },
                ))
            }
        })
        .collect::<Result<_>>()?;
    let mut costs = Vec::new();
    for c in raw.costs {
        let span = c.span();
        costs.push(cost_rule(c.into_inner()).map_err(|m| err(Some(span), m))?);
    }
    let cost_from = match raw.cost_from {
        Some(raw::RawCostFrom {
            json: Some(j),
            header: None,
        }) => {
            if !j.0.starts_with('/') {
                return Err(err(None, format!("cost_from.json must be a JSON pointer like \"/tokensConsumed\", found {:?}", j.0)));
            }
            Some(CostFrom::Json(j.0))
        }
        Some(raw::RawCostFrom {
            json: None,
            header: Some(h),
        }) => Some(CostFrom::Header(h.0.to_ascii_lowercase())),
        Some(_) => {
            return Err(err(
                None,
                "cost_from takes exactly one of `json` or `header`".into(),
            ))
        }
        None => None,
    };
    for (what, v) in [("cost", raw.cost), ("usd_per_request", raw.usd_per_request)] {
        if v.is_some_and(|v| !(v >= 0.0 && v.is_finite())) {
            return Err(err(None, format!("`{what}` must be a non-negative number")));
        }
    }
    let clients = match raw.clients {
        Some(c) => {
            let span = c.span();
            let c = c.into_inner();
            let total: f64 = c.shares.values().sum();
            if c.shares.values().any(|s| !(*s > 0.0 && *s <= 1.0)) || total > 1.0 + 1e-9 {
                return Err(err(
                    Some(span),
                    "client shares must each be in (0, 1] and add up to at most 1".into(),
                ));
            }
            Some(ClientShares {
                shares: c.shares.into_iter().collect(),
                borrow: c.borrow,
            })
        }
        None => None,
    };
    let (signals, custom_signals) = signals(raw.signals, preset).map_err(|m| err(None, m))?;
    Ok(Provider {
        name: name.to_string(),
        preset: preset.map(|p| p.name.to_string()),
        hosts,
        intercept: raw.intercept.unwrap_or(false),
        route,
        upstream,
        mode: raw.mode.unwrap_or_default(),
        keys,
        limits,
        on_limit,
        retry,
        prices,
        costs,
        cost: raw.cost,
        cost_from,
        usd_per_request: raw.usd_per_request,
        clients,
        signals,
        custom_signals,
    })
}

fn normalize_route(route: &str) -> std::result::Result<String, String> {
    if !route.starts_with('/') || route.len() < 2 || route.contains(['?', '#', ' ']) {
        return Err(format!(
            "route must be a path prefix like \"/openai\", found {route:?}"
        ));
    }
    Ok(route.trim_end_matches('/').to_string())
}

/// Parses `https://host[:port][/base]`.
pub fn parse_upstream(url: &str) -> std::result::Result<UpstreamTarget, String> {
    let bad = |why: &str| format!("upstream {url:?}: {why}");
    let uri: http::Uri = url
        .parse()
        .map_err(|_| bad("not a URL like \"https://api.openai.com\""))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad("the scheme must be http or https")),
    };
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    if uri.query().is_some() {
        return Err(bad("a query string is not allowed"));
    }
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = uri.port_u16().unwrap_or(super::net::default_port(https));
    let uri_authority = http::uri::Authority::try_from(super::net::authority(&host, port, https))
        .map_err(|_| bad("the host and port do not form a valid authority"))?;
    Ok(UpstreamTarget {
        https,
        port,
        host: host.into(),
        base_path: uri.path().trim_end_matches('/').to_string(),
        uri_authority,
    })
}

fn key_pool(
    provider: &str,
    raw: Option<raw::RawKeys>,
    preset: Option<&presets::Preset>,
    loc: &Locator<'_>,
) -> Result<KeyPool> {
    let raw = raw.unwrap_or_default();
    let inject = match raw.inject {
        Some(i) => inject(&i)
            .map_err(|m| loc.at(None, format!("providers.{provider}.keys.inject: {m}")))?,
        None => match preset.map(|p| p.inject) {
            Some(PresetInject::Header(name, format)) => Inject::Header {
                name: http::HeaderName::from_static(name),
                format: format.into(),
            },
            Some(PresetInject::Query(param)) => Inject::Query {
                param: param.into(),
            },
            None => Inject::Header {
                name: http::header::AUTHORIZATION,
                format: "Bearer {key}".into(),
            },
        },
    };
    let mut keys = Vec::new();
    let mut ids = HashSet::new();
    for k in raw.pool {
        let span = k.span();
        let k = k.into_inner();
        let id = k.id.0;
        let at = |m: String| {
            loc.at(
                Some(span.clone()),
                format!("providers.{provider}.keys: key `{id}`: {m}"),
            )
        };
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(at(
                "a key id may use letters, digits, `-`, `_` and `.`".into()
            ));
        }
        if !ids.insert(id.clone()) {
            return Err(at("the id is used twice".into()));
        }
        let secret = match (k.env, k.file) {
            (Some(env), None) => secret_from_env(&env.0).map_err(at)?,
            (None, Some(file)) => {
                let text = std::fs::read_to_string(&file.0)
                    .map_err(|e| at(format!("cannot read its file {}: {}", file.0, e.kind())))?;
                let text = text.trim();
                if text.is_empty() {
                    return Err(at(format!("its file {} is empty", file.0)));
                }
                Secret::new(text)
            }
            _ => return Err(at("needs exactly one of `env` or `file`".into())),
        };
        keys.push(KeySpec {
            id,
            secret,
            account: k.account.map(|a| a.0),
            limits: k.limits.unwrap_or_default().into_iter().collect(),
        });
    }
    Ok(KeyPool {
        inject,
        strategy: raw.strategy.unwrap_or_default(),
        keys,
        invalid_recheck: raw
            .invalid_recheck
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(600)),
    })
}

fn inject(raw: &raw::RawInject) -> std::result::Result<Inject, String> {
    match (&raw.header, &raw.query, &raw.json_field) {
        (Some(h), None, None) => {
            let format = raw.format.clone().map(|f| f.0).unwrap_or_else(|| "{key}".into());
            if !format.contains("{key}") {
                return Err(format!("format {format:?} must contain {{key}}"));
            }
            let name = http::HeaderName::from_str(&h.0).map_err(|_| format!("{:?} is not a header name", h.0))?;
            Ok(Inject::Header { name, format })
        }
        (None, Some(q), None) if raw.format.is_none() => Ok(Inject::Query { param: q.0.clone() }),
        (None, None, Some(j)) if raw.format.is_none() => Ok(Inject::JsonField { field: j.0.clone() }),
        _ => Err("expected exactly one of { header = \"...\", format = \"...{key}\" }, { query = \"...\" } or { json_field = \"...\" }".into()),
    }
}

/// A limit's error is reported at the value it concerns, else at the limit's table.
fn limit(raw: RawLimit, table: Span) -> std::result::Result<Limit, (Span, String)> {
    let window_span = raw
        .window
        .as_ref()
        .map(|w| w.span())
        .unwrap_or(table.clone());
    let tz_span = raw
        .timezone
        .as_ref()
        .map(|t| t.span())
        .unwrap_or(table.clone());
    let amount_span = raw.amount.span();
    let warn_span = raw
        .warn_at
        .as_ref()
        .map(|w| w.span())
        .unwrap_or(table.clone());
    limit_inner(raw).map_err(|(field, m)| {
        let at = match field {
            Field::Window => window_span,
            Field::Timezone => tz_span,
            Field::Amount => amount_span,
            Field::WarnAt => warn_span,
            Field::Table => table,
        };
        (at, m)
    })
}

type Span = std::ops::Range<usize>;

enum Field {
    Window,
    Timezone,
    Amount,
    WarnAt,
    Table,
}

fn limit_inner(raw: RawLimit) -> std::result::Result<Limit, (Field, String)> {
    use Field::*;
    let unit = raw.unit.unwrap_or(Unit::Requests);
    let amount = *raw.amount.get_ref();
    if !(amount > 0.0 && amount.is_finite()) {
        return Err((Amount, "`amount` must be a positive number".into()));
    }
    let tz = match &raw.timezone {
        Some(t) => Some(chrono_tz::Tz::from_str(&t.get_ref().0).map_err(|_| {
            (
                Timezone,
                format!(
                    "unknown time zone {:?}; expected an IANA name like \"Europe/Berlin\"",
                    t.get_ref().0
                ),
            )
        })?),
        None => None,
    };
    let window_text = raw.window.as_ref().map(|w| w.get_ref().0.clone());
    let algorithm = raw.algorithm.unwrap_or_default();
    let window = match (unit, window_text.as_deref()) {
        (Unit::Concurrent, None) => model::Window::InFlight,
        (Unit::Concurrent, Some(_)) => return Err((Window, "a `concurrent` limit has no `window`".into())),
        (_, None) => return Err((Table, "`window` is required: a duration like \"1m\" or \"hour\", \"day\", \"week\", \"month\"".into())),
        (_, Some(w)) => {
            let period = match w {
                "hour" => Some(CalendarPeriod::Hour),
                "day" => Some(CalendarPeriod::Day),
                "week" => Some(CalendarPeriod::Week),
                "month" => Some(CalendarPeriod::Month),
                _ => None,
            };
            match period {
                Some(period) => {
                    if algorithm == raw::Algorithm::TokenBucket {
                        return Err((Window, "`token_bucket` needs a duration window, not a calendar one".into()));
                    }
                    model::Window::Calendar { period, tz: tz.unwrap_or(chrono_tz::Tz::UTC) }
                }
                None => {
                    let d = super::values::parse_duration(w).map_err(|m| {
                        (Window, format!("{m}; or a calendar window \"hour\", \"day\", \"week\", \"month\""))
                    })?;
                    if d < Duration::from_millis(1) {
                        return Err((Window, "`window` must be at least 1ms".into()));
                    }
                    if tz.is_some() {
                        return Err((Timezone, "`timezone` applies only to calendar windows (hour, day, week, month)".into()));
                    }
                    match algorithm {
                        raw::Algorithm::TokenBucket => {
                            let burst = raw.burst.unwrap_or(amount);
                            if !(burst > 0.0 && burst.is_finite()) {
                                return Err((Table, "`burst` must be a positive number".into()));
                            }
                            model::Window::TokenBucket { every: d, burst }
                        }
                        raw::Algorithm::SlidingWindow => model::Window::Rolling(d),
                    }
                }
            }
        }
    };
    if raw.burst.is_some() && !matches!(window, model::Window::TokenBucket { .. }) {
        return Err((Table, "`burst` needs algorithm = \"token_bucket\"".into()));
    }
    if let Some(w) = &raw.warn_at {
        if !(*w.get_ref() > 0.0 && *w.get_ref() <= 1.0) {
            return Err((
                WarnAt,
                "`warn_at` must be a fraction in (0, 1], like 0.8".into(),
            ));
        }
    }
    let r = raw.reserve.unwrap_or_default();
    let reserve = Reserve {
        high: r.high.unwrap_or(0.0),
        normal: r.normal.unwrap_or(0.0),
        low: r.low.unwrap_or(0.0),
    };
    if [reserve.high, reserve.normal, reserve.low]
        .iter()
        .any(|f| !(0.0..1.0).contains(f))
    {
        return Err((Table, "`reserve` fractions must be in [0, 1)".into()));
    }
    let scope = raw.scope.unwrap_or(Scope::Provider);
    let name = match raw.name {
        Some(n) if n.0.is_empty() => return Err((Table, "`name` must not be empty".into())),
        // The name is quoted in the `RateLimit` response headers (a structured-field string).
        Some(n) if !n.0.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') => {
            return Err((
                Table,
                format!(
                    "`name` {:?} may hold printable ASCII only, without `\"` or `\\` (it is quoted in the RateLimit response headers)",
                    n.0
                ),
            ))
        }
        Some(n) => n.0,
        None => match &window_text {
            Some(w) => format!("{}-per-{w}", unit_name(unit)),
            None => unit_name(unit).to_string(),
        },
    };
    Ok(Limit {
        name,
        unit,
        amount,
        window,
        scope,
        warn_at: raw.warn_at.map(|w| *w.get_ref()),
        reserve,
    })
}

pub fn unit_name(unit: Unit) -> &'static str {
    unit.as_str()
}

fn retry(
    raw: Option<raw::RawRetry>,
) -> std::result::Result<Retry, (Option<std::ops::Range<usize>>, String)> {
    let mut out = Retry {
        on: vec![429],
        max_attempts: 3,
        any_method: false,
        max_body: 1024 * 1024,
    };
    let Some(raw) = raw else { return Ok(out) };
    if let Some(on) = raw.on {
        out.on = Vec::new();
        for s in on {
            let code = *s.get_ref();
            if !matches!(code, 408 | 429 | 500 | 502 | 503 | 504) {
                return Err((Some(s.span()), format!("retry.on: {code} is not retryable; expected 408, 429, 500, 502, 503 or 504")));
            }
            out.on.push(code);
        }
    }
    if let Some(n) = raw.max_attempts {
        if n == 0 || n > 10 {
            return Err((None, "retry.max_attempts must be between 1 and 10".into()));
        }
        out.max_attempts = n;
    }
    out.any_method = raw.any_method.unwrap_or(false);
    out.max_body = raw.max_body.unwrap_or(out.max_body);
    Ok(out)
}

fn cost_rule(raw: raw::RawCostRule) -> std::result::Result<CostRule, String> {
    if !raw.path.0.starts_with('/') {
        return Err(format!(
            "costs.path must start with `/`, found {:?}",
            raw.path.0
        ));
    }
    let credits = match raw.credits {
        raw::CreditsValue::Fixed(n) if n >= 0.0 && n.is_finite() => Credits::Fixed(n),
        raw::CreditsValue::Fixed(_) => {
            return Err("costs.credits must be a non-negative number".into())
        }
        raw::CreditsValue::Expression(e) => {
            let params: Vec<String> = e.split('*').map(|p| p.trim().to_string()).collect();
            let valid = |p: &String| {
                !p.is_empty()
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            };
            if !params.iter().all(valid) {
                return Err(format!("costs.credits {e:?}: expected a number or query parameter names joined by `*`, like \"markets * regions\""));
            }
            Credits::Product(params)
        }
    };
    Ok(CostRule {
        path: raw.path.0,
        credits,
    })
}

fn signals(
    raw: Option<raw::RawSignals>,
    preset: Option<&presets::Preset>,
) -> std::result::Result<(Vec<String>, Vec<CustomSignal>), String> {
    let (families, custom) = match raw {
        None => (
            preset
                .map(|p| p.signals.iter().map(|s| s.to_string()).collect())
                .unwrap_or_default(),
            vec![],
        ),
        Some(raw::RawSignals::Families(f)) => (f, vec![]),
        Some(raw::RawSignals::Table(t)) => (t.families, t.custom),
    };
    for f in &families {
        if !presets::SIGNAL_FAMILIES.contains(&f.as_str()) {
            return Err(format!(
                "unknown signal family {f:?}; expected one of {}",
                presets::SIGNAL_FAMILIES.join(", ")
            ));
        }
    }
    let custom = custom
        .into_iter()
        .map(|c| {
            let source = match (c.header, c.json) {
                (Some(h), None) => SignalSource::Header(h.0.to_ascii_lowercase()),
                (None, Some(j)) if j.0.starts_with('/') => SignalSource::Json(j.0),
                (None, Some(j)) => {
                    return Err(format!(
                        "signals.custom json {:?} must be a JSON pointer like \"/usage/total\"",
                        j.0
                    ))
                }
                _ => return Err("signals.custom takes exactly one of `header` or `json`".into()),
            };
            Ok(CustomSignal {
                source,
                field: c.field,
                unit: c.unit.unwrap_or(Unit::Requests),
                format: c.format.unwrap_or(SignalFormat::Number),
            })
        })
        .collect::<std::result::Result<_, String>>()?;
    Ok((families, custom))
}
