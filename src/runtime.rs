//! What a config becomes at run time: the upstream client, the interception leaves, and per
//! provider the engine handle, key pool, cost model and signal families. Quota state and key
//! pools live in [`Persistent`] and survive reloads; everything else is rebuilt whole.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::{self, Config, Provider as ProviderConfig};
use crate::keys::{self, Pool};
use crate::quota::{self, CostModel, Engine, RouteAverages};
use crate::signals::{self, Family, UsageFormat};
use crate::stats::ProviderStats;
use crate::tls::LeafCache;
use crate::upstream::UpstreamClient;

/// Everything a config produces; swapped whole on reload.
pub struct Runtime {
    pub config: Arc<Config>,
    pub client: UpstreamClient,
    /// Leaf certificates for intercepted hosts; present when a provider intercepts.
    pub leaves: Option<Arc<LeafCache>>,
    /// Per provider, by name.
    /// Looked up by name on every call: foldhash, not SipHash (the names are the config's).
    pub providers: ProviderMap,
}

impl Runtime {
    pub fn provider(&self, name: &str) -> Option<&Arc<ProviderRuntime>> {
        self.providers.get(name)
    }
}

/// The runtime state of each configured provider, by name.
pub type ProviderMap = HashMap<String, Arc<ProviderRuntime>, foldhash::fast::RandomState>;

/// State that outlives a config: the quota engine and the key pools.
pub struct Persistent {
    pub engine: Arc<Engine>,
    pub pools: Mutex<HashMap<String, Arc<Mutex<Pool>>>>,
    pub averages: Mutex<HashMap<String, Arc<Mutex<RouteAverages>>>>,
    pub stats: Mutex<HashMap<String, Arc<ProviderStats>>>,
    /// Key states shared with other replicas (Redis backend only).
    pub key_sync: std::sync::OnceLock<Arc<crate::state::KeySync>>,
}

impl Persistent {
    pub fn new(clock: Arc<dyn quota::Clock>) -> Self {
        let engine = Engine::new(Vec::new(), clock);
        // `warn_at`: one log line and one metric increment when a limit crosses its threshold
        // (once per window and scope id).
        engine.set_warn_hook(Arc::new(|provider: &str, w: &quota::WarnEvent| {
            tracing::warn!(
                provider,
                limit = %w.limit,
                scope = w.scope.as_str(),
                scope_id = %w.scope_id,
                used = w.used,
                amount = w.amount,
                "limit is {:.0}% used (warn_at {:.0}%)",
                100.0 * w.used / w.amount.max(f64::MIN_POSITIVE),
                100.0 * w.warn_at
            );
            metrics::counter!("quota_proxy_limit_warnings_total", "provider" => provider.to_string(), "limit" => w.limit.clone())
                .increment(1);
        }));
        Persistent {
            engine: Arc::new(engine),
            pools: Mutex::new(HashMap::new()),
            averages: Mutex::new(HashMap::new()),
            stats: Mutex::new(HashMap::new()),
            key_sync: std::sync::OnceLock::new(),
        }
    }
}

/// One provider at run time.
pub struct ProviderRuntime {
    pub config: Arc<ProviderConfig>,
    pub quota: quota::Provider,
    pub pool: Arc<Mutex<Pool>>,
    /// Key secrets by pool index.
    pub secrets: Vec<config::Secret>,
    pub costs: CostModel,
    pub averages: Arc<Mutex<RouteAverages>>,
    pub families: Vec<Family>,
    pub custom: Vec<signals::CustomSignal>,
    /// How usage is read from responses (None: not read).
    pub usage: Option<UsageFormat>,
    /// Whether the proxy sets OpenAI's `stream_options.include_usage`.
    pub openai_usage: bool,
    pub stats: Arc<ProviderStats>,
    /// Shares this provider's key states with other replicas (Redis backend).
    pub key_sync: Option<Arc<crate::state::KeySync>>,
    pub metrics: crate::telemetry::ProviderMetrics,
}

