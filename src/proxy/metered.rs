//! The metered path for calls to a provider: estimate the cost, pick a key, admit (forward,
//! delay or refuse), inject the key, send, read the upstream's signals, retry what can be
//! retried, and stream the response back through a usage tap that settles the real cost.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::body::{self, RequestBody, ResponseBody};
use super::headers::CallerHints;
use super::settle::{self, Settlement};
use super::{Body, ProxyError};
use crate::config::{Action, Config, Inject};
use crate::keys::{self, LearnedUnit};
use crate::quota::{self, Costs, Demand, KeyOption, Micros, Permit, Priority, Refusal};
use crate::runtime::ProviderRuntime;
use crate::signals;
use crate::stats::Bucket;
use crate::upstream::UpstreamClient;

/// Error bodies up to this size are read for signals (`insufficient_quota`, RetryInfo, ...).
const ERROR_BODY_CAP: usize = 64 * 1024;

/// One call to a provider.
pub struct Call<'a> {
    pub provider: &'a Arc<ProviderRuntime>,
    pub engine: &'a quota::Engine,
    pub client: &'a UpstreamClient,
    pub config: &'a Config,
    pub hints: &'a CallerHints,
    /// The client connection's upstream timer.
    pub timer: &'a crate::deadline::TimerSlot,
}

/// What the request looks like apart from its body (Parts is not Clone).
struct Head {
    method: Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
}

