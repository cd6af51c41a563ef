//! HTTP/1.1 serving, with idle keep-alive connections parked.
//!
//! A hyper HTTP/1 connection keeps an 8 KiB read buffer, an 8 KiB write buffer, its timer and
//! its state for as long as it lives, so an idle keep-alive client would cost about 25 KiB.
//! Instead a connection is served in segments: a hyper connection serves requests until the
//! client has sent none for [`PARK_AFTER`] to twice that with no response open; then it is
//! shut down gracefully *without* closing the socket (hyper hands the stream and any bytes read
//! ahead back), and the stream waits for its next request with no buffer at all. The next
//! request head starts a new segment. Responses are never changed by this: hyper is only
//! asked to stop while it is idle, so no response gets a `Connection: close`.
//!
//! Without hyper's upgrade machinery, a CONNECT's tunnel is handed the raw stream here (the
//! job waits in [`ConnInfo::handoff`] until the 200 is written).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{read_head, refuse_head, Rewind, Sniff};
use crate::proxy::{self, Body, BoxError, ConnInfo, Shared};

/// How long a keep-alive connection must carry no request before it is parked (it is parked
/// after between one and two of these).
pub const PARK_AFTER: Duration = Duration::from_millis(250);

/// Serves HTTP/1.1 on `io` (after `prefix`, bytes already read) until the client closes, an
/// error, a CONNECT tunnel ends, or shutdown.
pub async fn serve<I>(mut io: I, mut prefix: Bytes, conn: Arc<ConnInfo>, shared: Arc<Shared>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    loop {
        // Boxed: a parked connection's task then holds no room for a hyper connection.
        let (parked, rest) = match Box::pin(segment(io, prefix, &conn, &shared, &activity)).await {
            Some(parked) => parked,
            None => return,
        };
        io = parked;
        let config = shared.runtime.load().config.clone();
        // hyper's header_read_timeout is also its keep-alive idle limit; a parked connection
        // keeps the same limit, counted from when it went quiet.
        let wait = config.proxy.header_read_timeout.saturating_sub(PARK_AFTER);
        let mut shutdown = shared.shutdown.clone();
        let head = tokio::select! {
            head = read_head(&mut io, rest, wait, config.proxy.max_header_bytes, true) => head,
            _ = proxy::stopped(&mut shutdown) => None,
        };
        match head {
            Some((buf, Sniff::Http1)) => prefix = buf.freeze(),
            Some((buf, other)) => return refuse_head(Rewind::new(buf.freeze(), io), other).await,
            None => return close(io, &conn).await,
        }
    }
}

/// Requests seen and responses not yet finished on one client connection.
#[derive(Default)]
struct Activity {
    requests: AtomicU64,
    open: AtomicUsize,
}

/// Counts a response open from its request until hyper drops its body.
struct Open(Arc<Activity>);

