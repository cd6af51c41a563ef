//! Logging (tracing; `QUOTA_PROXY_LOG`, `QUOTA_PROXY_LOG_FORMAT=json`) and the Prometheus
//! recorder with the metric descriptions of SPEC §10.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber (stderr). Safe to call once per process.
pub fn init_logging() {
    let filter =
        EnvFilter::try_from_env("QUOTA_PROXY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json =
        std::env::var("QUOTA_PROXY_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    // Colours only on a terminal: escape codes in a log file or a collector are noise, and
    // styling each connection span's fields cost about 2k instructions per connection.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let result = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    if let Err(e) = result {
        eprintln!("logging was already initialised: {e}");
    }
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

/// Installs the global Prometheus recorder and describes the metrics.
pub fn init_metrics() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    describe();
    Ok(handle)
}

/// Drains histogram samples into their buckets every few seconds. The recorder installed by
/// [`init_metrics`] keeps every raw sample until the next render otherwise, so memory grows
/// with each request while nothing scrapes `/metrics`.
pub async fn run_upkeep(handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!("quota_proxy_requests_total", "Requests by provider and outcome (forwarded, delayed, rejected, upstream_429, upstream_error, tunneled, denied).");
    describe_histogram!(
        "quota_proxy_upstream_duration_seconds",
        Unit::Seconds,
        "Time from sending a request upstream to its response headers."
    );
    describe_counter!(
        "quota_proxy_config_reloads_total",
        "Config reloads by result (ok, error)."
    );
    describe_counter!(
        "quota_proxy_connections_refused_total",
        "Connections refused because max_connections was reached."
    );
    describe_counter!(
        "quota_proxy_connections_parked_total",
        "Idle HTTP/1.1 keep-alive connections parked: their buffers freed until the next request."
    );
    describe_counter!(
        "quota_proxy_header_timeouts_total",
        "Connections closed because the request head did not arrive within header_read_timeout."
    );
    describe_gauge!(
        "quota_proxy_limit_used",
        "Units used of each limit, by provider, limit and scope id."
    );
    describe_gauge!(
        "quota_proxy_limit_amount",
        "The amount of each limit, in its unit, by provider, limit and scope id."
    );
    describe_gauge!(
        "quota_proxy_limit_remaining",
        "Units each limit still admits now, by provider, limit and scope id."
    );
    describe_histogram!(
        "quota_proxy_delay_seconds",
        Unit::Seconds,
        "How long delayed calls waited for room before being sent."
    );
    describe_gauge!(
        "quota_proxy_queue_length",
        "Calls waiting for room, by provider."
    );
    describe_gauge!(
        "quota_proxy_upstream_remaining",
        "What the upstream last said a key has left, by provider, key and unit."
    );
    describe_counter!(
        "quota_proxy_tokens_total",
        "Tokens used as reported by the upstream, by provider, key and kind (input, output)."
    );
    describe_counter!(
        "quota_proxy_cost_usd_micros_total",
        "Spend in millionths of a US dollar, by provider and key."
    );
    describe_gauge!("quota_proxy_key_state", "1 for the current state of each key (active, cooling, exhausted, invalid, out_of_credit), else 0.");
    describe_counter!(
        "quota_proxy_retries_total",
        "Calls retried transparently, by provider and the upstream status that caused the retry."
    );
    describe_counter!("quota_proxy_signal_errors_total", "Upstream quota signals (headers, body fields) that could not be parsed and were ignored, by provider.");
    describe_counter!(
        "quota_proxy_leaf_certificates_minted_total",
        "Leaf certificates created for intercepted hosts."
    );
    describe_counter!(
        "quota_proxy_tls_handshake_errors_total",
        "Failed TLS handshakes on intercepted tunnels, by reason."
    );
    describe_counter!(
        "quota_proxy_limit_warnings_total",
        "Times a limit crossed its warn_at threshold (once per window and scope id), by provider and limit."
    );
    describe_counter!(
        "quota_proxy_state_backend_errors_total",
        "Failed state backend operations (flushes of the local file, Redis calls)."
    );
}

/// Handles on the per-provider request-path metrics, registered once per label set instead
/// of per request (a registration builds the key, with an owned copy of each label, and
/// hashes it). Labels are provider names from the config and `unmatched`, so the cache
/// stays as small as the config. Handles taken before the recorder is installed are no-ops:
/// the binary installs it before serving.
/// Every `outcome` of `quota_proxy_requests_total` a provider's calls can have.
const PROVIDER_OUTCOMES: [&str; 5] = [
    "forwarded",
    "delayed",
    "rejected",
    "upstream_429",
    "upstream_error",
];

/// One provider's metric handles, kept with its runtime state so a call finds them without a
/// registry or cache lookup (hashing the provider's name and taking a lock, twice per call).
/// Each is registered on first use, so a provider's `/metrics` lines appear as they happen.
pub struct ProviderMetrics {
    provider: String,
    requests: [std::sync::OnceLock<metrics::Counter>; PROVIDER_OUTCOMES.len()],
    upstream_duration: std::sync::OnceLock<metrics::Histogram>,
    delay: std::sync::OnceLock<metrics::Histogram>,
}

impl ProviderMetrics {
    pub fn new(provider: &str) -> Self {
        ProviderMetrics {
            provider: provider.to_string(),
            requests: Default::default(),
            upstream_duration: Default::default(),
            delay: Default::default(),
        }
    }

    /// Counts one call with this outcome in `quota_proxy_requests_total`.
    pub fn count(&self, outcome: &'static str) {
        match PROVIDER_OUTCOMES.iter().position(|o| *o == outcome) {
            Some(i) => self.requests[i]
                .get_or_init(|| handles::requests(&self.provider, PROVIDER_OUTCOMES[i]))
                .increment(1),
            None => handles::requests(&self.provider, outcome).increment(1),
        }
    }

    /// `quota_proxy_upstream_duration_seconds{provider}`.
    pub fn upstream_duration(&self) -> &metrics::Histogram {
        self.upstream_duration
            .get_or_init(|| handles::upstream_duration(&self.provider))
    }

    /// `quota_proxy_delay_seconds{provider}`.
    pub fn delay(&self) -> &metrics::Histogram {
        self.delay.get_or_init(|| handles::delay(&self.provider))
    }
}

pub mod handles {
    use std::collections::HashMap;
    use std::sync::{OnceLock, PoisonError, RwLock};

    use metrics::{Counter, Histogram};

    #[derive(Default)]
    struct ProviderHandles {
        /// By outcome: a handful, so a scan beats hashing the name.
        requests: Vec<(&'static str, Counter)>,
        upstream_duration: Option<Histogram>,
        delay: Option<Histogram>,
    }

    fn cache() -> &'static RwLock<HashMap<Box<str>, ProviderHandles>> {
        static CACHE: OnceLock<RwLock<HashMap<Box<str>, ProviderHandles>>> = OnceLock::new();
        CACHE.get_or_init(Default::default)
    }

    fn get_or_register<T: Clone>(
        provider: &str,
        read: impl Fn(&ProviderHandles) -> Option<&T>,
        register: impl FnOnce(&mut ProviderHandles) -> T,
    ) -> T {
        if let Some(h) = cache()
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(provider)
            .and_then(&read)
        {
            return h.clone();
        }
        let mut map = cache().write().unwrap_or_else(PoisonError::into_inner);
        let entry = map.entry(provider.into()).or_default();
        match read(entry) {
            Some(h) => h.clone(),
            None => register(entry),
        }
    }

    /// `quota_proxy_requests_total{provider, outcome}`.
    pub fn requests(provider: &str, outcome: &'static str) -> Counter {
        get_or_register(
            provider,
            |h| {
                h.requests
                    .iter()
                    .find(|(o, _)| *o == outcome)
                    .map(|(_, c)| c)
            },
            |h| {
                let c = metrics::counter!("quota_proxy_requests_total", "provider" => provider.to_string(), "outcome" => outcome);
                h.requests.push((outcome, c.clone()));
                c
            },
        )
    }

    /// `quota_proxy_upstream_duration_seconds{provider}`.
    pub fn upstream_duration(provider: &str) -> Histogram {
        get_or_register(
            provider,
            |h| h.upstream_duration.as_ref(),
            |h| {
                let m = metrics::histogram!("quota_proxy_upstream_duration_seconds", "provider" => provider.to_string());
                h.upstream_duration = Some(m.clone());
                m
            },
        )
    }

    /// `quota_proxy_delay_seconds{provider}`.
    pub fn delay(provider: &str) -> Histogram {
        get_or_register(
            provider,
            |h| h.delay.as_ref(),
            |h| {
                let m = metrics::histogram!("quota_proxy_delay_seconds", "provider" => provider.to_string());
                h.delay = Some(m.clone());
                m
            },
        )
    }
}
