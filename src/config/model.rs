//! The validated configuration: types that cannot hold an invalid value. Built only by
//! [`super::load`]; everything downstream trusts it.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use super::net::{canonical as canonical_ip, HostPattern, Network};
pub use super::raw::{
    Action, Algorithm, Backend, Mode, OnBackendError, Scope, SignalField, SignalFormat, Strategy,
    Unit, Unmatched,
};

/// The whole validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (for messages and reloads).
    pub source: PathBuf,
    pub proxy: ProxySettings,
    pub admin: AdminSettings,
    pub tls: TlsSettings,
    pub state: StateSettings,
    pub providers: Vec<Arc<Provider>>,
}

#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub listen: SocketAddr,
    pub unmatched: Unmatched,
    pub connect_ports: Vec<u16>,
    pub allow_private_destinations: bool,
    pub drain_timeout: Duration,
    pub header_read_timeout: Duration,
    pub connect_timeout: Duration,
    pub upstream_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_body_buffer: usize,
    pub max_h2_streams: u32,
    pub allowed_networks: Vec<Network>,
    pub auth_password: Option<Secret>,
    pub resolve: HashMap<String, IpAddr>,
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    pub token: Option<Secret>,
}

#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub extra_upstream_roots: Option<PathBuf>,
    pub leaf_cache_size: usize,
    pub leaf_cache_ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct StateSettings {
    pub backend: Backend,
    pub dir: PathBuf,
    pub flush_interval: Duration,
    pub redis_url: Option<String>,
    pub redis_prefix: String,
    /// Bound on one Redis call; beyond it `on_backend_error` decides.
    pub redis_timeout: Duration,
    pub on_backend_error: OnBackendError,
}

/// A secret value (API key, password, token). Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Secret(value.into())
    }
    /// The secret itself: only for the injection point and comparisons.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// One provider policy.
#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub preset: Option<String>,
    pub hosts: Vec<HostPattern>,
    pub intercept: bool,
    /// Route prefix without a trailing slash, e.g. `/openai`.
    pub route: Option<String>,
    pub upstream: Option<UpstreamTarget>,
    pub mode: Mode,
    pub keys: KeyPool,
    pub limits: Vec<Limit>,
    pub on_limit: OnLimit,
    pub retry: Retry,
    pub prices: HashMap<String, Price>,
    pub costs: Vec<CostRule>,
    pub cost: Option<f64>,
    pub cost_from: Option<CostFrom>,
    pub usd_per_request: Option<f64>,
    pub clients: Option<ClientShares>,
    pub signals: Vec<String>,
    pub custom_signals: Vec<CustomSignal>,
}

/// Where route-mode calls go: scheme, authority and a base path prepended to the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    pub https: bool,
    /// Shared with every request's destination (no copy per request).
    pub host: Arc<str>,
    pub port: u16,
    /// Without a trailing slash; may be empty.
    pub base_path: String,
    /// The authority route-mode requests carry upstream (the port only when not the
    /// scheme's default, an IPv6 address in brackets), built once.
    pub uri_authority: http::uri::Authority,
}

impl UpstreamTarget {
    pub fn authority(&self) -> String {
        super::net::authority(&self.host, self.port, self.https)
    }
    pub fn scheme(&self) -> &'static str {
        if self.https {
            "https"
        } else {
            "http"
        }
    }
}

#[derive(Debug, Clone)]
pub struct KeyPool {
    pub inject: Inject,
    pub strategy: Strategy,
    pub keys: Vec<KeySpec>,
    pub invalid_recheck: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inject {
    /// Header name and a format containing `{key}`.
    Header {
        name: http::HeaderName,
        format: String,
    },
    Query {
        param: String,
    },
    JsonField {
        field: String,
    },
}

#[derive(Debug, Clone)]
pub struct KeySpec {
    pub id: String,
    pub secret: Secret,
    pub account: Option<String>,
    /// Per-key overrides of key-scope limit amounts, by limit name.
    pub limits: HashMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    pub name: String,
    pub unit: Unit,
    pub amount: f64,
    pub window: Window,
    pub scope: Scope,
    pub warn_at: Option<f64>,
    pub reserve: Reserve,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Window {
    Rolling(Duration),
    TokenBucket {
        every: Duration,
        burst: f64,
    },
    Calendar {
        period: CalendarPeriod,
        tz: chrono_tz::Tz,
    },
    /// `unit = "concurrent"`: no time window.
    InFlight,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalendarPeriod {
    Hour,
    Day,
    Week,
    Month,
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Window::Rolling(d) => write!(f, "{}", super::values::format_duration(*d)),
            Window::TokenBucket { every, .. } => {
                write!(
                    f,
                    "{} (token bucket)",
                    super::values::format_duration(*every)
                )
            }
            Window::Calendar { period, tz } => {
                let p = match period {
                    CalendarPeriod::Hour => "hour",
                    CalendarPeriod::Day => "day",
                    CalendarPeriod::Week => "week",
                    CalendarPeriod::Month => "month",
                };
                write!(f, "{p} ({tz})")
            }
            Window::InFlight => f.write_str("in flight"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Reserve {
    pub high: f64,
    pub normal: f64,
    pub low: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OnLimit {
    pub action: Action,
    pub max_delay: Duration,
    pub max_queue: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    pub on: Vec<u16>,
    pub max_attempts: u32,
    pub any_method: bool,
    pub max_body: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input: f64,
    pub output: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CostRule {
    /// Path glob; `*` matches one segment.
    pub path: String,
    pub credits: Credits,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Credits {
    Fixed(f64),
    /// Product of the counts of comma-separated values of these query parameters.
    Product(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum CostFrom {
    /// A JSON pointer into the response body.
    Json(String),
    Header(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClientShares {
    pub shares: Vec<(String, f64)>,
    pub borrow: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CustomSignal {
    pub source: SignalSource,
    pub field: SignalField,
    pub unit: Unit,
    pub format: SignalFormat,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SignalSource {
    Header(String),
    Json(String),
}

impl Config {
    /// The provider with this name.
    pub fn provider(&self, name: &str) -> Option<&Arc<Provider>> {
        self.providers.iter().find(|p| p.name == name)
    }

    /// Is any provider intercepting TLS (so a CA is needed)?
    pub fn intercepts(&self) -> bool {
        self.providers.iter().any(|p| p.intercept)
    }
}