impl Open {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.requests.fetch_add(1, Ordering::Relaxed);
        activity.open.fetch_add(1, Ordering::Relaxed);
        Open(activity.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The response body with its [`Open`] count.
struct Tracked {
    inner: Body,
    _open: Open,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

type Served = Pin<Box<dyn Future<Output = Result<Response<Tracked>, Infallible>> + Send>>;

/// One hyper connection's life on the stream. `Some` when it was parked: the stream and the
/// bytes read ahead of the next request.
async fn segment<I>(
    io: I,
    prefix: Bytes,
    conn: &Arc<ConnInfo>,
    shared: &Arc<Shared>,
    activity: &Arc<Activity>,
) -> Option<(I, BytesMut)>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = shared.runtime.load().config.clone();
    let (shared2, conn2, activity2) = (shared.clone(), conn.clone(), activity.clone());
    let service = service_fn(move |req: Request<Incoming>| -> Served {
        let open = Open::start(&activity2);
        let (shared, conn) = (shared2.clone(), conn2.clone());
        // The pipeline's future is created inside the box, not moved into it: it is several
        // KiB, and copying it twice per request was a sixth of a request's instructions.
        Box::pin(async move {
            let resp = proxy::handle(shared, conn, req).await?;
            Ok(resp.map(|inner| Tracked { inner, _open: open }))
        })
    });
    // A head that stalls inside a segment is cut off by parking: with no request finished for
    // one to two PARK_AFTERs and no response open, the segment parks, and the parked wait
    // takes the rest of header_read_timeout (counted from when the connection went quiet, so
    // never later than hyper's own timer would fire). hyper's timer costs an allocation and a
    // timer registration per request, so it only runs when the limit is shorter than parking.
    let hyper_timeout = (config.proxy.header_read_timeout < 2 * PARK_AFTER)
        .then_some(config.proxy.header_read_timeout);
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(hyper_timeout)
        .max_buf_size(config.proxy.max_header_bytes.max(8192))
        // hyper's default header count (100, as the first-head check uses): any other value
        // makes hyper allocate and fill a header array on every request.
        .keep_alive(true)
        .writev(false);
    let mut http = Box::new(b.serve_connection(TokioIo::new(Rewind::new(prefix, io)), service));

    let mut shutdown = shared.shutdown.clone();
    let stop = proxy::stopped(&mut shutdown);
    tokio::pin!(stop);
    let tick = tokio::time::sleep(PARK_AFTER);
    tokio::pin!(tick);
    // The tick is first polled (and so registered with the timer) once no response is open:
    // a connection that closes after its one response (`Connection: close`) never registers
    // it. A timer due before the runtime's next wake-up costs a wake of the I/O driver (a
    // system call), which a connection per request paid every time.
    let mut armed = false;
    let mut seen = activity.requests.load(Ordering::Relaxed);
    let mut state = State::Serving;
    let mut side = SideWake::default();
    let result = std::future::poll_fn(|cx| loop {
        if let Poll::Ready(r) = http.poll_without_shutdown(cx) {
            return Poll::Ready(r);
        }
        match state {
            State::Serving => {
                let idle = || activity.open.load(Ordering::Relaxed) == 0;
                let waker = match side.due(cx) {
                    Some(w) => w,
                    None if !armed && idle() => side.waker(cx),
                    None => return Poll::Pending,
                };
                let mut side_cx = Context::from_waker(waker);
                if stop.as_mut().poll(&mut side_cx).is_ready() {
                    state = State::Closing;
                    Pin::new(&mut *http).graceful_shutdown();
                    continue;
                }
                if !armed && !idle() {
                    // A response is open: parking cannot happen before it ends, and its
                    // end (inside hyper's poll, on this task) arms the tick.
                    return Poll::Pending;
                }
                armed = true;
                if tick.as_mut().poll(&mut side_cx).is_ready() {
                    let now = activity.requests.load(Ordering::Relaxed);
                    if now == seen && activity.open.load(Ordering::Relaxed) == 0 {
                        state = State::Parking;
                        Pin::new(&mut *http).graceful_shutdown();
                        continue;
                    }
                    seen = now;
                    tick.as_mut()
                        .reset(tokio::time::Instant::now() + PARK_AFTER);
                    // The reset tick registers its new deadline when next polled.
                    side.rearm();
                    continue;
                }
            }
            // Asked to stop while idle, it did not finish at once: it was not idle after all
            // (a response still flushing, a body still draining). It closes when done, as any
            // connection told to stop.
            State::Parking => state = State::Closing,
            State::Closing => {}
        }
        return Poll::Pending;
    })
    .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
        return None;
    }
    let parts = http.into_parts();
    let (rest, io) = parts.io.into_inner().into_parts();
    let mut ahead = BytesMut::from(&parts.read_buf[..]);
    ahead.extend_from_slice(&rest);
    if let Some(job) = conn.handoff.take() {
        job(Box::new(Rewind::new(ahead.freeze(), io))).await;
        return None;
    }
    if state == State::Parking {
        metrics::counter!("quota_proxy_connections_parked_total").increment(1);
        return Some((io, ahead));
    }
    close(io, conn).await;
    None
}

/// The waker the segment's side futures (shutdown, the park tick) are polled with: it notes
/// that one of them woke the task, so the many wakes hyper's own I/O causes (several per
/// request) do not poll them again.
#[derive(Default)]
struct SideWake {
    /// The task's waker wrapped, and the flag it sets; `None` before the first poll.
    current: Option<(Arc<SideFlag>, Waker)>,
}

struct SideFlag {
    due: AtomicBool,
    task: Waker,
}

impl Wake for SideFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.due.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

impl SideWake {
    /// The waker to poll the side futures with, if they are due a poll: on the first poll,
    /// when the task's waker changed, or after one of them woke the task.
    fn due(&mut self, cx: &Context<'_>) -> Option<&Waker> {
        let fresh = self.follow(cx);
        let (flag, waker) = self.current.as_ref()?;
        (fresh || flag.due.swap(false, Ordering::AcqRel)).then_some(waker)
    }

    /// The waker to poll the side futures with, due or not.
    fn waker(&mut self, cx: &Context<'_>) -> &Waker {
        self.follow(cx);
        &self.current.get_or_insert_with(|| SideWake::wrap(cx)).1
    }

    /// Wraps the task's waker anew on the first poll or when it changed; `true` then.
    fn follow(&mut self, cx: &Context<'_>) -> bool {
        let fresh = !matches!(&self.current, Some((flag, _)) if flag.task.will_wake(cx.waker()));
        if fresh {
            self.current = Some(SideWake::wrap(cx));
        }
        fresh
    }

    fn wrap(cx: &Context<'_>) -> (Arc<SideFlag>, Waker) {
        let flag = Arc::new(SideFlag {
            due: AtomicBool::new(false),
            task: cx.waker().clone(),
        });
        (flag.clone(), Waker::from(flag))
    }

    /// Has the side futures polled at the next chance.
    fn rearm(&self) {
        if let Some((flag, _)) = &self.current {
            flag.due.store(true, Ordering::Release);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Serving,
    /// Told to stop because it looked idle; parked if it stops in the same poll.
    Parking,
    /// Told to stop (shutdown, or parking found it busy): the stream closes after.
    Closing,
}

/// Ends the stream: a TLS stream sends its close_notify and a write shutdown (as hyper
/// would); a plain TCP stream is just closed, which sends the same FIN after any data still
/// unsent (a `shutdown` first would be one more system call per connection, and changes
/// nothing when the close follows at once).
async fn close<I: AsyncWrite + Unpin>(mut io: I, conn: &ConnInfo) {
    if conn.intercepted.as_ref().is_some_and(|i| i.tls) {
        let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
    }
}
