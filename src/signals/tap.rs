//! [`UsageTap`]: an `http_body::Body` wrapper that reads usage from a response while it
//! streams to the app.
//!
//! Every frame is passed on as soon as it arrives (the same bytes; in strip mode, minus the
//! OpenAI usage-only event, holding back at most the current partial event). When the body
//! ends, fails, or is dropped early because the client went away, the callback runs exactly
//! once with what was seen.
//!
//! The callback runs on the task polling the body (or dropping it): keep it short, e.g.
//! settle a reservation or send to a channel.
//!
//! In strip mode the body's length changes: the caller must drop `Content-Length` from the
//! response headers (SSE responses are normally chunked anyway).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::signals::collector::Collector;
use crate::signals::usage::{Usage, UsageFormat};

/// Default cap on the JSON body copy (and on a held SSE event): 4 MiB.
pub const DEFAULT_JSON_CAP: usize = 4 << 20;

/// How the response body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `text/event-stream`: parsed incrementally.
    Sse,
    /// JSON (or no content type): copied up to the cap and parsed at the end.
    Json,
    /// Anything else, or a compressed body: passed on, usage unknown.
    Opaque,
}

impl BodyKind {
    /// Decide from the response's `Content-Type` and `Content-Encoding`.
    pub fn from_headers(headers: &HeaderMap) -> BodyKind {
        let encoded = headers
            .get(http::header::CONTENT_ENCODING)
            .is_some_and(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"));
        if encoded {
            return BodyKind::Opaque;
        }
        let Some(ct) = headers.get(http::header::CONTENT_TYPE) else {
            return BodyKind::Json;
        };
        let ct = ct.as_bytes();
        let sse = b"text/event-stream";
        if ct.len() >= sse.len() && ct[..sse.len()].eq_ignore_ascii_case(sse) {
            BodyKind::Sse
        } else if ct.windows(4).any(|w| w.eq_ignore_ascii_case(b"json")) {
            BodyKind::Json
        } else {
            BodyKind::Opaque
        }
    }
}

/// What the tap does with one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapConfig {
    /// Which usage shape to read.
    pub format: UsageFormat,
    /// How to read the body.
    pub kind: BodyKind,
    /// Remove OpenAI's usage-only chunk (set when the proxy added `include_usage`).
    pub strip_openai_usage_chunk: bool,
    /// Cap on the JSON copy and on a held partial SSE event.
    pub json_cap: usize,
}

impl TapConfig {
    /// The configuration for a response with these headers, not stripping.
    pub fn for_response(format: UsageFormat, headers: &HeaderMap) -> Self {
        TapConfig {
            format,
            kind: BodyKind::from_headers(headers),
            strip_openai_usage_chunk: false,
            json_cap: DEFAULT_JSON_CAP,
        }
    }

    /// A body read for nothing (a provider whose usage is not read): no header is looked at.
    pub fn opaque() -> Self {
        TapConfig {
            format: UsageFormat::OpenAi,
            kind: BodyKind::Opaque,
            strip_openai_usage_chunk: false,
            json_cap: DEFAULT_JSON_CAP,
        }
    }

    /// Also remove OpenAI's usage-only chunk (only meaningful for SSE).
    pub fn strip_usage_chunk(mut self, strip: bool) -> Self {
        self.strip_openai_usage_chunk = strip;
        self
    }
}

/// What the tap saw, handed to the callback once.
#[derive(Debug, Clone, PartialEq)]
pub struct TapOutcome {
    /// Usage read so far; `None` when unknown (not reported, not parseable, over the cap).
    pub usage: Option<Usage>,
    /// The body reached its end (false: dropped early or failed).
    pub completed: bool,
    /// The upstream body failed (reset, truncated, timed out), as opposed to the app
    /// dropping it early.
    pub failed: bool,
    /// The JSON body outgrew the copy cap, so its usage is unknown.
    pub over_cap: bool,
    /// Body bytes passed on to the app.
    pub bytes: u64,
    /// OpenAI's usage-only chunk was removed from what the app received.
    pub removed_usage_chunk: bool,
    /// For a completed JSON body within the cap, its bytes (for
    /// [`from_body`](crate::signals::from_body), e.g. Keepa's token fields).
    pub body: Option<Bytes>,
}