/// Sends one metered call: estimate, admit, send, read the signals, retry, and stream the
/// answer back through the usage tap.
///
/// A plain function around an async block: an `async fn` keeps each argument twice in its
/// state (as the argument and as the local it is moved into), and the per-request future,
/// copied whole into its box, would be that much larger (the request's parts are 224 bytes;
/// see docs/performance.md).
pub fn send<'a>(
    call: Call<'a>,
    parts: http::request::Parts,
    incoming: Incoming,
) -> impl std::future::Future<Output = Result<Response<Body>, ProxyError>> + Send + 'a {
    let mut head = Head {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
    };
    async move {
        let p = call.provider;
        let mut body = body::buffer(incoming, call.config.proxy.max_body_buffer).await?;
        let strip_usage = add_include_usage(p, head.uri.path(), &mut body, &mut head.headers);
        let estimate = {
            let averages = p.averages.lock().unwrap_or_else(|e| e.into_inner());
            let info = quota::RequestInfo {
                method: head.method.as_str(),
                path: head.uri.path(),
                query: head.uri.query(),
                body: body.whole().map(|b| &b[..]),
            };
            p.costs.estimate(&info, &averages)
        };
        let costs = estimate.costs;
        let needs = learned_needs(&costs);
        let priority = call.hints.priority;
        let app_key = match p.secrets.is_empty() {
            true => {
                keys::inject::app_credential(&head.headers, head.uri.query(), &p.config.keys.inject)
                    .map(|c| keys::inject::credential_id(&c))
            }
            false => None,
        };
        let retry = &p.config.retry;
        let replayable = body.whole().is_some_and(|b| b.len() <= retry.max_body);
        let idempotent = matches!(
            head.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
        );
        let arrival = call.engine.clock().now();
        let budget_end = arrival + budget(p, call.hints);
        let mut attempt = 0u32;
        let mut body = Some(body);
        loop {
            attempt += 1;
            let admitted = admit(
                &call,
                &costs,
                &needs,
                priority,
                app_key.as_deref(),
                arrival,
                budget_end,
            )
            .await?;
            let key_idx = admitted.key;
            let key_label = key_idx
                .and_then(|i| p.config.keys.keys.get(i))
                .map(|k| k.id.clone())
                .or_else(|| app_key.clone());
            let last_try = attempt >= retry.max_attempts || !replayable;
            let req_body = match (&body, last_try) {
                (Some(RequestBody::Whole(b)), false) => RequestBody::Whole(b.clone()),
                _ => body
                    .take()
                    .unwrap_or(RequestBody::Whole(Default::default())),
            };
            // The last attempt takes the headers; only a retry needs them again. The parsed
            // map goes upstream and the copy stays for a retry: hyper keeps the map it sent
            // to parse the answer into, and the parsed one has room to spare for the
            // response headers added here (a copy is exactly full, and grew every response).
            let headers = if last_try {
                std::mem::take(&mut head.headers)
            } else {
                let kept = head.headers.clone();
                std::mem::replace(&mut head.headers, kept)
            };
            let request = build_request(p, &head, headers, req_body, key_idx)?;
            let mut permit = admitted.permit;
            permit.mark_sent();
            // The engine's clock times the call too: the read after the answer serves both.
            let clock = call.engine.clock();
            let started = clock.now();
            // A new upstream connection may take a while (a TLS handshake): the windows count
            // the call from when it goes out on it.
            let sent = call
                .timer
                .timeout(
                    call.config.proxy.upstream_timeout,
                    call.client
                        .request_then(request, || permit.restamp(clock.now())),
                )
                .await;
            let now = call.engine.clock().now();
            p.metrics
                .upstream_duration()
                .record(now.saturating_sub(started) as f64 / 1e6);
            let resp = match sent {
                Some(Ok(resp)) => resp,
                failed => {
                    end_key(p, key_idx);
                    p.metrics.count("upstream_error");
                    record(
                        p,
                        call.engine,
                        Bucket {
                            requests: 1,
                            upstream_errors: 1,
                            ..Bucket::default()
                        },
                    );
                    // Never reached an answer: the estimate stays charged only if bytes may have
                    // reached the upstream; a connect failure costs nothing.
                    return Err(match failed {
                        None => ProxyError::GatewayTimeout(crate::config::format_duration(
                            call.config.proxy.upstream_timeout,
                        )),
                        Some(Err(e)) => {
                            if e.is_connect() {
                                permit.cancel();
                            }
                            // The authority only: the path and query may carry a credential.
                            let authority = head.uri.authority().map_or("upstream", |a| a.as_str());
                            ProxyError::BadGateway(super::forward::describe_client_error(
                                authority, &e,
                            ))
                        }
                        Some(Ok(_)) => ProxyError::BadGateway("unreachable".into()),
                    });
                }
            };
            let status = resp.status().as_u16();
            let mut sig =
                signals::from_headers(&p.families, &p.custom, status, resp.headers(), now);
            let resp = if status >= 400 {
                read_error_body(p, resp, &mut sig, now).await
            } else {
                resp.map(ResponseBody::Streamed)
            };
            settle::observe_key(p, key_idx, key_label.as_deref(), status, &sig, now);
            let retriable =
                retry.on.contains(&status) && (status == 429 || idempotent || retry.any_method);
            // One clock read serves the rest of this attempt (stats, headroom, headers).
            p.stats.record(
                now,
                Bucket {
                    requests: 1,
                    upstream_429: u64::from(status == 429),
                    upstream_errors: u64::from(status >= 500),
                    delayed: u64::from(admitted.delayed > 0 && attempt == 1),
                    ..Bucket::default()
                },
            );
            if retriable && !last_try {
                end_key(p, key_idx);
                permit.settle(&Costs::ZERO.with(quota::Unit::Requests, 1.0));
                metrics::counter!("quota_proxy_retries_total", "provider" => p.config.name.clone(), "reason" => status.to_string()).increment(1);
                if !wait_before_retry(&call, status, &sig, now, budget_end, attempt, &needs).await {
                    return Ok(finish_plain(
                        p,
                        resp.map(BodyExt::boxed),
                        key_label.as_deref(),
                        admitted.delayed,
                    ));
                }
                continue;
            }
            let shared_room = permit.shared_headroom(now);
            let settlement = Settlement {
                provider: p.clone(),
                permit,
                key: key_idx,
                key_label: key_label.clone(),
                estimate: costs,
                model: estimate.model.clone(),
                route: (sig.cost.is_some()
                    || p.usage.as_ref().is_some_and(|u| u.reports_credits()))
                .then(|| head.uri.path().into()),
                upstream_cost: sig.cost,
                clock: call.engine.clock().clone(),
            };
            let delayed = admitted.delayed;
            let outcome = match (status, delayed) {
                (429, _) => "upstream_429",
                (_, d) if d > 0 => "delayed",
                _ => "forwarded",
            };
            p.metrics.count(outcome);
            if delayed > 0 {
                p.metrics.delay().record(delayed as f64 / 1e6);
            }
            let resp = settle::tap_response(resp, settlement, strip_usage);
            let mut resp = decorate(
                now,
                p,
                resp,
                key_label.as_deref(),
                delayed,
                call.hints,
                shared_room,
            );
            if retriable && !replayable {
                // Say why an answer the proxy would have retried was not.
                resp.headers_mut().insert(
                    "x-quota-proxy-retry",
                    HeaderValue::from_static("skipped: request body larger than retry.max_body"),
                );
            }
            return Ok(resp);
        }
    }
}

