//! Request bodies: buffered (up to a limit) when the pipeline needs them whole — to estimate
//! tokens, inject a key into JSON, or replay a retry — else streamed untouched. A body larger
//! than the limit streams on: its first bytes, then the rest, never all held in memory.

use bytes::{Bytes, BytesMut};
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use super::{Body, BoxError, ProxyError};

/// A request body after buffering.
pub enum RequestBody {
    /// The whole body (can be replayed).
    Whole(Bytes),
    /// The first bytes read, then the rest of the stream (cannot be replayed).
    Partial { head: Bytes, rest: Incoming },
}

impl RequestBody {
    /// The whole body, if it was small enough.
    pub fn whole(&self) -> Option<&Bytes> {
        match self {
            RequestBody::Whole(b) => Some(b),
            RequestBody::Partial { .. } => None,
        }
    }

    /// A body to send (clones the bytes of a whole body; consumes a partial one).
    pub fn into_body(self) -> Body {
        match self {
            // An empty body is a zero-sized one, so boxing it allocates nothing.
            RequestBody::Whole(b) if b.is_empty() => super::error::empty(),
            RequestBody::Whole(b) => Full::new(b).map_err(|never| match never {}).boxed(),
            RequestBody::Partial { head, rest } => {
                let rest = rest.map_err(|e| Box::new(e) as BoxError);
                Chain {
                    head: Some(head),
                    rest,
                }
                .boxed()
            }
        }
    }
}

/// Reads `body` until it ends or `limit` bytes are held.
pub async fn buffer(mut body: Incoming, limit: usize) -> Result<RequestBody, ProxyError> {
    if body.is_end_stream() {
        return Ok(RequestBody::Whole(Bytes::new()));
    }
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ProxyError::BadRequest(format!("reading the request body failed: {e}")))?;
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() > limit {
                return Ok(RequestBody::Partial {
                    head: buf.freeze(),
                    rest: body,
                });
            }
        }
    }
    Ok(RequestBody::Whole(buf.freeze()))
}

pin_project_lite::pin_project! {
    /// Yields `head` as one data frame, then every frame of `rest`.
    struct Chain<R> {
        head: Option<Bytes>,
        #[pin]
        rest: R,
    }
}

impl<R> http_body::Body for Chain<R>
where
    R: http_body::Body<Data = Bytes, Error = BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Some(head) = this.head.take() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(head))));
        }
        this.rest.poll_frame(cx)
    }
}

/// An upstream response's body on the metered path: streamed on from the upstream, or read
/// whole (a small error body, kept for its signals). One type for both, so the usage tap
/// wraps either in place and the response is boxed once.
pub enum ResponseBody {
    Streamed(Incoming),
    Read(Full<Bytes>),
}

impl From<Bytes> for ResponseBody {
    fn from(bytes: Bytes) -> Self {
        ResponseBody::Read(Full::new(bytes))
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        // Both bodies are Unpin.
        match self.get_mut() {
            ResponseBody::Streamed(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map_err(|e| Box::new(e) as BoxError),
            ResponseBody::Read(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Streamed(b) => b.is_end_stream(),
            ResponseBody::Read(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            ResponseBody::Streamed(b) => b.size_hint(),
            ResponseBody::Read(b) => b.size_hint(),
        }
    }
}