/// `F` is the callback, kept in place (no box of its own per response).
struct TapState<F: FnOnce(TapOutcome)> {
    collector: Collector,
    on_done: Option<F>,
    finished: bool,
    /// A frame to pass on after the held bytes released ahead of it.
    stash: Option<Frame<Bytes>>,
}

impl<F: FnOnce(TapOutcome)> TapState<F> {
    fn fire(&mut self, completed: bool) {
        self.fire_outcome(completed, false);
    }

    fn fire_outcome(&mut self, completed: bool, failed: bool) {
        self.finished = true;
        if let Some(cb) = self.on_done.take() {
            cb(TapOutcome {
                failed,
                ..self.collector.outcome(completed)
            });
        }
    }
}

impl<F: FnOnce(TapOutcome)> Drop for TapState<F> {
    fn drop(&mut self) {
        self.fire(false);
    }
}

pin_project! {
    /// A response body that reads usage as it streams; see the module docs.
    pub struct UsageTap<B, F>
    where
        F: FnOnce(TapOutcome),
    {
        #[pin]
        inner: B,
        state: TapState<F>,
    }
}

impl<B, F: FnOnce(TapOutcome)> UsageTap<B, F> {
    /// Wrap `inner`; `on_done` runs exactly once, at the end or when the tap is dropped.
    pub fn new(inner: B, config: TapConfig, on_done: F) -> Self {
        UsageTap {
            inner,
            state: TapState {
                collector: Collector::new(config),
                on_done: Some(on_done),
                finished: false,
                stash: None,
            },
        }
    }
}

impl<B, F: FnOnce(TapOutcome)> std::fmt::Debug for UsageTap<B, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageTap")
            .field("finished", &self.state.finished)
            .finish_non_exhaustive()
    }
}

fn concat(a: Bytes, b: Bytes) -> Bytes {
    if a.is_empty() {
        return b;
    }
    if b.is_empty() {
        return a;
    }
    let mut out = BytesMut::with_capacity(a.len() + b.len());
    out.extend_from_slice(&a);
    out.extend_from_slice(&b);
    out.freeze()
}

impl<B, F> Body for UsageTap<B, F>
where
    B: Body<Data = Bytes>,
    F: FnOnce(TapOutcome),
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let state = this.state;
        if let Some(frame) = state.stash.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if state.finished {
            return Poll::Ready(None);
        }
        loop {
            let frame = match this.inner.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(frame) => frame,
            };
            let frame = match frame {
                None => {
                    let rest = state.collector.flush();
                    state.fire(true);
                    return Poll::Ready((!rest.is_empty()).then(|| Ok(Frame::data(rest))));
                }
                Some(Err(e)) => {
                    state.fire_outcome(false, true);
                    return Poll::Ready(Some(Err(e)));
                }
                Some(Ok(frame)) => frame,
            };
            match frame.into_data() {
                Ok(data) => {
                    let mut out = state.collector.chunk(data);
                    if this.inner.is_end_stream() {
                        out = concat(out, state.collector.flush());
                        state.fire(true);
                    }
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                    if state.finished {
                        return Poll::Ready(None);
                    }
                }
                Err(frame) => {
                    // Trailers: the data is over, so release what is held ahead of them.
                    let rest = state.collector.flush();
                    if rest.is_empty() {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    state.stash = Some(frame);
                    return Poll::Ready(Some(Ok(Frame::data(rest))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state.finished && self.state.stash.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.state.finished {
            SizeHint::with_exact(0)
        } else if self.state.collector.rewrites() {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}