fn record(p: &ProviderRuntime, engine: &quota::Engine, delta: Bucket) {
    p.stats.record(engine.clock().now(), delta);
}

struct Admitted {
    permit: Permit,
    key: Option<usize>,
    delayed: Micros,
}

/// Picks the usable keys in strategy order and admits the call against every limit.
async fn admit(
    call: &Call<'_>,
    costs: &Costs,
    needs: &[(LearnedUnit, f64)],
    priority: Priority,
    app_key: Option<&str>,
    arrival: Micros,
    budget_end: Micros,
) -> Result<Admitted, ProxyError> {
    let p = call.provider;
    let refuse = |r: Refusal| {
        p.metrics.count("rejected");
        record(
            p,
            call.engine,
            Bucket {
                rejected: 1,
                ..Bucket::default()
            },
        );
        ProxyError::Quota {
            provider: p.config.name.clone(),
            refusal: r,
        }
    };
    let remaining = |now: Micros| budget_end.saturating_sub(now);
    if p.secrets.is_empty() {
        let mut demand = Demand::new(&call.hints.client, *costs).with_priority(priority);
        if let Some(k) = app_key {
            demand = demand.with_key(k);
        }
        let permit = p
            .quota
            .admit(demand, Some(remaining(arrival)))
            .await
            .map_err(refuse)?;
        let delayed = permit.delayed();
        return Ok(Admitted {
            permit,
            key: None,
            delayed,
        });
    }
    let mut key_wait: Micros = 0;
    loop {
        let now = call.engine.clock().now();
        let candidates = p.pool.lock().unwrap_or_else(|e| e.into_inner()).candidates(
            &call.hints.client,
            needs,
            now,
        );
        if candidates.usable.is_empty() {
            let delay_ok = p.config.on_limit.action == Action::Delay;
            match candidates.earliest {
                Some(t) if delay_ok && t <= budget_end => {
                    let pause = t.saturating_sub(now).max(1_000);
                    tokio::time::sleep(Duration::from_micros(pause)).await;
                    key_wait += pause;
                    continue;
                }
                earliest => {
                    return Err(refuse(Refusal::Limited {
                        limit: "keys".into(),
                        scope: quota::Scope::Key,
                        scope_id: String::new(),
                        retry_after: earliest
                            .map_or(60 * quota::SECOND, |t| t.saturating_sub(now).max(1)),
                    }))
                }
            }
        }
        let options: Vec<KeyOption<'_>> = candidates
            .usable
            .iter()
            .filter_map(|&i| p.config.keys.keys.get(i))
            .map(|k| KeyOption {
                key: &k.id,
                account: k.account.as_deref(),
            })
            .collect();
        let demand = Demand::new(&call.hints.client, *costs)
            .with_priority(priority)
            .with_keys(&options);
        let permit = p
            .quota
            .admit(demand, Some(remaining(now)))
            .await
            .map_err(refuse)?;
        let chosen = candidates.usable.get(permit.key().unwrap_or(0)).copied();
        if let Some(i) = chosen {
            p.pool
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .begin(i, needs);
        }
        let delayed = permit.delayed() + key_wait;
        return Ok(Admitted {
            permit,
            key: chosen,
            delayed,
        });
    }
}

/// The delay budget: the provider's `max_delay`, capped by the caller's `x-quota-max-delay`.
fn budget(p: &ProviderRuntime, hints: &CallerHints) -> Micros {
    let max = p.config.on_limit.max_delay;
    quota::duration_micros(hints.max_delay.map_or(max, |h| h.min(max)))
}

/// The units a call costs that keys learn limits in, with the amounts (at most five, kept
/// in place: no allocation per call).
struct Needs {
    items: [(LearnedUnit, f64); 5],
    len: usize,
}

impl std::ops::Deref for Needs {
    type Target = [(LearnedUnit, f64)];

    fn deref(&self) -> &Self::Target {
        &self.items[..self.len]
    }
}

fn learned_needs(costs: &Costs) -> Needs {
    let all = [
        (LearnedUnit::Requests, costs.requests),
        (LearnedUnit::Tokens, costs.tokens),
        (LearnedUnit::InputTokens, costs.input_tokens),
        (LearnedUnit::OutputTokens, costs.output_tokens),
        (LearnedUnit::Credits, costs.credits),
    ];
    let mut needs = Needs { items: all, len: 0 };
    for item in all {
        if item.1 > 0.0 {
            needs.items[needs.len] = item;
            needs.len += 1;
        }
    }
    needs
}

