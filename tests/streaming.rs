//! Streamed (chunked / SSE) responses pass through chunk by chunk, not buffered.
//!
//! The upstream sends event k+1 only after the test has received event k through the proxy,
//! so a proxy that buffers the body fails by timeout rather than by a timing guess.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::*;

const EVENTS: usize = 4;
const WAIT: Duration = Duration::from_secs(5);

async fn assert_streams_event_by_event(mut resp: StreamResp, gate: &SseGate) {
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    assert!(
        resp.header("content-length").is_none(),
        "a stream must not get a content-length"
    );
    for k in 0..EVENTS {
        let event = resp.read_until("\n\n", WAIT).await;
        assert_eq!(event, sse_event(k));
        // Event k reached the client while the upstream had sent only events 0..=k.
        assert_eq!(
            gate.sent(),
            k + 1,
            "event {k} arrived after the upstream sent event {}",
            k + 1
        );
        gate.release();
    }
    assert_eq!(
        resp.read_to_end(WAIT).await,
        "",
        "no bytes beyond the upstream's events"
    );
}

#[tokio::test]
async fn sse_passes_through_event_by_event_in_forward_mode() {
    let (h, gate) = sse_gated(EVENTS);
    let up = MockUpstream::plain(h).await;
    let proxy = Proxy::start(&mock_config(&up).build());

    let resp = forward_streaming(
        proxy.proxy_addr,
        "POST",
        &mock_url(&up, "/v1/stream"),
        &[("accept", "text/event-stream")],
        "{\"stream\":true}",
    )
    .await;

    assert_streams_event_by_event(resp, &gate).await;
    assert_eq!(up.single_request().body_text(), "{\"stream\":true}");
}

#[tokio::test]
async fn sse_passes_through_event_by_event_in_route_mode() {
    let (h, gate) = sse_gated(EVENTS);
    let up = MockUpstream::plain(h).await;
    let proxy = Proxy::start(&mock_config(&up).build());

    let resp = route_streaming(proxy.proxy_addr, "GET", "/mock/v1/stream", &[], "").await;

    assert_streams_event_by_event(resp, &gate).await;
    assert_eq!(up.single_request().path_and_query(), "/v1/stream");
}

#[tokio::test]
async fn sse_from_tls_upstream_passes_through_event_by_event() {
    let ca = TestCa::new("upstream test ca");
    let (h, gate) = sse_gated(EVENTS);
    let up = MockUpstream::tls(h, &ca.issue(&[MOCK_HOST])).await;
    let cfg = ConfigBuilder::new()
        .resolve(MOCK_HOST, "127.0.0.1")
        .extra_roots(ca.pem_path())
        .simple_provider("mock", MOCK_HOST, &up.url_for(MOCK_HOST))
        .build();
    let proxy = Proxy::start(&cfg);

    let resp = route_streaming(proxy.proxy_addr, "GET", "/mock/v1/stream", &[], "").await;

    assert_streams_event_by_event(resp, &gate).await;
}

#[tokio::test]
async fn timed_sse_stream_arrives_complete() {
    let up = MockUpstream::plain(sse(5, Duration::from_millis(20))).await;
    let proxy = Proxy::start(&mock_config(&up).build());

    let resp = forward(
        proxy.proxy_addr,
        "GET",
        &mock_url(&up, "/v1/stream"),
        &[],
        "",
    )
    .await;

    assert_eq!(resp.status, 200);
    let expected: String = (0..5).map(sse_event).collect();
    assert_eq!(resp.text(), expected);
}
