//! The per-provider delay queue: a FIFO turnstile, a bounded waiting count, and a wake-up
//! for releases.
//!
//! Calls that must wait take a ticket (bounded by `max_queue`), then queue on a fair
//! `tokio::sync::Mutex`; the holder is the head of the queue and sleeps until its named
//! time (or a release), re-checks, and passes the turnstile on when admitted or refused.
//! Dropping a waiting future drops its ticket and its place: nothing was reserved.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, MutexGuard, Notify};

use crate::quota::clock::Micros;

/// One provider's queue.
#[derive(Debug, Default)]
pub(crate) struct DelayQueue {
    turnstile: Mutex<()>,
    waiting: AtomicUsize,
    released: Notify,
}

/// A place in the queue; leaving (by drop) frees it.
#[derive(Debug)]
pub(crate) struct Ticket<'a> {
    queue: &'a DelayQueue,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.queue.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl DelayQueue {
    /// Calls waiting now.
    pub fn len(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// A ticket, unless `max` calls already wait.
    pub fn join(&self, max: usize) -> Option<Ticket<'_>> {
        self.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Ticket { queue: self })
    }

    /// Waits to become the head of the queue (FIFO).
    pub fn head(&self) -> impl Future<Output = MutexGuard<'_, ()>> + '_ {
        self.turnstile.lock()
    }

    /// Wakes the head to re-check (a call ended or was refunded). If nobody waits, the
    /// wake-up is kept for the next head, which then re-checks once for nothing.
    pub fn wake(&self) {
        self.released.notify_one();
    }

    /// Sleeps `for_us` µs, or until [`DelayQueue::wake`] is called.
    pub async fn sleep(&self, for_us: Micros) {
        let sleep = tokio::time::sleep(Duration::from_micros(for_us.max(1)));
        tokio::select! {
            _ = sleep => {}
            _ = self.released.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_are_bounded_and_returned() {
        let q = DelayQueue::default();
        let a = q.join(2);
        let b = q.join(2);
        assert!(a.is_some() && b.is_some());
        assert!(q.join(2).is_none());
        assert_eq!(q.len(), 2);
        drop(a);
        assert_eq!(q.len(), 1);
        assert!(q.join(2).is_some());
        assert_eq!(q.len(), 1);
        drop(b);
        assert_eq!(q.len(), 0);
        assert!(q.join(0).is_none());
    }
}