impl ProviderRuntime {
    /// Marks keys whose key-scope calendar limit is spent as `exhausted` until the window
    /// resets (SPEC §6), so status, metrics and key choice show it. Admission already refuses
    /// such keys; this makes the state visible.
    pub fn refresh_key_states(&self, limits: &[quota::LimitStatus], now: quota::Micros) {
        let calendar: Vec<&str> = self
            .config
            .limits
            .iter()
            .filter(|l| {
                l.scope == quota::Scope::Key && matches!(l.window, config::Window::Calendar { .. })
            })
            .map(|l| l.name.as_str())
            .collect();
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        pool.refresh(now);
        if calendar.is_empty() {
            return;
        }
        for l in limits {
            let spent = l.scope == quota::Scope::Key
                && l.remaining < 1e-9
                && calendar.contains(&l.name.as_str());
            if let (true, Some(until), Some(i)) = (spent, l.resets_at, pool.index(&l.scope_id)) {
                pool.observe(i, keys::KeyEvent::Exhausted { until }, &[], now);
            }
        }
    }
}

/// Builds the per-provider runtimes and applies their specs to the engine.
pub fn providers(config: &Config, persistent: &Persistent) -> ProviderMap {
    let specs: Vec<quota::ProviderSpec> =
        config.providers.iter().map(|p| provider_spec(p)).collect();
    persistent.engine.replace(specs);
    let mut pools = persistent.pools.lock().unwrap_or_else(|p| p.into_inner());
    let mut averages = persistent
        .averages
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let mut stats = persistent.stats.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = ProviderMap::default();
    for p in &config.providers {
        let Some(handle) = persistent.engine.provider(&p.name) else {
            continue;
        };
        let invalid_recheck = quota::duration_micros(p.keys.invalid_recheck);
        let fresh = Pool::new(
            p.keys
                .keys
                .iter()
                .map(|k| (k.id.clone(), k.account.clone())),
            p.keys.strategy,
            invalid_recheck,
        );
        let pool = pools
            .entry(p.name.clone())
            .or_insert_with(|| Arc::new(Mutex::new(fresh.clone())))
            .clone();
        pool.lock()
            .unwrap_or_else(|e| e.into_inner())
            .reconfigure(fresh);
        let avg = averages
            .entry(p.name.clone())
            .or_insert_with(|| Arc::new(Mutex::new(RouteAverages::new())))
            .clone();
        let families: Vec<Family> = p.signals.iter().filter_map(|s| s.parse().ok()).collect();
        let mut custom: Vec<signals::CustomSignal> =
            p.custom_signals.iter().map(custom_signal).collect();
        let mut usage = families.iter().find_map(|f| UsageFormat::for_family(*f));
        match &p.cost_from {
            Some(config::CostFrom::Json(ptr)) => {
                usage = Some(UsageFormat::Custom(vec![(
                    ptr.clone(),
                    signals::UsageField::Credits,
                )]));
            }
            Some(config::CostFrom::Header(h)) => custom.push(signals::CustomSignal {
                source: signals::Source::Header(h.clone()),
                field: signals::Field::Cost,
                unit: signals::SignalUnit::Credits,
                format: signals::Format::Number,
            }),
            None => {}
        }
        let rt = ProviderRuntime {
            config: p.clone(),
            quota: handle,
            pool,
            secrets: p.keys.keys.iter().map(|k| k.secret.clone()).collect(),
            costs: cost_model(p),
            averages: avg,
            openai_usage: families.contains(&Family::OpenAi),
            families,
            custom,
            usage,
            stats: stats.entry(p.name.clone()).or_default().clone(),
            key_sync: persistent.key_sync.get().cloned(),
            metrics: crate::telemetry::ProviderMetrics::new(&p.name),
        };
        out.insert(p.name.clone(), Arc::new(rt));
    }
    pools.retain(|name, _| out.contains_key(name));
    out
}

fn limit_spec(l: &config::Limit) -> quota::LimitSpec {
    let window = match l.window {
        config::Window::Rolling(d) => quota::WindowKind::Rolling {
            len: quota::duration_micros(d),
        },
        config::Window::TokenBucket { every, burst } => quota::WindowKind::TokenBucket {
            len: quota::duration_micros(every),
            burst,
        },
        config::Window::Calendar { period, tz } => quota::WindowKind::Calendar {
            period: match period {
                config::CalendarPeriod::Hour => quota::CalendarPeriod::Hour,
                config::CalendarPeriod::Day => quota::CalendarPeriod::Day,
                config::CalendarPeriod::Week => quota::CalendarPeriod::Week,
                config::CalendarPeriod::Month => quota::CalendarPeriod::Month,
            },
            tz,
        },
        config::Window::InFlight => quota::WindowKind::None,
    };
    let mut spec = quota::LimitSpec::new(l.name.clone(), l.unit, l.amount, window)
        .with_scope(l.scope)
        .with_reserve(quota::PriorityReserve {
            high: l.reserve.high,
            normal: l.reserve.normal,
            low: l.reserve.low,
        });
    if let Some(w) = l.warn_at {
        spec = spec.with_warn_at(w);
    }
    spec
}

