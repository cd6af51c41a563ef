//! A mock API provider, so quota-proxy can be tried with no internet and no real keys.
//!
//! ```text
//! cargo run --example mock_provider -- --listen 127.0.0.1:9999 --flavor openai
//! cargo run --example mock_provider -- --listen 127.0.0.1:9998 --flavor keepa
//! cargo run --example mock_provider -- --listen 127.0.0.1:9997 --flavor odds
//! ```
//!
//! Prints `mock_provider (FLAVOR) listening on ADDR` on stdout once bound, then one line per
//! request on stderr (the key is shown by its last 4 characters only). Every budget is kept per
//! API key, in memory; any non-empty key is accepted.
//!
//! - `openai`: `POST /v1/chat/completions` (JSON, or SSE with `"stream": true`; the final
//!   usage chunk only with `stream_options.include_usage`, as OpenAI does), `GET /v1/models`.
//!   Headers `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` count down from `--rpm`
//!   (default 10) requests and `--tpm` (default 2000) tokens per minute per key; past either,
//!   429 `rate_limit_exceeded`. A key starting `sk-invalid` gets 401 `invalid_api_key`, one
//!   starting `sk-broke` 429 `insufficient_quota`.
//! - `keepa`: `GET /product?key=K&domain=1&asin=A,B` (1 token per ASIN), `GET /token?key=K`
//!   (free). Bodies carry `tokensLeft`, `refillIn` (ms), `refillRate` (per minute) and
//!   `tokensConsumed`. Each key starts with `--tokens` (default 20) and gains `--refill-rate`
//!   (default 5) every minute, up to an hour's worth; a call may take the balance below zero,
//!   and while it is below zero calls are refused with 429.
//! - `odds`: `GET /v4/sports` (free), `GET /v4/sports/{sport}/odds?regions=us,uk&markets=h2h`
//!   costing markets × regions credits, out of `--credits` (default 50) per key. Headers
//!   `x-requests-remaining`, `x-requests-used`, `x-requests-last`; a call that does not fit is
//!   refused with 401 `OUT_OF_USAGE_CREDITS`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;

const USAGE: &str = "usage: mock_provider [--listen ADDR] [--flavor openai|keepa|odds] \
[--rpm N] [--tpm N] [--tokens N] [--refill-rate N] [--credits N]";

/// What the assistant says; one word per SSE chunk, one token per word.
const REPLY: &str = "Hello! This is the mock provider answering through quota-proxy.";
const MINUTE: Duration = Duration::from_secs(60);

type RespBody = BoxBody<Bytes, Infallible>;
/// Response headers to add: (lower-case name, value).
type Headers = Vec<(&'static str, String)>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavor {
    OpenAi,
    Keepa,
    Odds,
}

impl Flavor {
    fn name(self) -> &'static str {
        match self {
            Flavor::OpenAi => "openai",
            Flavor::Keepa => "keepa",
            Flavor::Odds => "odds",
        }
    }
}

#[derive(Clone, Debug)]
struct Args {
    listen: SocketAddr,
    flavor: Flavor,
    rpm: u64,
    tpm: u64,
    tokens: i64,
    refill_rate: i64,
    credits: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 9999)),
        flavor: Flavor::OpenAi,
        rpm: 10,
        tpm: 2000,
        tokens: 20,
        refill_rate: 5,
        credits: 50,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.to_string());
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let num = |v: &str| -> Result<u64, String> {
            v.parse()
                .map_err(|_| format!("{flag}: expected a whole number, got {v:?}"))
        };
        match flag.as_str() {
            "--listen" => {
                args.listen = value
                    .parse()
                    .map_err(|_| format!("--listen: expected HOST:PORT, got {value:?}"))?;
            }
            "--flavor" => {
                args.flavor = match value.as_str() {
                    "openai" => Flavor::OpenAi,
                    "keepa" => Flavor::Keepa,
                    "odds" | "odds_api" => Flavor::Odds,
                    other => return Err(format!("--flavor: unknown {other:?}\n{USAGE}")),
                }
            }
            "--rpm" => args.rpm = num(&value)?,
            "--tpm" => args.tpm = num(&value)?,
            "--tokens" => args.tokens = i64::try_from(num(&value)?).unwrap_or(i64::MAX),
            "--refill-rate" => {
                args.refill_rate = i64::try_from(num(&value)?).unwrap_or(i64::MAX);
            }
            "--credits" => args.credits = num(&value)?,
            other => return Err(format!("unknown flag {other:?}\n{USAGE}")),
        }
    }
    Ok(args)
}

