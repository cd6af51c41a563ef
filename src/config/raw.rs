//! The config file exactly as written (SPEC §4): serde types with `deny_unknown_fields`.
//! Nothing here is trusted yet; `validate` turns it into [`super::Config`].

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;
use toml::Spanned;

use super::values::{Dur, Parsed, RedisUrl, Text};
pub use crate::quota::{Scope, Unit};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub proxy: RawProxy,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub tls: RawTls,
    #[serde(default)]
    pub state: RawState,
    #[serde(default)]
    pub providers: BTreeMap<String, Spanned<RawProvider>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    pub listen: Option<Parsed<SocketAddr>>,
    pub unmatched: Option<Unmatched>,
    pub connect_ports: Option<Vec<u16>>,
    pub allow_private_destinations: Option<bool>,
    pub drain_timeout: Option<Dur>,
    pub header_read_timeout: Option<Dur>,
    pub connect_timeout: Option<Dur>,
    pub upstream_timeout: Option<Dur>,
    pub max_connections: Option<usize>,
    pub max_header_bytes: Option<usize>,
    pub max_body_buffer: Option<usize>,
    pub max_h2_streams: Option<u32>,
    pub allowed_networks: Option<Vec<Spanned<Text>>>,
    pub auth: Option<RawProxyAuth>,
    pub resolve: Option<BTreeMap<String, Parsed<std::net::IpAddr>>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Unmatched {
    Tunnel,
    Deny,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxyAuth {
    /// Environment variable holding the proxy password (any user name, which names the client).
    pub password_env: Text,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<Parsed<SocketAddr>>,
    pub token_env: Option<Text>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub ca_cert: Option<Text>,
    pub ca_key: Option<Text>,
    pub extra_upstream_roots: Option<Spanned<Text>>,
    pub leaf_cache_size: Option<usize>,
    pub leaf_cache_ttl: Option<Dur>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    pub backend: Option<Backend>,
    pub dir: Option<Text>,
    pub flush_interval: Option<Dur>,
    pub redis_url: Option<Parsed<RedisUrl>>,
    pub redis_prefix: Option<Text>,
    pub redis_timeout: Option<Dur>,
    pub on_backend_error: Option<OnBackendError>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    Memory,
    Local,
    Redis,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnBackendError {
    Local,
    Allow,
    Deny,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub preset: Option<Spanned<String>>,
    pub hosts: Option<Vec<Spanned<Text>>>,
    pub intercept: Option<bool>,
    pub route: Option<Spanned<Text>>,
    pub upstream: Option<Spanned<Text>>,
    pub mode: Option<Mode>,
    pub keys: Option<RawKeys>,
    #[serde(default)]
    pub limits: Vec<Spanned<RawLimit>>,
    pub on_limit: Option<RawOnLimit>,
    pub retry: Option<RawRetry>,
    #[serde(default)]
    pub prices: BTreeMap<String, RawPrice>,
    #[serde(default)]
    pub costs: Vec<Spanned<RawCostRule>>,
    /// Fixed credits per call.
    pub cost: Option<f64>,
    pub cost_from: Option<RawCostFrom>,
    pub usd_per_request: Option<f64>,
    pub clients: Option<Spanned<RawClients>>,
    pub signals: Option<RawSignals>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Enforce,
    Shadow,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawKeys {
    pub inject: Option<RawInject>,
    pub strategy: Option<Strategy>,
    #[serde(default)]
    pub pool: Vec<Spanned<RawKey>>,
    pub invalid_recheck: Option<Dur>,
}

#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawInject {
    pub header: Option<Text>,
    pub format: Option<Text>,
    pub query: Option<Text>,
    pub json_field: Option<Text>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    RoundRobin,
    #[default]
    LeastUsed,
    FillFirst,
    Sticky,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub id: Text,
    pub env: Option<Text>,
    pub file: Option<Text>,
    pub account: Option<Text>,
    pub limits: Option<BTreeMap<String, f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimit {
    pub name: Option<Text>,
    pub unit: Option<Unit>,
    pub amount: Spanned<f64>,
    pub window: Option<Spanned<Text>>,
    pub scope: Option<Scope>,
    pub timezone: Option<Spanned<Text>>,
    pub warn_at: Option<Spanned<f64>>,
    pub reserve: Option<RawReserve>,
    pub algorithm: Option<Algorithm>,
    pub burst: Option<f64>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    #[default]
    SlidingWindow,
    TokenBucket,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct RawReserve {
    pub high: Option<f64>,
    pub normal: Option<f64>,
    pub low: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOnLimit {
    pub action: Option<Action>,
    pub max_delay: Option<Dur>,
    pub max_queue: Option<usize>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    #[default]
    Delay,
    Reject,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub on: Option<Vec<Spanned<u16>>>,
    pub max_attempts: Option<u32>,
    pub any_method: Option<bool>,
    pub max_body: Option<usize>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    pub input: f64,
    pub output: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCostRule {
    pub path: Text,
    pub credits: CreditsValue,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum CreditsValue {
    Fixed(f64),
    Expression(String),
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawCostFrom {
    pub json: Option<Text>,
    pub header: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClients {
    pub shares: BTreeMap<String, f64>,
    #[serde(default)]
    pub borrow: bool,
}

/// `signals = ["openai", "ietf"]` or a table with `families` and `custom`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawSignals {
    Families(Vec<String>),
    Table(RawSignalsTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSignalsTable {
    #[serde(default)]
    pub families: Vec<String>,
    #[serde(default)]
    pub custom: Vec<RawCustomSignal>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawCustomSignal {
    pub header: Option<Text>,
    pub json: Option<Text>,
    pub field: SignalField,
    pub unit: Option<Unit>,
    pub format: Option<SignalFormat>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SignalField {
    Limit,
    Remaining,
    Reset,
    Cost,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SignalFormat {
    Number,
    Seconds,
    Epoch,
    Duration,
    Rfc3339,
}
