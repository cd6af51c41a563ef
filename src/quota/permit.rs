//! What the engine hands back: a [`Permit`] to send the call, or a [`Refusal`].

use std::sync::Arc;

use crate::quota::clock::Micros;
use crate::quota::provider::ProviderHandle;
use crate::quota::reservation::{Reservation, Settled};
use crate::quota::spec::Scope;
use crate::quota::unit::Costs;
use crate::quota::verdict::{TooLarge, Verdict};

/// Why a call was not admitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// No provider of that name is configured.
    #[error("no provider named {0:?}")]
    UnknownProvider(String),
    /// A limit has no room within the allowed delay (or the action is `reject`).
    #[error("limit {limit:?} ({scope} {scope_id:?}) has no room; retry after {retry_after} µs")]
    Limited {
        /// The binding limit.
        limit: String,
        /// Its scope.
        scope: Scope,
        /// Its scope id.
        scope_id: String,
        /// From the real state: when it would fit (a full concurrency limit, whose time is
        /// unknown, says at least 1 s).
        retry_after: Micros,
    },
    /// The cost exceeds what the limit could ever give (`request_too_large`, no retry).
    #[error("cost {} exceeds limit {:?} (at most {} of {})", .0.cost, .0.limit, .0.cap, .0.amount)]
    TooLarge(TooLarge),
    /// The shared quota backend cannot be asked and `on_backend_error = "deny"`.
    #[error("the shared quota backend is unreachable")]
    BackendDown,
    /// `max_queue` calls already wait for this provider.
    #[error("{max_queue} calls already wait for this provider")]
    QueueFull {
        /// The configured bound.
        max_queue: usize,
    },
}

impl Refusal {
    /// The retry-after to send, if any.
    pub fn retry_after(&self) -> Option<Micros> {
        match self {
            Refusal::Limited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

/// Leave to send one admitted call.
///
/// The reservation is settled exactly once:
/// - [`Permit::settle`] with the actual costs read from the response;
/// - [`Permit::cancel`], or dropping the permit before [`Permit::mark_sent`]: nothing was
///   sent, so everything is refunded (error, timeout, client gone before forwarding);
/// - dropping it after `mark_sent` (the upstream got the call but its cost is unknown, e.g.
///   the client disconnected mid-stream): settled at the estimate.
///
/// Every path releases concurrency and wakes the provider's queue.
#[derive(Debug)]
#[must_use = "dropping a permit refunds the call"]
pub struct Permit {
    pub(crate) handle: Arc<ProviderHandle>,
    pub(crate) reservation: Option<Reservation>,
    pub(crate) delayed: Micros,
    pub(crate) sent: bool,
    pub(crate) key: Option<usize>,
}

impl Permit {
    /// The limit with the least room after this call as the shared backend counted it
    /// (every replica's usage), or `None` when the call was not decided by Redis; the
    /// `RateLimit` headers then come from the local counters.
    pub fn shared_headroom(&self, now: Micros) -> Option<crate::quota::Headroom> {
        self.reservation.as_ref()?.shared.as_ref()?.tightest(now)
    }

    pub(crate) fn new(
        handle: Arc<ProviderHandle>,
        reservation: Reservation,
        delayed: Micros,
    ) -> Self {
        Self {
            handle,
            reservation: Some(reservation),
            delayed,
            sent: false,
            key: None,
        }
    }

    pub(crate) fn with_key(mut self, key: Option<usize>) -> Self {
        self.key = key;
        self
    }

    /// The index of the key option chosen, when the demand offered alternatives.
    pub fn key(&self) -> Option<usize> {
        self.key
    }

    /// How long the call waited in the queue.
    pub fn delayed(&self) -> Micros {
        self.delayed
    }

    /// The provider's name.
    pub fn provider(&self) -> &str {
        self.handle.name()
    }

    /// In shadow mode, the refusal that enforcement would have made.
    pub fn shadow_verdict(&self) -> Option<&Verdict> {
        self.reservation
            .as_ref()
            .and_then(Reservation::shadow_verdict)
    }

    /// The call reached the upstream: from now on dropping the permit keeps the estimate.
    pub fn mark_sent(&mut self) {
        self.sent = true;
    }

    /// The call is about to go out, at `now` (it waited for a new upstream connection since
    /// its admission, say): the provider's rolling windows count it from `now`, as the
    /// upstream will (see [`ProviderState::restamp`](crate::quota::ProviderState::restamp)).
    pub fn restamp(&mut self, now: Micros) {
        if let Some(r) = self.reservation.as_mut() {
            self.handle.restamp(r, now);
        }
    }

    /// Whether [`Permit::mark_sent`] was called.
    pub fn is_sent(&self) -> bool {
        self.sent
    }

    /// Settles to the actual costs.
    pub fn settle(mut self, actual: &Costs) {
        if let Some(r) = self.reservation.take() {
            self.handle.settle(r, Settled::Actual(actual));
        }
    }

    /// Nothing was sent: refunds everything.
    pub fn cancel(mut self) {
        if let Some(r) = self.reservation.take() {
            self.handle.settle(r, Settled::Nothing);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(r) = self.reservation.take() {
            let how = if self.sent {
                Settled::Estimate
            } else {
                Settled::Nothing
            };
            self.handle.settle(r, how);
        }
    }
}
