//! Example-based tests for the usage tap: Anthropic, Gemini and Responses API streams,
//! early drops, JSON bodies, errors, trailers, size hints, body kinds, a channel-fed source.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame};
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};

use crate::signals::tests_support::*;
use crate::signals::*;

#[test]
fn anthropic_stream_usage() {
    let stream = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-20250514\",\"stop_reason\":null,\"usage\":{\"input_tokens\":472,\"cache_creation_input_tokens\":10,\"cache_read_input_tokens\":3,\"output_tokens\":2}}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\ndata: {\"type\": \"ping\"}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    for split in [1, 7, 64, stream.len()] {
        let chunks: Vec<&[u8]> = stream.as_bytes().chunks(split).collect();
        let (t, seen) = tap(Chunks::data(&chunks), sse(UsageFormat::Anthropic, false));
        assert_eq!(concat(&drain(t).0), stream.as_bytes());
        let u = seen.lock().unwrap()[0].usage.clone().unwrap();
        assert_eq!((u.input_tokens, u.output_tokens), (485, 15));
        assert_eq!(u.model.as_deref(), Some("claude-sonnet-4-20250514"));
    }
}

#[test]
fn gemini_and_responses_streams() {
    let gemini = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}]}}],\"usageMetadata\":{\"promptTokenCount\":8,\"candidatesTokenCount\":1,\"totalTokenCount\":9},\"modelVersion\":\"gemini-2.0-flash\"}\r\n\r\ndata: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\" there\"}]},\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":8,\"candidatesTokenCount\":12,\"totalTokenCount\":20},\"modelVersion\":\"gemini-2.0-flash\"}\r\n\r\n";
    let (t, seen) = tap(Chunks::data(&[gemini]), sse(UsageFormat::Gemini, false));
    drain(t);
    let u = seen.lock().unwrap()[0].usage.clone().unwrap();
    assert_eq!((u.input_tokens, u.output_tokens), (8, 12));

    let responses = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"model\":\"gpt-4.1\",\"usage\":null}}\n\nevent: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"model\":\"gpt-4.1\",\"usage\":{\"input_tokens\":37,\"output_tokens\":11,\"total_tokens\":48}}}\n\n";
    let (t, seen) = tap(Chunks::data(&[responses]), sse(UsageFormat::OpenAi, true));
    assert_eq!(concat(&drain(t).0), responses.as_bytes());
    let o = seen.lock().unwrap()[0].clone();
    assert_eq!(
        o.usage.map(|u| (u.input_tokens, u.output_tokens)),
        Some((37, 11))
    );
    assert!(!o.removed_usage_chunk);
}