/// Sets OpenAI's `stream_options.include_usage` when the app did not; true when it did so
/// (and the extra usage chunk must be removed from what the app receives).
fn add_include_usage(
    p: &ProviderRuntime,
    path: &str,
    body: &mut RequestBody,
    headers: &mut http::HeaderMap,
) -> bool {
    if !p.openai_usage || !signals::openai_path_takes_include_usage(path) {
        return false;
    }
    let Some(rewritten) = body
        .whole()
        .and_then(|b| signals::openai_request_add_include_usage(b))
    else {
        return false;
    };
    headers.remove(header::CONTENT_LENGTH);
    *body = RequestBody::Whole(rewritten.into());
    true
}

fn build_request(
    p: &ProviderRuntime,
    head: &Head,
    mut headers: http::HeaderMap,
    body: RequestBody,
    key: Option<usize>,
) -> Result<Request<Body>, ProxyError> {
    let mut uri = head.uri.clone();
    let mut body = body;
    if let Some(secret) = key.and_then(|i| p.secrets.get(i)) {
        let inject = &p.config.keys.inject;
        keys::inject::into_headers(&mut headers, inject, secret.expose())
            .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
        match inject {
            Inject::Query { param } => {
                let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
                let new_pq = keys::inject::with_query_key(pq, param, secret.expose());
                let mut parts = uri.into_parts();
                parts.path_and_query =
                    Some(new_pq.parse().map_err(|_| {
                        ProxyError::BadRequest("cannot add the key to the URL".into())
                    })?);
                uri = http::Uri::from_parts(parts)
                    .map_err(|_| ProxyError::BadRequest("cannot add the key to the URL".into()))?;
            }
            Inject::JsonField { field } => {
                let Some(whole) = body.whole() else {
                    return Err(ProxyError::PayloadTooLarge(
                        "the body is too large to carry the key in a JSON field".into(),
                    ));
                };
                let rewritten = keys::inject::with_json_key(whole, field, secret.expose())
                    .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
                headers.remove(header::CONTENT_LENGTH);
                body = RequestBody::Whole(rewritten.into());
            }
            Inject::Header { .. } => {}
        }
    }
    // Usage is read from the body: ask for it uncompressed.
    if p.usage.is_some() {
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }
    let mut req = Request::new(body.into_body());
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = head.version;
    *req.headers_mut() = headers;
    Ok(req)
}

/// Reads a (small) error body for its signals and hands back an equivalent response.
async fn read_error_body(
    p: &ProviderRuntime,
    resp: Response<Incoming>,
    sig: &mut signals::Signals,
    now: Micros,
) -> Response<ResponseBody> {
    let (parts, incoming) = resp.into_parts();
    let small = incoming
        .size_hint()
        .upper()
        .is_some_and(|n| n as usize <= ERROR_BODY_CAP);
    if !small {
        return Response::from_parts(parts, ResponseBody::Streamed(incoming));
    }
    match incoming.collect().await {
        Ok(collected) => {
            let bytes = collected.to_bytes();
            signals::from_body(
                &p.families,
                &p.custom,
                parts.status.as_u16(),
                &bytes,
                now,
                sig,
            );
            Response::from_parts(parts, bytes.into())
        }
        Err(e) => Response::from_parts(
            parts,
            Bytes::from(format!("upstream body failed: {e}")).into(),
        ),
    }
}

/// Before a retry: for a 429 with no pool, wait the upstream's Retry-After if it fits the
/// budget; for 5xx, a short backoff. False when the retry cannot happen in time.
async fn wait_before_retry(
    call: &Call<'_>,
    status: u16,
    sig: &signals::Signals,
    now: Micros,
    budget_end: Micros,
    attempt: u32,
    needs: &[(LearnedUnit, f64)],
) -> bool {
    let p = call.provider;
    let until = if status == 429 {
        if !p.secrets.is_empty() {
            // The key now cools: retry only if another key is usable, or one frees within
            // the budget (delay mode); else the upstream's own 429 goes back to the app.
            let c = p.pool.lock().unwrap_or_else(|e| e.into_inner()).candidates(
                &call.hints.client,
                needs,
                now,
            );
            let delay = p.config.on_limit.action == Action::Delay;
            return !c.usable.is_empty() || (delay && c.earliest.is_some_and(|t| t <= budget_end));
        }
        sig.cooling_until().unwrap_or(now + quota::SECOND)
    } else {
        now + 100_000 * u64::from(attempt)
    };
    if until > budget_end {
        return false;
    }
    tokio::time::sleep(Duration::from_micros(until.saturating_sub(now))).await;
    true
}

