//! Timeouts on reused timers: one per client connection for its upstream calls, a few for
//! the Redis backend's calls.
//!
//! `tokio::time::timeout` registers a timer in the runtime's wheel when a call starts and
//! removes it when the answer comes: a locked wheel insertion and removal per call (about 300
//! instructions, and up to 1% of a kept-alive request's CPU at an even load). When the new
//! timer is due before the one the runtime is parked for, tokio also wakes its I/O driver
//! through its event fd: one more `write` and one more `epoll_wait` return for a call that
//! starts while the runtime's next timer is further off (every Redis admission at a low rate,
//! measured with `perf record -e syscalls:sys_enter_write`). Calls that run one after another
//! share one [`Sleep`]: each moves its deadline later, which tokio does without touching the
//! wheel or the driver (the entry is re-filed only when its old deadline comes). Calls that
//! overlap take a timer of their own; a slot keeps up to a set number of spares.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Spare timers for calls under a timeout, reused by the calls that follow.
#[derive(Debug)]
pub struct TimerSlot {
    spares: Mutex<Vec<Pin<Box<Sleep>>>>,
    keep: usize,
}

impl Default for TimerSlot {
    /// A slot for calls that mostly run one at a time (a client connection's requests).
    fn default() -> Self {
        Self::keeping(1)
    }
}

impl TimerSlot {
    /// A slot that keeps up to `keep` spare timers, for up to that many overlapping calls.
    pub fn keeping(keep: usize) -> Self {
        Self {
            spares: Mutex::new(Vec::with_capacity(keep)),
            keep,
        }
    }

    /// Runs `fut` for at most `limit`: resolves to `None` when the limit passed first.
    /// (Inlined: the request future is then built in place, not copied in.)
    #[inline(always)]
    pub fn timeout<F: Future>(&self, limit: Duration, fut: F) -> Timeout<'_, F> {
        let deadline = Instant::now() + limit;
        let spare = self.lock().pop();
        let sleep = match spare {
            Some(mut s) => {
                s.as_mut().reset(deadline);
                s
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        Timeout {
            fut,
            sleep: Some(sleep),
            slot: self,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Pin<Box<Sleep>>>> {
        self.spares.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn give_back(&self, sleep: Pin<Box<Sleep>>) {
        let mut spares = self.lock();
        if spares.len() < self.keep {
            spares.push(sleep);
        }
    }
}

pin_project_lite::pin_project! {
    /// [`TimerSlot::timeout`]'s future. Its timer goes back to the slot when it is dropped,
    /// answered or not, for the next call.
    pub struct Timeout<'a, F> {
        #[pin]
        fut: F,
        sleep: Option<Pin<Box<Sleep>>>,
        slot: &'a TimerSlot,
    }

    impl<F> PinnedDrop for Timeout<'_, F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(sleep) = this.sleep.take() {
                this.slot.give_back(sleep);
            }
        }
    }
}

impl<F: Future> Future for Timeout<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            return Poll::Ready(Some(v));
        }
        match this.sleep.as_mut() {
            Some(sleep) => sleep.as_mut().poll(cx).map(|()| None),
            None => Poll::Ready(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_answer_in_time_is_returned_and_a_late_one_is_cut_off() {
        let slot = TimerSlot::default();
        let quick = slot
            .timeout(Duration::from_secs(5), async {
                tokio::time::sleep(Duration::from_secs(4)).await;
                "answer"
            })
            .await;
        assert_eq!(quick, Some("answer"));
        // The same timer, moved 5 s past the next start: it must not fire at the first
        // request's deadline (1 s from now).
        let started = Instant::now();
        let slow = slot
            .timeout(Duration::from_secs(5), std::future::pending::<()>())
            .await;
        assert_eq!(slow, None);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_limit_after_a_longer_one_still_fires_on_time() {
        let slot = TimerSlot::default();
        assert_eq!(
            slot.timeout(Duration::from_secs(60), async { 1 }).await,
            Some(1)
        );
        let started = Instant::now();
        let cut = slot
            .timeout(Duration::from_secs(2), std::future::pending::<()>())
            .await;
        assert_eq!(cut, None);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_request_gives_its_timer_back() {
        let slot = TimerSlot::default();
        drop(slot.timeout(Duration::from_secs(1), std::future::pending::<()>()));
        assert_eq!(
            slot.lock().len(),
            1,
            "the timer is kept for the next request"
        );
        let started = Instant::now();
        let cut = slot
            .timeout(Duration::from_secs(3), std::future::pending::<()>())
            .await;
        assert_eq!(cut, None);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn overlapping_requests_each_keep_their_own_deadline() {
        let slot = TimerSlot::default();
        let started = Instant::now();
        let long = slot.timeout(Duration::from_secs(10), std::future::pending::<()>());
        let short = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            slot.timeout(Duration::from_secs(3), std::future::pending::<()>())
                .await
        };
        let (long, short) = tokio::join!(
            async {
                let r = long.await;
                (r, started.elapsed())
            },
            async {
                let r = short.await;
                (r, started.elapsed())
            }
        );
        assert_eq!(long, (None, Duration::from_secs(10)));
        assert_eq!(short, (None, Duration::from_secs(4)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_keeps_as_many_spares_as_it_was_given_and_no_more() {
        let slot = TimerSlot::keeping(2);
        let calls: Vec<_> = (0..3)
            .map(|_| slot.timeout(Duration::from_secs(1), std::future::pending::<()>()))
            .collect();
        assert_eq!(
            slot.lock().len(),
            0,
            "each overlapping call has a timer of its own"
        );
        drop(calls);
        assert_eq!(slot.lock().len(), 2, "two kept, the third dropped");
        // Both spares serve again, each with the new deadline.
        let started = Instant::now();
        let (a, b) = tokio::join!(
            slot.timeout(Duration::from_secs(2), std::future::pending::<()>()),
            slot.timeout(Duration::from_secs(3), std::future::pending::<()>())
        );
        assert_eq!((a, b), (None, None));
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert_eq!(slot.lock().len(), 2);
    }
}
