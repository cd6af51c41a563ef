//! `/metrics` is valid Prometheus text exposition (SPEC §10), checked with the reference
//! parser, `prometheus_client.parser.text_string_to_metric_families` (Python; install it with
//! `pip install prometheus-client`). A few calls through a limited provider with a key pool make
//! every family of SPEC §10 that the proxy implements appear; each must carry HELP and TYPE,
//! histograms must be complete, and no label value may be a key's secret.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::*;

const KEY_A: &str = "sk-metrics-secret-aaaaaaaaaaaaaaaa";
const KEY_B: &str = "sk-metrics-secret-bbbbbbbbbbbbbbbb";

/// SPEC §10 families as exposed (`cost_usd_total` is `cost_usd_micros_total`, an integer
/// counter of micro-dollars). `state_backend_errors_total` belongs to the Redis backend, not
/// implemented yet: like every other `quota_proxy_*` family it is checked if it appears.
const REQUIRED: &[(&str, &str)] = &[
    ("quota_proxy_requests_total", "counter"),
    ("quota_proxy_limit_used", "gauge"),
    ("quota_proxy_limit_amount", "gauge"),
    ("quota_proxy_limit_remaining", "gauge"),
    ("quota_proxy_delay_seconds", "histogram"),
    ("quota_proxy_queue_length", "gauge"),
    ("quota_proxy_upstream_duration_seconds", "histogram"),
    ("quota_proxy_upstream_remaining", "gauge"),
    ("quota_proxy_tokens_total", "counter"),
    ("quota_proxy_cost_usd_micros_total", "counter"),
    ("quota_proxy_key_state", "gauge"),
    ("quota_proxy_retries_total", "counter"),
    ("quota_proxy_config_reloads_total", "counter"),
    ("quota_proxy_signal_errors_total", "counter"),
];

/// Parses the exposition with prometheus_client and prints it back as JSON:
/// `[{"name", "type", "help", "samples": [{"name", "labels", "value"}]}]`.
const PARSER: &str = r#"
import json, math, sys
try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError as e:
    sys.stderr.write("prometheus_client is not importable (%s)\n" % e)
    sys.exit(3)
text = sys.stdin.read()
try:
    families = list(text_string_to_metric_families(text))
except Exception as e:
    sys.stderr.write("prometheus_client could not parse the exposition: %r\n" % (e,))
    sys.exit(4)
out = []
for f in families:
    samples = []
    for s in f.samples:
        v = s.value
        samples.append({"name": s.name, "labels": dict(s.labels),
                        "value": v if math.isfinite(v) else str(v)})
    out.append({"name": f.name, "type": f.type, "help": f.documentation, "samples": samples})
json.dump(out, sys.stdout)
"#;

/// Runs [`PARSER`] on `text`; panics with a clear message when Python or prometheus_client
/// is missing, or when the text does not parse.
fn parse_with_prometheus_client(text: &str) -> Vec<Value> {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(PARSER)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}): this test validates /metrics with Python's prometheus_client")
        });
    child
        .stdin
        .take()
        .expect("python stdin")
        .write_all(text.as_bytes())
        .expect("write the exposition to python");
    let out = child.wait_with_output().expect("python3 output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => {}
        Some(3) => panic!(
            "Python's prometheus_client is not installed, so /metrics cannot be validated.\n\
             Install it with `pip install prometheus-client` (CI does this in .ci/run).\n{stderr}"
        ),
        _ => panic!("/metrics is not valid Prometheus text exposition:\n{stderr}\n--- exposition ---\n{text}"),
    }
    serde_json::from_slice::<Vec<Value>>(&out.stdout).expect("parser output is JSON")
}

/// The upstream: OpenAI-like answers with usage and rate-limit headers. Key A is refused once
/// with a 429 (the proxy retries on key B); every answer carries one malformed signal header.
fn openai_like() -> Handler {
    let refused_once = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    handler(move |req: Recorded| {
        let refused_once = refused_once.clone();
        async move {
            let auth = req.header("authorization").unwrap_or("").to_string();
            if auth.ends_with(KEY_A)
                && !refused_once.swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                return response(
                    429,
                    &[
                        ("content-type", "application/json"),
                        ("x-ratelimit-remaining-requests", "0"),
                        ("x-ratelimit-reset-requests", "1s"),
                    ],
                    r#"{"error":{"type":"requests","code":"rate_limit_exceeded","message":"slow down"}}"#,
                );
            }
            response(
                200,
                &[
                    ("content-type", "application/json"),
                    ("x-ratelimit-limit-requests", "1000"),
                    ("x-ratelimit-remaining-requests", "990"),
                    ("x-ratelimit-reset-requests", "6m0s"),
                    ("x-ratelimit-limit-tokens", "100000"),
                    ("x-ratelimit-remaining-tokens", "plenty"), // malformed: counted, ignored
                    ("x-ratelimit-reset-tokens", "20ms"),
                ],
                r#"{"id":"x","object":"chat.completion","model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}"#,
            )
        }
    })
}