/// The engine's view of a provider.
pub fn provider_spec(p: &ProviderConfig) -> quota::ProviderSpec {
    let limits: Vec<quota::LimitSpec> = p.limits.iter().map(limit_spec).collect();
    let key_limits = p
        .keys
        .keys
        .iter()
        .filter(|k| !k.limits.is_empty())
        .map(|k| {
            let overrides = p
                .limits
                .iter()
                .filter_map(|l| {
                    k.limits.get(&l.name).map(|amount| {
                        limit_spec(&config::Limit {
                            amount: *amount,
                            ..l.clone()
                        })
                    })
                })
                .collect();
            (k.id.clone(), overrides)
        })
        .collect();
    let mut spec = quota::ProviderSpec::new(p.name.clone(), limits);
    spec.key_limits = key_limits;
    spec.shares = p.clients.as_ref().map(|c| quota::ClientShares {
        shares: c.shares.clone(),
        borrow: c.borrow,
    });
    spec.shadow = p.mode == config::Mode::Shadow;
    spec.on_limit = quota::OnLimit {
        action: match p.on_limit.action {
            config::Action::Delay => quota::OnLimitAction::Delay,
            config::Action::Reject => quota::OnLimitAction::Reject,
        },
        max_delay: quota::duration_micros(p.on_limit.max_delay),
        max_queue: p.on_limit.max_queue,
    };
    spec
}

fn cost_model(p: &ProviderConfig) -> CostModel {
    CostModel {
        routes: p
            .costs
            .iter()
            .map(|c| quota::RouteCost {
                path: c.path.clone(),
                credits: match &c.credits {
                    config::Credits::Fixed(n) => quota::CreditRule::Fixed(*n),
                    config::Credits::Product(params) => quota::CreditRule::Product(params.clone()),
                },
            })
            .collect(),
        fixed_credits: p.cost,
        prices: p
            .prices
            .iter()
            .map(|(m, pr)| {
                (
                    m.clone(),
                    quota::Price {
                        input: pr.input,
                        output: pr.output,
                    },
                )
            })
            .collect(),
        usd_per_request: p.usd_per_request,
    }
}

fn custom_signal(c: &config::CustomSignal) -> signals::CustomSignal {
    signals::CustomSignal {
        source: match &c.source {
            config::SignalSource::Header(h) => signals::Source::Header(h.clone()),
            config::SignalSource::Json(j) => signals::Source::Json(j.clone()),
        },
        field: match c.field {
            config::SignalField::Limit => signals::Field::Limit,
            config::SignalField::Remaining => signals::Field::Remaining,
            config::SignalField::Reset => signals::Field::Reset,
            config::SignalField::Cost => signals::Field::Cost,
        },
        unit: learned_signal_unit(c.unit),
        format: match c.format {
            config::SignalFormat::Number => signals::Format::Number,
            config::SignalFormat::Seconds => signals::Format::Seconds,
            config::SignalFormat::Epoch => signals::Format::Epoch,
            config::SignalFormat::Duration => signals::Format::Duration,
            config::SignalFormat::Rfc3339 => signals::Format::Rfc3339,
        },
    }
}

fn learned_signal_unit(u: config::Unit) -> signals::SignalUnit {
    match u {
        config::Unit::Tokens => signals::SignalUnit::Tokens,
        config::Unit::InputTokens => signals::SignalUnit::InputTokens,
        config::Unit::OutputTokens => signals::SignalUnit::OutputTokens,
        config::Unit::Credits | config::Unit::Usd => signals::SignalUnit::Credits,
        config::Unit::Requests | config::Unit::Concurrent => signals::SignalUnit::Requests,
    }
}

/// The key pool's unit for a signal unit.
pub fn learned_unit(u: signals::SignalUnit) -> keys::LearnedUnit {
    match u {
        signals::SignalUnit::Requests => keys::LearnedUnit::Requests,
        signals::SignalUnit::Tokens => keys::LearnedUnit::Tokens,
        signals::SignalUnit::InputTokens => keys::LearnedUnit::InputTokens,
        signals::SignalUnit::OutputTokens => keys::LearnedUnit::OutputTokens,
        signals::SignalUnit::Credits => keys::LearnedUnit::Credits,
    }
}