/// Per-key budgets of every flavor (only the flavor's own fields are used).
#[derive(Debug)]
struct KeyState {
    /// OpenAI: start of the current one-minute window, requests and tokens used in it.
    window_start: Instant,
    requests: u64,
    tokens: u64,
    /// Keepa: balance (may go negative) and when the last refill happened.
    balance: i64,
    last_refill: Instant,
    /// Odds API: credits used so far.
    used: u64,
}

struct Mock {
    args: Args,
    keys: Mutex<HashMap<String, KeyState>>,
    next_id: Mutex<u64>,
}

impl Mock {
    /// Runs `f` on the state of `key`, created on first use.
    fn with_key<T>(&self, key: &str, f: impl FnOnce(&mut KeyState) -> T) -> T {
        let mut keys = self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let state = keys.entry(key.to_string()).or_insert_with(|| KeyState {
            window_start: now,
            requests: 0,
            tokens: 0,
            balance: self.args.tokens,
            last_refill: now,
            used: 0,
        });
        f(state)
    }

    fn next_id(&self) -> u64 {
        let mut n = self
            .next_id
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *n += 1;
        *n
    }
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mock_provider: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mock_provider: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> std::io::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    let mut out = std::io::stdout();
    writeln!(
        out,
        "mock_provider ({}) listening on {}",
        args.flavor.name(),
        listener.local_addr()?
    )?;
    out.flush()?;
    let mock = Arc::new(Mock {
        args,
        keys: Mutex::new(HashMap::new()),
        next_id: Mutex::new(0),
    });
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                eprintln!("mock_provider: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let mock = mock.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let mock = mock.clone();
                async move { Ok::<_, Infallible>(handle(&mock, req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("mock_provider: connection error: {e}");
            }
        });
    }
}

async fn handle(mock: &Mock, req: Request<Incoming>) -> Response<RespBody> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .trim()
        .to_string();
    // Small bodies only: this is a mock.
    let body = match http_body_util::Limited::new(req.into_body(), 1 << 20)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let (resp, key) = match mock.args.flavor {
        Flavor::OpenAi => (openai(mock, &method, &path, &bearer, &body), bearer),
        Flavor::Keepa => {
            let key = param(&query, "key").unwrap_or_default();
            (keepa(mock, &path, &query, &key), key)
        }
        Flavor::Odds => {
            let key = param(&query, "apiKey").unwrap_or_default();
            (odds(mock, &path, &query, &key), key)
        }
    };
    eprintln!(
        "{} {method} {path} key=…{} -> {}",
        mock.args.flavor.name(),
        key_hint(&key),
        resp.status().as_u16()
    );
    resp
}

// ---------------------------------------------------------------- OpenAI

fn openai(mock: &Mock, method: &Method, path: &str, key: &str, body: &[u8]) -> Response<RespBody> {
    if key.is_empty() {
        return openai_error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            "You didn't provide an API key. You need to provide your API key in an \
             Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        );
    }
    if key.starts_with("sk-invalid") {
        return openai_error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            "Incorrect API key provided.",
        );
    }
    if key.starts_with("sk-broke") {
        return openai_error(
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            "insufficient_quota",
            "You exceeded your current quota, please check your plan and billing details.",
        );
    }
    match (method, path) {
        (&Method::GET, "/v1/models") => {
            let (admitted, headers) = openai_admit(mock, key, 0);
            let mut resp = match admitted {
                Ok(()) => json_response(
                    StatusCode::OK,
                    &json!({"object": "list", "data": [
                        {"id": "gpt-4o-mini", "object": "model", "created": 0, "owned_by": "mock"},
                        {"id": "gpt-4o", "object": "model", "created": 0, "owned_by": "mock"},
                    ]}),
                ),
                Err(resp) => resp,
            };
            add_headers(&mut resp, &headers);
            resp
        }
        (&Method::POST, "/v1/chat/completions") => chat(mock, key, body),
        _ => openai_error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "unknown_url",
            &format!("Unknown request URL: {method} {path}."),
        ),
    }
}