fn config(up: &MockUpstream) -> String {
    mock_provider(up, &[("signals", "[\"openai\"]")])
        .raw(
            r#"
[providers.mock.keys]
strategy = "fill_first"
pool = [{ id = "key-a", env = "METRICS_KEY_A" }, { id = "key-b", env = "METRICS_KEY_B" }]

[providers.mock.retry]
on = [429]
max_attempts = 3

[providers.mock.prices]
"gpt-4o-mini" = { input = 0.15, output = 0.60 }
"#,
        )
        .raw(&limit("per-second", "requests", 2.0, "1s", "provider"))
        .raw(&limit("tpm", "tokens", 100000.0, "1m", "provider"))
        .raw(&on_limit("delay", "10s", 100))
        .build()
}

#[tokio::test]
async fn metrics_are_valid_exposition_with_help_and_no_secrets() {
    let up = MockUpstream::plain(openai_like()).await;
    let cfg = config(&up);
    let proxy = Proxy::start_with_env(&cfg, &[("METRICS_KEY_A", KEY_A), ("METRICS_KEY_B", KEY_B)]);
    let body =
        r#"{"model":"gpt-4o-mini","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}"#;
    let call = |headers: &'static [(&'static str, &'static str)]| {
        let addr = proxy.proxy_addr;
        async move { route(addr, "POST", "/mock/v1/chat/completions", headers, body).await }
    };

    // Calls in a row overrun the 2-per-second limit: one of them waits for room (the first
    // is also retried on key-b after key-a's 429). Then a call that may not wait is refused.
    let mut delayed = 0;
    for _ in 0..8 {
        let resp = call(&[]).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        if resp.header("x-quota-proxy-delayed-ms").is_some() {
            delayed += 1;
            break;
        }
    }
    assert_eq!(delayed, 1, "no call was delayed by a 2-per-second limit");
    let mut refused = None;
    for _ in 0..8 {
        let resp = call(&[("x-quota-max-delay", "0s")]).await;
        if resp.status == 429 {
            refused = Some(resp);
            break;
        }
    }
    let refused = refused.expect("a call with x-quota-max-delay: 0s was refused");
    assert_eq!(
        refused.header("x-quota-proxy"),
        Some("rejected"),
        "{}",
        refused.text()
    );
    let (status, reload) = admin_post(proxy.admin_addr, "/reload", "").await;
    assert_eq!(status, 200, "{reload}");

    // Settling (usage, cost) happens as the bodies complete: wait until it shows.
    let text = eventually(
        "tokens and cost in /metrics",
        Duration::from_secs(5),
        || async {
            let text = metrics_text(proxy.admin_addr).await;
            (text.contains("quota_proxy_tokens_total")
                && text.contains("quota_proxy_cost_usd_micros_total"))
            .then_some(text)
        },
    )
    .await;

    // The content type of the text format.
    let raw_resp = raw(
        proxy.admin_addr,
        b"GET /metrics HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n",
    )
    .await;
    let head = raw_resp
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(
        head.lines()
            .any(|l| l.starts_with("content-type: text/plain") && l.contains("version=0.0.4")),
        "content-type of /metrics: {head}"
    );

    let families = parse_with_prometheus_client(&text);
    // prometheus_client names a counter family without its `_total` suffix.
    let by_name: BTreeMap<String, &Value> = families
        .iter()
        .map(|f| {
            let name = f["name"].as_str().unwrap_or_default();
            let full = if f["type"] == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            (full, f)
        })
        .collect();

    // Nothing the parser skipped: every sample line of the text is a parsed sample.
    let sample_lines = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .count();
    let parsed: usize = families
        .iter()
        .map(|f| f["samples"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(
        parsed, sample_lines,
        "the parser saw {parsed} samples in {sample_lines} sample lines"
    );

    let mut missing = Vec::new();
    for (name, kind) in REQUIRED {
        match by_name.get(*name) {
            None => missing.push(*name),
            Some(f) => assert_eq!(f["type"], *kind, "TYPE of {name}"),
        }
    }
    assert!(
        missing.is_empty(),
        "families missing from /metrics: {missing:?}\n--- exposition ---\n{text}"
    );

    let mut without_help = Vec::new();
    for (name, f) in &by_name {
        if !name.starts_with("quota_proxy_") {
            continue;
        }
        assert_ne!(f["type"], "unknown", "{name} has no TYPE line");
        if f["help"].as_str().is_none_or(|h| h.trim().is_empty()) {
            without_help.push(name.clone());
        }
        if f["type"] == "histogram" {
            check_histogram(name, f);
        }
    }
    assert!(
        without_help.is_empty(),
        "families without HELP text (describe them in src/telemetry.rs): {without_help:?}"
    );

    // Labels are ids: never a key's secret (nor a part of one).
    let mut label_values = BTreeSet::new();
    for f in &families {
        for s in f["samples"].as_array().into_iter().flatten() {
            for v in s["labels"].as_object().into_iter().flat_map(|m| m.values()) {
                label_values.insert(v.as_str().unwrap_or_default().to_string());
            }
        }
    }
    for secret in [KEY_A, KEY_B] {
        assert!(
            !label_values
                .iter()
                .any(|v| v == secret || v.contains(&secret[3..])),
            "a label value holds a key secret: {label_values:?}"
        );
        assert!(
            !text.contains(secret),
            "the exposition contains a key secret"
        );
    }
    assert!(
        label_values.contains("key-a") && label_values.contains("key-b"),
        "keys are labelled by id: {label_values:?}"
    );

    // The calls above show up where they should.
    let outcomes: BTreeSet<&str> = sample_labels(&by_name, "quota_proxy_requests_total", "outcome");
    for outcome in ["forwarded", "delayed", "rejected"] {
        assert!(
            outcomes.contains(outcome),
            "no requests_total outcome {outcome:?}: {outcomes:?}"
        );
    }
    let kinds = sample_labels(&by_name, "quota_proxy_tokens_total", "kind");
    assert!(
        kinds.contains("input") && kinds.contains("output"),
        "tokens_total kinds: {kinds:?}"
    );
    let limits = sample_labels(&by_name, "quota_proxy_limit_amount", "limit");
    assert!(
        limits.contains("per-second") && limits.contains("tpm"),
        "limit_amount limits: {limits:?}"
    );
    let results = sample_labels(&by_name, "quota_proxy_config_reloads_total", "result");
    assert!(
        results.contains("ok"),
        "config_reloads_total results: {results:?}"
    );
}

/// The values of label `label` over the samples of family `name`.
fn sample_labels<'a>(
    by_name: &BTreeMap<String, &'a Value>,
    name: &str,
    label: &str,
) -> BTreeSet<&'a str> {
    by_name
        .get(name)
        .and_then(|f| f["samples"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|s| s["labels"][label].as_str())
        .collect()
}

