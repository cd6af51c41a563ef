//! Shared helpers for the tap tests: prepared body sources, a runtime-free drain, and a
//! generator of OpenAI chat streams with the usage-only chunk.

use std::collections::VecDeque;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame};

use crate::signals::*;

/// A body yielding prepared frames, always ready; `is_end_stream` turns true after the last.
pub(crate) struct Chunks(pub(crate) VecDeque<Result<Frame<Bytes>, &'static str>>);

impl Chunks {
    pub(crate) fn data<T: AsRef<[u8]>>(chunks: &[T]) -> Self {
        Chunks(
            chunks
                .iter()
                .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c.as_ref()))))
                .collect(),
        )
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = &'static str;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, &'static str>>> {
        Poll::Ready(self.0.pop_front())
    }
    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

pub(crate) type Seen = Arc<Mutex<Vec<TapOutcome>>>;

pub(crate) fn tap<B>(
    body: B,
    config: TapConfig,
) -> (UsageTap<B, impl FnOnce(TapOutcome) + Send + Sync>, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let tap = UsageTap::new(body, config, move |o| s.lock().unwrap().push(o));
    (tap, seen)
}

pub(crate) fn sse(format: UsageFormat, strip: bool) -> TapConfig {
    let mut h = HeaderMap::new();
    h.insert(
        "content-type",
        "text/event-stream; charset=utf-8".parse().unwrap(),
    );
    TapConfig::for_response(format, &h).strip_usage_chunk(strip)
}

/// Poll to the end without a runtime (the sources never pend): data frames and trailers.
pub(crate) fn drain<B: Body<Data = Bytes>>(body: B) -> (Vec<Bytes>, Option<HeaderMap>, bool) {
    let mut body = pin!(body);
    let mut cx = Context::from_waker(Waker::noop());
    let (mut data, mut trailers, mut failed) = (vec![], None, false);
    loop {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(None) => break,
            Poll::Ready(Some(Ok(f))) => match f.into_data() {
                Ok(d) => data.push(d),
                Err(f) => trailers = f.into_trailers().ok(),
            },
            Poll::Ready(Some(Err(_))) => {
                failed = true;
                break;
            }
            Poll::Pending => panic!("test sources never pend"),
        }
    }
    assert!(body.is_end_stream() || failed);
    (data, trailers, failed)
}

pub(crate) fn concat(parts: &[Bytes]) -> Vec<u8> {
    parts.iter().flat_map(|b| b.iter().copied()).collect()
}

/// An OpenAI chat stream with `include_usage` on: (upstream bytes, same minus the usage event).
pub(crate) fn openai_stream(contents: &[String], eol: &str, pings: bool) -> (Vec<u8>, Vec<u8>) {
    let chunk = |choices: &str| {
        format!(
            r#"data: {{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{choices}],"usage":null}}{eol}{eol}"#
        )
    };
    let mut events = vec![];
    for (i, c) in contents.iter().enumerate() {
        let text = serde_json::to_string(c).unwrap();
        events.push(chunk(&format!(
            r#"{{"index":0,"delta":{{"content":{text}}},"finish_reason":null}}"#
        )));
        if pings && i % 3 == 1 {
            events.push(format!(": keep-alive{eol}{eol}"));
        }
    }
    events.push(chunk(r#"{"index":0,"delta":{},"finish_reason":"stop"}"#));
    let usage = format!(
        r#"data: {{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[],"usage":{{"prompt_tokens":17,"completion_tokens":{},"total_tokens":99}}}}{eol}{eol}"#,
        contents.len()
    );
    let done = format!("data: [DONE]{eol}{eol}");
    let upstream = [events.concat(), usage, done.clone()].concat().into_bytes();
    let expected = [events.concat(), done].concat().into_bytes();
    (upstream, expected)
}

pub(crate) fn cut(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let (mut out, mut prev) = (vec![], 0);
    for c in cuts.into_iter().chain([bytes.len()]) {
        out.push(bytes[prev..c].to_vec());
        prev = c;
    }
    out
}