fn chat(mock: &Mock, key: &str, body: &[u8]) -> Response<RespBody> {
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_json",
            "We could not parse the JSON body of your request.",
        );
    };
    let model = req["model"].as_str().unwrap_or("gpt-4o-mini").to_string();
    let chars: usize = req["messages"]
        .as_array()
        .map(|msgs| {
            msgs.iter()
                .map(|m| m["content"].as_str().map_or(0, str::len))
                .sum()
        })
        .unwrap_or(0);
    let prompt_tokens = (chars as u64).div_ceil(4).max(1);
    let max_tokens = req["max_completion_tokens"]
        .as_u64()
        .or_else(|| req["max_tokens"].as_u64());
    let words: Vec<&str> = REPLY.split_inclusive(' ').collect();
    let n = max_tokens.map_or(words.len(), |m| words.len().min(m as usize));
    let words: Vec<String> = words[..n].iter().map(|w| w.to_string()).collect();
    let completion_tokens = n as u64;
    let finish = if n < REPLY.split_inclusive(' ').count() {
        "length"
    } else {
        "stop"
    };
    let (admitted, headers) = openai_admit(mock, key, prompt_tokens + completion_tokens);
    if let Err(mut resp) = admitted {
        add_headers(&mut resp, &headers);
        return resp;
    }
    let id = format!("chatcmpl-mock-{:06}", mock.next_id());
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });
    let mut resp = if req["stream"].as_bool() == Some(true) {
        let include_usage = req["stream_options"]["include_usage"].as_bool() == Some(true);
        let chunk = |delta: Value, finish: Value| {
            json!({"id": id, "object": "chat.completion.chunk", "created": 0, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        let mut events = vec![chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )];
        for w in &words {
            events.push(chunk(json!({"content": w}), Value::Null));
        }
        events.push(chunk(json!({}), json!(finish)));
        if include_usage {
            events.push(
                json!({"id": id, "object": "chat.completion.chunk", "created": 0,
                               "model": model, "choices": [], "usage": usage}),
            );
        }
        let mut frames: Vec<Bytes> = events
            .iter()
            .map(|e| Bytes::from(format!("data: {e}\n\n")))
            .collect();
        frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
        sse_response(frames, Duration::from_millis(30))
    } else {
        json_response(
            StatusCode::OK,
            &json!({
                "id": id, "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "finish_reason": finish,
                             "message": {"role": "assistant", "content": words.concat()}}],
                "usage": usage,
            }),
        )
    };
    add_headers(&mut resp, &headers);
    resp
}

/// Charges one request and `tokens` to `key`'s minute; returns the refusal if it does not
/// fit, and the `x-ratelimit-*` headers as they stand after the call.
fn openai_admit(mock: &Mock, key: &str, tokens: u64) -> (Result<(), Response<RespBody>>, Headers) {
    let (rpm, tpm) = (mock.args.rpm, mock.args.tpm);
    mock.with_key(key, |s| {
        let now = Instant::now();
        if now.duration_since(s.window_start) >= MINUTE {
            s.window_start = now;
            s.requests = 0;
            s.tokens = 0;
        }
        let reset = go_duration((s.window_start + MINUTE).saturating_duration_since(now));
        let outcome = if s.requests >= rpm {
            Err(openai_error(
                StatusCode::TOO_MANY_REQUESTS,
                "requests",
                "rate_limit_exceeded",
                &format!(
                    "Rate limit reached for requests per min (RPM): Limit {rpm}, Used {}, \
                     Requested 1. Please try again in {reset}.",
                    s.requests
                ),
            ))
        } else if s.tokens + tokens > tpm {
            Err(openai_error(
                StatusCode::TOO_MANY_REQUESTS,
                "tokens",
                "rate_limit_exceeded",
                &format!(
                    "Rate limit reached for tokens per min (TPM): Limit {tpm}, Used {}, \
                     Requested {tokens}. Please try again in {reset}.",
                    s.tokens
                ),
            ))
        } else {
            s.requests += 1;
            s.tokens += tokens;
            Ok(())
        };
        let headers = vec![
            ("x-ratelimit-limit-requests", rpm.to_string()),
            ("x-ratelimit-limit-tokens", tpm.to_string()),
            (
                "x-ratelimit-remaining-requests",
                rpm.saturating_sub(s.requests).to_string(),
            ),
            (
                "x-ratelimit-remaining-tokens",
                tpm.saturating_sub(s.tokens).to_string(),
            ),
            ("x-ratelimit-reset-requests", reset.clone()),
            ("x-ratelimit-reset-tokens", reset),
        ];
        (outcome, headers)
    })
}