#[test]
fn early_drop_reports_partial_usage_once() {
    let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-3-5-haiku\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n";
    let delta = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\"}\n\n";
    let (t, seen) = tap(
        Chunks::data(&[start, delta, delta, delta]),
        sse(UsageFormat::Anthropic, false),
    );
    let mut t = Box::pin(t);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..2 {
        assert!(matches!(
            t.as_mut().poll_frame(&mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
    }
    assert!(seen.lock().unwrap().is_empty());
    drop(t); // the client went away
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert!(!seen[0].completed);
    let u = seen[0].usage.clone().unwrap();
    assert_eq!((u.input_tokens, u.output_tokens), (25, 1));
}

#[test]
fn json_bodies() {
    let body = r#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o","usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#;
    let json = TapConfig::for_response(UsageFormat::OpenAi, &HeaderMap::new());
    assert_eq!(json.kind, BodyKind::Json);

    let (t, seen) = tap(Full::new(Bytes::from(body)), json.clone());
    assert_eq!(concat(&drain(t).0), body.as_bytes());
    let o = seen.lock().unwrap()[0].clone();
    assert_eq!(
        o.usage.map(|u| (u.input_tokens, u.output_tokens)),
        Some((5, 7))
    );
    assert_eq!(o.body.as_deref(), Some(body.as_bytes()));
    assert!(o.completed && !o.over_cap);

    let halves: Vec<&[u8]> = body.as_bytes().chunks(10).collect();
    let small = TapConfig {
        json_cap: 64,
        ..json.clone()
    };
    let (t, seen) = tap(Chunks::data(&halves), small);
    assert_eq!(concat(&drain(t).0), body.as_bytes());
    let o = seen.lock().unwrap()[0].clone();
    assert!(o.over_cap && o.usage.is_none() && o.body.is_none());

    let (t, seen) = tap(Full::new(Bytes::from_static(b"{\"usage\": garbage")), json);
    drain(t);
    let o = seen.lock().unwrap()[0].clone();
    assert!(o.completed && o.usage.is_none());
}

#[test]
fn errors_trailers_and_hints() {
    // An upstream error mid-stream: passed on, reported as not completed.
    let mut frames = Chunks::data(&["data: {}\n\n"]);
    frames.0.push_back(Err("reset"));
    let (t, seen) = tap(frames, sse(UsageFormat::OpenAi, true));
    let (_, _, failed) = drain(t);
    assert!(failed && !seen.lock().unwrap()[0].completed);

    // Held bytes go out before the trailers.
    let mut frames = Chunks::data(&["data: {}\n\ndata: partial"]);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    frames.0.push_back(Ok(Frame::trailers(trailers.clone())));
    let (t, _) = tap(frames, sse(UsageFormat::OpenAi, true));
    assert!(t.size_hint().exact().is_none());
    let (data, got, _) = drain(t);
    assert_eq!(concat(&data), b"data: {}\n\ndata: partial");
    assert_eq!(got, Some(trailers));

    let (t, _) = tap(
        Full::new(Bytes::from_static(b"abc")),
        sse(UsageFormat::OpenAi, false),
    );
    assert_eq!(t.size_hint().exact(), Some(3));
}

#[test]
fn body_kinds() {
    let kind = |pairs: &[(&str, &str)]| {
        BodyKind::from_headers(&crate::signals::headers::header_map(pairs))
    };
    assert_eq!(
        kind(&[("content-type", "text/event-stream")]),
        BodyKind::Sse
    );
    assert_eq!(
        kind(&[("content-type", "Text/Event-Stream; charset=utf-8")]),
        BodyKind::Sse
    );
    assert_eq!(
        kind(&[("content-type", "application/json")]),
        BodyKind::Json
    );
    assert_eq!(
        kind(&[("content-type", "application/problem+json")]),
        BodyKind::Json
    );
    assert_eq!(kind(&[]), BodyKind::Json);
    assert_eq!(kind(&[("content-type", "image/png")]), BodyKind::Opaque);
    assert_eq!(
        kind(&[
            ("content-type", "application/json"),
            ("content-encoding", "gzip")
        ]),
        BodyKind::Opaque
    );
    assert_eq!(
        kind(&[
            ("content-type", "application/json"),
            ("content-encoding", "identity")
        ]),
        BodyKind::Json
    );
}

/// A body fed by a channel, as a real upstream is: frames arrive over time.
struct ChanBody(tokio::sync::mpsc::Receiver<Bytes>);

impl Body for ChanBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|c| c.map(|c| Ok(Frame::data(c))))
    }
}

#[tokio::test]
async fn streams_each_event_as_it_arrives() {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let (upstream, expected) = openai_stream(&["a".into(), "b".into()], "\n", false);
    let (t, seen) = tap(
        StreamBody::new(BodyStream::new(ChanBody(rx))),
        sse(UsageFormat::OpenAi, true),
    );
    let mut t = Box::pin(t);
    let events: Vec<&[u8]> = upstream.split_inclusive(|b| *b == b'\n').collect();
    let mut got = Vec::new();
    for pair in events.chunks(2) {
        tx.send(Bytes::from(pair.concat())).await.unwrap();
        if pair.concat().windows(6).any(|w| w == b"[DONE]") {
            drop(tx);
            while let Some(f) = t.frame().await {
                got.extend_from_slice(&f.unwrap().into_data().unwrap());
            }
            break;
        }
        let is_usage = pair.concat().windows(12).any(|w| w == b"\"choices\":[]");
        if !is_usage {
            // Each complete event is delivered before the next one is sent.
            let f = t.frame().await.unwrap().unwrap().into_data().unwrap();
            assert_eq!(f.as_ref(), pair.concat().as_slice());
            got.extend_from_slice(&f);
        }
    }
    assert_eq!(got, expected);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[test]
fn tap_fits_a_boxed_send_sync_body() {
    fn send_sync<T: Send + Sync + 'static>(_: &T) {}
    let body = Full::new(Bytes::from_static(b"{}"));
    let tap = UsageTap::new(
        body,
        TapConfig::for_response(UsageFormat::OpenAi, &HeaderMap::new()),
        |_| {},
    );
    send_sync(&tap);
    let boxed = tap.map_err(|never| match never {}).boxed();
    send_sync(&boxed);
}
