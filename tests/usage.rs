//! Usage read from responses (SPEC §5 "reserve, then settle", §7): OpenAI JSON and SSE usage
//! settle token limits, the proxy's `include_usage` rewrite and the removal of the extra
//! chunk, charging of abandoned streams, and Keepa-style balances pausing a key.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(5);
const CHAT: &str = "/v1/chat/completions";

fn usage_json(prompt: u64, completion: u64) -> String {
    format!(
        "{{\"id\":\"c1\",\"object\":\"chat.completion\",\"model\":\"gpt-test\",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":\"hi\"}},\"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":{prompt},\"completion_tokens\":{completion},\"total_tokens\":{}}}}}",
        prompt + completion
    )
}

fn chat_body(max_tokens: u64) -> String {
    format!(
        "{{\"model\":\"gpt-test\",\"max_tokens\":{max_tokens},\"messages\":[{{\"role\":\"user\",\"content\":\"hello\"}}]}}"
    )
}

async fn chat(proxy: &Proxy, up: &MockUpstream, body: &str) -> Resp {
    forward(
        proxy.proxy_addr,
        "POST",
        &mock_url(up, CHAT),
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await
}

/// Waits until `quota_proxy_tokens_total{provider="mock",kind}` reaches `at_least`.
async fn wait_tokens(proxy: &Proxy, kind: &str, at_least: f64) -> f64 {
    let label = format!("kind=\"{kind}\"");
    eventually(
        &format!("tokens_total kind={kind} >= {at_least}"),
        WAIT,
        || {
            let label = label.clone();
            async move {
                let m = metrics_text(proxy.admin_addr).await;
                let v = metric_value(
                    &m,
                    "quota_proxy_tokens_total",
                    &["provider=\"mock\"", &label],
                );
                (v >= at_least).then_some(v)
            }
        },
    )
    .await
}

fn openai_cfg(up: &MockUpstream, tpm: f64) -> String {
    mock_provider(up, &[("signals", "[\"openai\"]")])
        .raw(&limit("tpm", "tokens", tpm, "1m", "provider"))
        .raw(&on_limit("reject", "5s", 100))
        .build()
}

#[tokio::test]
async fn json_usage_above_the_estimate_exhausts_a_token_limit() {
    let up = MockUpstream::plain(fixed(
        200,
        &[("content-type", "application/json")],
        &usage_json(900, 90),
    ))
    .await;
    let proxy = Proxy::start(&openai_cfg(&up, 1000.0));
    let body = chat_body(10); // estimate ~ 10 + bytes/4 ≈ 30 tokens

    let r = chat(&proxy, &up, &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.text(),
        usage_json(900, 90),
        "the JSON body passes untouched"
    );
    wait_tokens(&proxy, "output", 90.0).await;
    assert_eq!(wait_tokens(&proxy, "input", 900.0).await, 900.0);

    // 990 of 1000 are used by the real usage: the next small call no longer fits.
    let r = chat(&proxy, &up, &body).await;
    let (err, _) = assert_quota_429(&r, "tpm", "mock");
    assert_eq!(err["limit"], "tpm");
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn json_usage_below_the_estimate_is_refunded() {
    let up = MockUpstream::plain(fixed(
        200,
        &[("content-type", "application/json")],
        &usage_json(5, 5),
    ))
    .await;
    let proxy = Proxy::start(&openai_cfg(&up, 1000.0));
    let body = chat_body(400); // estimate ≈ 420: only 2 would fit without settlement

    for i in 0..5 {
        let r = chat(&proxy, &up, &body).await;
        assert_eq!(
            r.status,
            200,
            "call {i}: settled usage of 10 leaves room: {}",
            r.text()
        );
        wait_tokens(&proxy, "output", 5.0 * (i + 1) as f64).await;
    }
    assert_eq!(up.requests().len(), 5);
}

#[tokio::test]
async fn estimate_above_a_whole_token_limit_is_request_too_large() {
    let up = MockUpstream::plain(fixed(200, &[], &usage_json(1, 1))).await;
    let proxy = Proxy::start(&openai_cfg(&up, 1000.0));

    let r = chat(&proxy, &up, &chat_body(5000)).await;

    let err = assert_proxy_error(&r, 429, "rejected");
    assert_eq!(err["code"], "request_too_large", "{err}");
    assert!(r.header("retry-after").is_none());
    assert_eq!(up.requests().len(), 0);
}

fn chunk(json: &str) -> String {
    format!("data: {json}\n\n")
}

/// An OpenAI-style stream: two content chunks, the usage-only chunk, `[DONE]`.
fn openai_stream() -> Vec<String> {
    vec![
        chunk("{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-test\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"},\"finish_reason\":null}]}"),
        chunk("{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-test\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}"),
        chunk("{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-test\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":2,\"total_tokens\":13}}"),
        "data: [DONE]\n\n".to_string(),
    ]
}

#[tokio::test]
async fn sse_usage_when_the_app_asked_passes_byte_identical_and_settles() {
    let events = openai_stream();
    let up = MockUpstream::plain(sse_script(events.clone())).await;
    let proxy = Proxy::start(&openai_cfg(&up, 200.0));
    let body = "{\"model\":\"gpt-test\",\"stream\":true,\"stream_options\":{\"include_usage\":true},\"max_tokens\":150,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";

    for i in 0..2 {
        let r = chat(&proxy, &up, body).await;
        assert_eq!(r.status, 200, "call {i}: {}", r.text());
        assert_eq!(
            r.text(),
            events.concat(),
            "the app asked for usage: stream untouched"
        );
        assert_eq!(r.header("content-type"), Some("text/event-stream"));
        // Settled to 13 (from an estimate of ~190 of 200), so the second call fits.
        wait_tokens(&proxy, "input", 11.0 * (i + 1) as f64).await;
        wait_tokens(&proxy, "output", 2.0 * (i + 1) as f64).await;
    }
    for rec in up.requests() {
        assert_eq!(rec.body_text(), body, "the request is not rewritten");
    }
}

#[tokio::test]
async fn sse_usage_chunk_added_by_the_proxy_is_removed_from_the_apps_stream() {
    let events = openai_stream();
    // The usage event arrives split over two frames.
    let usage = &events[2];
    let (a, b) = usage.split_at(usage.len() / 2);
    let frames = vec![
        events[0].clone(),
        events[1].clone(),
        a.to_string(),
        b.to_string(),
        events[3].clone(),
    ];
    let up = MockUpstream::plain(sse_script(frames)).await;
    let proxy = Proxy::start(&openai_cfg(&up, 200.0));
    let body = "{\"model\":\"gpt-test\",\"stream\":true,\"max_tokens\":150,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";

    for i in 0..2 {
        let r = chat(&proxy, &up, body).await;
        assert_eq!(r.status, 200, "call {i}: {}", r.text());
        let expected = format!("{}{}{}", events[0], events[1], events[3]);
        assert_eq!(
            r.text(),
            expected,
            "call {i}: the extra usage chunk is removed, the rest identical"
        );
        wait_tokens(&proxy, "input", 11.0 * (i + 1) as f64).await;
        wait_tokens(&proxy, "output", 2.0 * (i + 1) as f64).await;
    }
    let reqs = up.requests();
    assert_eq!(reqs.len(), 2, "settled to 13 tokens each, both fit in 200");
    let sent: serde_json::Value = serde_json::from_slice(&reqs[0].body).unwrap();
    assert_eq!(
        sent["stream_options"]["include_usage"], true,
        "the upstream was asked for usage: {sent}"
    );
    let mut without = sent.clone();
    without.as_object_mut().unwrap().remove("stream_options");
    let original: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(without, original, "nothing else in the request changed");
}

#[tokio::test]
async fn client_disconnecting_mid_stream_is_still_charged() {
    let first = chunk("{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}");
    let (h, closed) = sse_script_then_trickle(vec![first.clone()]);
    let small = fixed(
        200,
        &[("content-type", "application/json")],
        &usage_json(5, 5),
    );
    let up = MockUpstream::plain(by_path(vec![("/v1/embeddings", small)], h)).await;
    let proxy = Proxy::start(&openai_cfg(&up, 1000.0));
    let body = "{\"model\":\"gpt-test\",\"stream\":true,\"stream_options\":{\"include_usage\":true},\"max_tokens\":700,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";

    // Raw client: read until the first event, then close the socket.
    let mut s = TcpStream::connect(proxy.proxy_addr).await.unwrap();
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: {MOCK_HOST}:{}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        mock_url(&up, CHAT),
        up.port(),
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + WAIT;
    while !String::from_utf8_lossy(&got).contains("Hel") {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .expect("first event through the proxy")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    drop(s);
    closed
        .wait(
            "the proxy dropped the upstream stream after the client left",
            WAIT,
        )
        .await;

    // A small call (settled to 10 tokens) still fits.
    let r = forward(
        proxy.proxy_addr,
        "POST",
        &mock_url(&up, "/v1/embeddings"),
        &[("content-type", "application/json")],
        chat_body(5),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_tokens(&proxy, "output", 5.0).await;
    // The abandoned call reached the upstream: its ~720-token estimate stays charged, so a
    // second such call does not fit in 1000 (refunded, 10 + 720 would).
    let r = chat(&proxy, &up, body).await;
    assert_quota_429(&r, "tpm", "mock");
    assert_eq!(up.requests().len(), 2);
}

/// A Keepa-like upstream: a balance of `start` tokens, each call costs 1 and is served while
/// the balance is positive (else 429); every `period` the balance gains `per_refill`.
struct Keepa {
    start: Instant,
    served: u64,
    refused: u64,
}

#[tokio::test]
async fn keepa_balance_at_zero_pauses_the_key_until_the_refill() {
    const PERIOD_MS: u128 = 1000;
    const PER_REFILL: i64 = 2;
    const INITIAL: i64 = 2;
    let state = Arc::new(Mutex::new(Keepa {
        start: Instant::now(),
        served: 0,
        refused: 0,
    }));
    let st = state.clone();
    let h = handler(move |_r: Recorded| {
        let st = st.clone();
        async move {
            let mut s = st.lock().unwrap();
            let elapsed = s.start.elapsed().as_millis();
            let refills = (elapsed / PERIOD_MS) as i64;
            let refill_in = PERIOD_MS - elapsed % PERIOD_MS;
            let balance = INITIAL + refills * PER_REFILL - s.served as i64;
            if balance > 0 {
                s.served += 1;
                let body = format!(
                    "{{\"tokensLeft\":{},\"refillIn\":{refill_in},\"refillRate\":{PER_REFILL},\"tokensConsumed\":1,\"products\":[]}}",
                    balance - 1
                );
                response(200, &[("content-type", "application/json")], body)
            } else {
                s.refused += 1;
                let body = format!(
                    "{{\"tokensLeft\":{balance},\"refillIn\":{refill_in},\"refillRate\":{PER_REFILL},\"tokensConsumed\":0}}"
                );
                response(429, &[("content-type", "application/json")], body)
            }
        }
    });
    let up = MockUpstream::plain(h).await;
    let cfg = mock_provider(&up, &[("signals", "[\"keepa\"]")])
        .raw("[providers.mock.keys]\ninject = { query = \"key\" }\npool = [{ id = \"only\", env = \"QPT_KEEPA_KEY\" }]\n")
        .raw(&on_limit("delay", "5s", 100))
        .build();
    let proxy = Proxy::start_with_env(&cfg, &[("QPT_KEEPA_KEY", "keepa-secret-1")]);
    state.lock().unwrap().start = Instant::now();

    let mut statuses = Vec::new();
    for i in 0..7 {
        let r = forward(
            proxy.proxy_addr,
            "GET",
            &mock_url(&up, &format!("/product?asin=B{i:04}")),
            &[],
            "",
        )
        .await;
        statuses.push(r.status.as_u16());
    }

    let s = state.lock().unwrap();
    assert_eq!(
        s.refused, 0,
        "the proxy sent {} calls while the balance was spent (statuses to the app {statuses:?}, upstream saw {} requests)",
        s.refused,
        up.requests().len()
    );
    assert_eq!(statuses, vec![200; 7]);
    assert!(up
        .requests()
        .iter()
        .all(|r| r.path_and_query().contains("key=keepa-secret-1")));
}

#[tokio::test]
async fn usd_limit_is_settled_from_usage_and_prices() {
    // 490 input × $1/M + 250 output × $2/M = $0.00099 of a $0.001 limit.
    let up = MockUpstream::plain(fixed(
        200,
        &[("content-type", "application/json")],
        &usage_json(490, 250),
    ))
    .await;
    let cfg = mock_provider(&up, &[("signals", "[\"openai\"]")])
        .raw(&limit("usd", "usd", 0.001, "1m", "provider"))
        .raw(&on_limit("reject", "5s", 100))
        .raw("[providers.mock.prices]\n\"gpt-test\" = { input = 1.0, output = 2.0 }\n")
        .build();
    let proxy = Proxy::start(&cfg);
    let body = chat_body(10); // estimated at well under $0.0001

    let r = chat(&proxy, &up, &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_tokens(&proxy, "output", 250.0).await;

    let r = chat(&proxy, &up, &body).await;
    assert_quota_429(&r, "usd", "mock");
    assert_eq!(up.requests().len(), 1);
}