fn openai_error(status: StatusCode, kind: &str, code: &str, message: &str) -> Response<RespBody> {
    json_response(
        status,
        &json!({"error": {"message": message, "type": kind, "param": null, "code": code}}),
    )
}

/// A Go-style duration like OpenAI's reset headers: `20ms`, `7.5s`, `1m0s`.
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = format!("{:.3}", d.as_secs_f64());
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    } else {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

// ---------------------------------------------------------------- Keepa

fn keepa(mock: &Mock, path: &str, query: &str, key: &str) -> Response<RespBody> {
    if key.is_empty() {
        return json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"error": {"type": "invalidKey", "message": "missing or invalid key"}}),
        );
    }
    let asins: Vec<String> = param(query, "asin")
        .map(|v| {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let cost = match path {
        "/token" => 0,
        "/product" if !asins.is_empty() => asins.len() as i64,
        "/product" => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": {"type": "badRequest", "message": "asin is required"}}),
            )
        }
        _ => {
            return json_response(
                StatusCode::NOT_FOUND,
                &json!({"error": {"type": "notFound", "message": format!("no endpoint {path}")}}),
            )
        }
    };
    let (rate, cap) = (
        mock.args.refill_rate,
        mock.args.refill_rate.saturating_mul(60),
    );
    let (refused, left, refill_in) = mock.with_key(key, |s| {
        let now = Instant::now();
        let minutes = now.duration_since(s.last_refill).as_secs() / 60;
        if minutes > 0 {
            let minutes = i64::try_from(minutes).unwrap_or(i64::MAX);
            s.balance = s
                .balance
                .saturating_add(rate.saturating_mul(minutes))
                .min(cap.max(mock.args.tokens));
            s.last_refill += MINUTE * u32::try_from(minutes).unwrap_or(u32::MAX);
        }
        let refused = s.balance < 0;
        if !refused {
            s.balance -= cost;
        }
        let refill_in = (s.last_refill + MINUTE).saturating_duration_since(now);
        (refused, s.balance, refill_in.as_millis())
    });
    let mut doc = json!({
        "tokensLeft": left,
        "refillIn": refill_in,
        "refillRate": rate,
        "tokenFlowReduction": 0.0,
        "tokensConsumed": if refused { 0 } else { cost },
        "processingTimeInMs": 1,
    });
    if refused {
        return json_response(StatusCode::TOO_MANY_REQUESTS, &doc);
    }
    if path == "/product" {
        doc["products"] = asins
            .iter()
            .map(|a| json!({"asin": a, "domainId": 1, "title": format!("Mock product {a}")}))
            .collect();
    }
    json_response(StatusCode::OK, &doc)
}

// ---------------------------------------------------------------- The Odds API