/// One histogram series: its (le, cumulative count) buckets, its `_count`, whether it has `_sum`.
type Series = (Vec<(f64, f64)>, Option<f64>, bool);

/// Every series of a histogram has increasing `le` buckets ending in `+Inf`, cumulative
/// counts, and `_count` equal to the `+Inf` bucket.
fn check_histogram(name: &str, f: &Value) {
    let mut series: BTreeMap<String, Series> = BTreeMap::new();
    for s in f["samples"].as_array().into_iter().flatten() {
        let mut labels = s["labels"].as_object().cloned().unwrap_or_default();
        let le = labels.remove("le");
        let id = serde_json::to_string(&labels).unwrap_or_default();
        let entry = series.entry(id).or_default();
        let sname = s["name"].as_str().unwrap_or_default();
        let value = match &s["value"] {
            Value::String(v) => v.parse::<f64>().unwrap_or(f64::NAN),
            v => v.as_f64().unwrap_or(f64::NAN),
        };
        if sname.ends_with("_bucket") {
            let le = le
                .and_then(|l| l.as_str().map(str::to_string))
                .unwrap_or_default();
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::NAN)
            };
            entry.0.push((bound, value));
        } else if sname.ends_with("_count") {
            entry.1 = Some(value);
        } else if sname.ends_with("_sum") {
            entry.2 = true;
        }
    }
    assert!(!series.is_empty(), "histogram {name} has no series");
    for (labels, (buckets, count, has_sum)) in series {
        assert!(has_sum, "{name}{labels}: no _sum");
        let count = count.unwrap_or_else(|| panic!("{name}{labels}: no _count"));
        assert!(buckets.len() >= 2, "{name}{labels}: buckets {buckets:?}");
        assert!(
            buckets.windows(2).all(|w| w[0].0 < w[1].0),
            "{name}{labels}: le not increasing"
        );
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{name}{labels}: counts not cumulative"
        );
        let last = buckets.last().expect("a bucket");
        assert!(last.0.is_infinite(), "{name}{labels}: no +Inf bucket");
        assert_eq!(
            last.1, count,
            "{name}{labels}: _count differs from the +Inf bucket"
        );
    }
}