fn end_key(p: &ProviderRuntime, key: Option<usize>) {
    if let Some(i) = key {
        p.pool.lock().unwrap_or_else(|e| e.into_inner()).end(i);
    }
}

/// An upstream answer returned as is (a retry could not happen in time).
fn finish_plain(
    p: &ProviderRuntime,
    resp: Response<Body>,
    key: Option<&str>,
    delayed: Micros,
) -> Response<Body> {
    p.metrics.count("upstream_429");
    let (mut parts, body) = resp.into_parts();
    add_key_headers(&mut parts.headers, key, delayed);
    parts.version = http::Version::HTTP_11;
    Response::from_parts(parts, body)
}

/// The response headers the proxy sets, named by constants: a `&str` name is parsed again
/// at every insert.
static KEY_HEADER: header::HeaderName = header::HeaderName::from_static("x-quota-proxy-key");
static DELAYED_HEADER: header::HeaderName =
    header::HeaderName::from_static("x-quota-proxy-delayed-ms");
static RATELIMIT: header::HeaderName = header::HeaderName::from_static("ratelimit");
static RATELIMIT_POLICY: header::HeaderName = header::HeaderName::from_static("ratelimit-policy");

/// Strips the upstream's hop-by-hop headers and sets the key and delay headers; an
/// `x-quota-proxy-key` the upstream sent never reaches the app.
fn add_key_headers(headers: &mut http::HeaderMap, key: Option<&str>, delayed: Micros) {
    let upstream_named_key = super::headers::strip_hop_by_hop_noting(headers, &KEY_HEADER);
    match key.and_then(|k| HeaderValue::from_str(k).ok()) {
        // Replaces any the upstream sent.
        Some(v) => {
            headers.insert(&KEY_HEADER, v);
        }
        None if upstream_named_key => {
            headers.remove(&KEY_HEADER);
        }
        None => {}
    }
    if delayed > 0 {
        headers.insert(&DELAYED_HEADER, HeaderValue::from(delayed / 1000));
    }
}

/// The response's quota headers: key id, delay, and `RateLimit`/`RateLimit-Policy` for the
/// tightest limit that applied to this call (`shared`: as the Redis backend counted it).
fn decorate(
    now: Micros,
    p: &ProviderRuntime,
    resp: Response<Body>,
    key: Option<&str>,
    delayed: Micros,
    hints: &CallerHints,
    shared: Option<quota::Headroom>,
) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    add_key_headers(&mut parts.headers, key, delayed);
    parts.version = http::Version::HTTP_11;
    let account = key
        .and_then(|k| p.config.keys.keys.iter().find(|s| s.id == k))
        .and_then(|k| k.account.as_deref());
    let tightest = match shared {
        Some(h) => Some(settle::Tightest::from_headroom(h, now)),
        None => settle::tightest(&p.quota, &hints.client, key, account, now),
    };
    if let Some(t) = tightest {
        // Limit names are checked as header-safe when the config loads, so neither fails;
        // if one did, the response goes out without it and the debug log says why.
        match (t.ratelimit(), t.policy()) {
            (Ok(r), Ok(p)) => {
                parts.headers.insert(&RATELIMIT, r);
                parts.headers.insert(&RATELIMIT_POLICY, p);
            }
            _ => {
                tracing::debug!(limit = %t.name, "limit name cannot be quoted in RateLimit headers")
            }
        }
    }
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream_headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    /// The key header names the key the proxy chose, or is absent: one the upstream sent
    /// never reaches the app. Hop-by-hop headers go in the same pass.
    #[test]
    fn key_headers_replace_the_upstreams_own() {
        let sent = [
            ("x-quota-proxy-key", "spoofed"),
            ("connection", "x-extra"),
            ("x-extra", "1"),
            ("content-type", "text/plain"),
        ];
        let mut h = upstream_headers(&sent);
        add_key_headers(&mut h, None, 0);
        assert_eq!(h, upstream_headers(&[("content-type", "text/plain")]));

        let mut h = upstream_headers(&sent);
        add_key_headers(&mut h, Some("k1"), 2_500);
        assert_eq!(
            h,
            upstream_headers(&[
                ("content-type", "text/plain"),
                ("x-quota-proxy-key", "k1"),
                ("x-quota-proxy-delayed-ms", "2"),
            ])
        );

        let mut h = upstream_headers(&[("content-type", "text/plain")]);
        add_key_headers(&mut h, None, 0);
        assert_eq!(h, upstream_headers(&[("content-type", "text/plain")]));
    }
}