fn odds(mock: &Mock, path: &str, query: &str, key: &str) -> Response<RespBody> {
    let odds_error = |status: StatusCode, code: &str, message: &str| {
        json_response(
            status,
            &json!({"message": message, "error_code": code, "details_url": ""}),
        )
    };
    if key.is_empty() {
        return odds_error(
            StatusCode::UNAUTHORIZED,
            "MISSING_KEY",
            "API key is missing. Pass it as the apiKey query parameter.",
        );
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (cost, sport, regions, markets) = match segments.as_slice() {
        ["v4", "sports"] => (0, None, Vec::new(), Vec::new()),
        ["v4", "sports", sport, "odds"] => {
            let list = |name: &str| -> Vec<String> {
                param(query, name)
                    .map(|v| {
                        v.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let regions = list("regions");
            if regions.is_empty() {
                return odds_error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "INVALID_REGION",
                    "Missing regions parameter (e.g. regions=us,uk).",
                );
            }
            let mut markets = list("markets");
            if markets.is_empty() {
                markets.push("h2h".to_string());
            }
            let cost = (regions.len() * markets.len()) as u64;
            (cost, Some((*sport).to_string()), regions, markets)
        }
        _ => {
            return odds_error(
                StatusCode::NOT_FOUND,
                "UNKNOWN_PATH",
                &format!("No endpoint {path}"),
            )
        }
    };
    let budget = mock.args.credits;
    let (fits, used, last) = mock.with_key(key, |s| {
        if s.used + cost > budget {
            (false, s.used, 0)
        } else {
            s.used += cost;
            (true, s.used, cost)
        }
    });
    let mut resp = if !fits {
        odds_error(
            StatusCode::UNAUTHORIZED,
            "OUT_OF_USAGE_CREDITS",
            "Usage quota has been reached. See usage plans at https://the-odds-api.com",
        )
    } else if let Some(sport) = sport {
        let bookmakers: Vec<Value> = regions
            .iter()
            .map(|r| {
                json!({"key": format!("mock_book_{r}"), "title": format!("Mock Book ({r})"),
                       "markets": markets.iter().map(|m| json!({"key": m, "outcomes": [
                           {"name": "Home", "price": 1.91}, {"name": "Away", "price": 1.95}]}))
                           .collect::<Vec<_>>()})
            })
            .collect();
        json_response(
            StatusCode::OK,
            &json!([{"id": format!("mock-event-{}", mock.next_id()), "sport_key": sport,
                     "home_team": "Home", "away_team": "Away", "bookmakers": bookmakers}]),
        )
    } else {
        json_response(
            StatusCode::OK,
            &json!([
                {"key": "basketball_nba", "group": "Basketball", "title": "NBA", "active": true},
                {"key": "soccer_epl", "group": "Soccer", "title": "EPL", "active": true},
            ]),
        )
    };
    add_headers(
        &mut resp,
        &[
            (
                "x-requests-remaining",
                budget.saturating_sub(used).to_string(),
            ),
            ("x-requests-used", used.to_string()),
            ("x-requests-last", last.to_string()),
        ],
    );
    resp
}

// ---------------------------------------------------------------- helpers

/// The last 4 characters of a key, for logs.
fn key_hint(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    chars[chars.len().saturating_sub(4)..].iter().collect()
}

/// The (percent-decoded) value of query parameter `name`.
fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |j: usize| bytes.get(j).and_then(|b| (*b as char).to_digit(16));
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn add_headers(resp: &mut Response<RespBody>, headers: &[(&'static str, String)]) {
    for (name, value) in headers {
        if let Ok(v) = HeaderValue::from_str(value) {
            resp.headers_mut().insert(HeaderName::from_static(name), v);
        }
    }
}

fn json_response(status: StatusCode, doc: &Value) -> Response<RespBody> {
    let mut resp = Response::new(Full::new(Bytes::from(doc.to_string())).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A `text/event-stream` response sending `frames` `gap` apart.
fn sse_response(frames: Vec<Bytes>, gap: Duration) -> Response<RespBody> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        for (i, frame) in frames.into_iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(gap).await;
            }
            if tx.send(frame).await.is_err() {
                return; // the client went away
            }
        }
    });
    let mut resp = Response::new(ChannelBody(rx).boxed());
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    resp.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    resp
}

/// A response body fed by a channel, one frame per message.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}
