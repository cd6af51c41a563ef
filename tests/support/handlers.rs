//! Handlers for mock upstreams: fixed replies, echo, SSE streams, slow and hanging upstreams.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use super::upstream::{HandlerFuture, Recorded};

/// The body type mock handlers answer with.
pub type MockBody = BoxBody<Bytes, Infallible>;

/// A request handler: gets the recorded request, returns the response.
pub type Handler = Arc<dyn Fn(Recorded) -> HandlerFuture + Send + Sync>;

/// Wraps an async closure as a [`Handler`].
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Recorded) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<MockBody>> + Send + 'static,
{
    Arc::new(move |r| Box::pin(f(r)))
}

/// A complete body.
pub fn full(body: impl Into<Bytes>) -> MockBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Builds a response with `status`, `headers` and a complete `body`.
pub fn response(
    status: u16,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Response<MockBody> {
    let mut b = Response::builder().status(StatusCode::from_u16(status).expect("status"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(full(body)).expect("response")
}

/// Always answers `status` with `headers` and `body`.
pub fn fixed(status: u16, headers: &[(&str, &str)], body: &str) -> Handler {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let body = Bytes::copy_from_slice(body.as_bytes());
    handler(move |_| {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let resp = response(status, &h, body.clone());
        async move { resp }
    })
}

/// 200 with the request body echoed back; `x-echo-method`, `x-echo-uri` (path and query) and
/// `x-echo-version` describe the request, and its content-type is copied.
pub fn echo() -> Handler {
    handler(|r: Recorded| async move {
        let mut b = Response::builder()
            .status(200)
            .header("x-echo-method", r.method.as_str())
            .header("x-echo-uri", r.path_and_query())
            .header("x-echo-version", format!("{:?}", r.version));
        if let Some(ct) = r.headers.get("content-type") {
            b = b.header("content-type", ct);
        }
        b.body(full(r.body.clone())).expect("echo response")
    })
}

/// Sleeps `delay` (the upstream's own slowness) and then runs `inner`.
pub fn slow(delay: Duration, inner: Handler) -> Handler {
    handler(move |r| {
        let inner = inner.clone();
        async move {
            tokio::time::sleep(delay).await;
            inner(r).await
        }
    })
}

/// Never answers.
pub fn hang() -> Handler {
    handler(|_| std::future::pending())
}

/// Dispatches on path prefix (first match wins), else `fallback`.
pub fn by_path(routes: Vec<(&'static str, Handler)>, fallback: Handler) -> Handler {
    Arc::new(move |r: Recorded| {
        let path = r.uri.path().to_string();
        for (prefix, h) in &routes {
            if path.starts_with(prefix) {
                return h(r);
            }
        }
        fallback(r)
    })
}

/// The text of SSE event `k` as the SSE handlers send it.
pub fn sse_event(k: usize) -> String {
    format!("data: {{\"n\":{k}}}\n\n")
}

/// A body fed from a channel: each message is one frame, sent as soon as it is produced.
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .rx
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// A streaming response: returns the response and the sender feeding its body.
pub fn streaming_response(
    status: u16,
    headers: &[(&str, &str)],
) -> (Response<MockBody>, mpsc::Sender<Bytes>) {
    let (tx, rx) = mpsc::channel(16);
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    (
        b.body(ChannelBody { rx }.boxed())
            .expect("streaming response"),
        tx,
    )
}

const SSE_HEADERS: &[(&str, &str)] = &[
    ("content-type", "text/event-stream"),
    ("cache-control", "no-cache"),
];

/// An SSE stream of `n` events ([`sse_event`]), the first at once and each next after `gap`.
pub fn sse(n: usize, gap: Duration) -> Handler {
    handler(move |_| async move {
        let (resp, tx) = streaming_response(200, SSE_HEADERS);
        tokio::spawn(async move {
            for k in 0..n {
                if k > 0 {
                    tokio::time::sleep(gap).await;
                }
                if tx.send(Bytes::from(sse_event(k))).await.is_err() {
                    return;
                }
            }
        });
        resp
    })
}

/// Controls an [`sse_gated`] stream: the upstream sends event 0 at once, and event k+1 only
/// after the test calls `release` (typically after it received event k through the proxy).
#[derive(Clone)]
pub struct SseGate {
    permits: Arc<Semaphore>,
    sent: Arc<Mutex<Vec<Instant>>>,
}

impl SseGate {
    /// Lets the upstream send one more event.
    pub fn release(&self) {
        self.permits.add_permits(1);
    }

    /// How many events the upstream has handed to its connection so far.
    pub fn sent(&self) -> usize {
        self.sent.lock().expect("sent lock").len()
    }

    /// When the upstream handed each event to its connection.
    pub fn sent_at(&self) -> Vec<Instant> {
        self.sent.lock().expect("sent lock").clone()
    }
}

/// An SSE stream of `n` events where each event after the first waits for [`SseGate::release`].
pub fn sse_gated(n: usize) -> (Handler, SseGate) {
    let gate = SseGate {
        permits: Arc::new(Semaphore::new(0)),
        sent: Arc::default(),
    };
    let g = gate.clone();
    let h = handler(move |_| {
        let g = g.clone();
        async move {
            let (resp, tx) = streaming_response(200, SSE_HEADERS);
            tokio::spawn(async move {
                for k in 0..n {
                    if k > 0 {
                        match g.permits.acquire().await {
                            Ok(p) => p.forget(),
                            Err(_) => return,
                        }
                    }
                    g.sent.lock().expect("sent lock").push(Instant::now());
                    if tx.send(Bytes::from(sse_event(k))).await.is_err() {
                        return;
                    }
                }
            });
            resp
        }
    });
    (h, gate)
}

/// Holds a [`gated`] handler's responses until the test opens the gate.
#[derive(Clone)]
pub struct Gate {
    permits: Arc<Semaphore>,
}

impl Gate {
    /// Lets one waiting (or future) request answer.
    pub fn release(&self) {
        self.permits.add_permits(1);
    }

    /// Lets every request answer from now on.
    pub fn open(&self) {
        self.permits.add_permits(Semaphore::MAX_PERMITS / 2);
    }
}

/// Runs `inner` only once the test releases the gate (an upstream that is slow for exactly as
/// long as the test wants, with no timing guesses).
pub fn gated(inner: Handler) -> (Handler, Gate) {
    let gate = Gate {
        permits: Arc::new(Semaphore::new(0)),
    };
    let g = gate.clone();
    let h = handler(move |r| {
        let (g, inner) = (g.clone(), inner.clone());
        async move {
            if let Ok(p) = g.permits.acquire().await {
                p.forget();
            }
            inner(r).await
        }
    });
    (h, gate)
}
