//! A [`Reservation`]: what one admitted call holds in which limits, until it is settled.
//!
//! It is an owned value with no borrow of the state, so it can travel with the request and
//! be settled later (or cancelled). Its item list comes from a pool kept by the provider
//! state and goes back there on settle, so steady-state admission does not allocate and a
//! reservation stays small to move.

use crate::quota::clock::Micros;
use crate::quota::unit::{Costs, Unit};
use crate::quota::verdict::Verdict;

/// One limit+scope's part of a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Item {
    /// Slot (limit + scope id) in the provider state of `Reservation::generation`.
    pub slot: u32,
    /// Units reserved.
    pub cost: f64,
    /// Where it landed: rolling bucket id or calendar period start.
    pub tag: u64,
    /// Client-share group charged, or `NO_GROUP`.
    pub group: u32,
}

/// Marks an item that is not counted in a share book.
pub(crate) const NO_GROUP: u32 = u32::MAX;

/// What an admitted call reserved, for [`settle`](crate::quota::ProviderState::settle)
/// or [`cancel`](crate::quota::ProviderState::cancel).
///
/// Dropping a reservation without settling it leaves the estimate counted and any
/// concurrency held; the engine's [`Permit`](crate::quota::Permit) never does that.
#[derive(Debug, Clone)]
#[must_use = "a reservation must be settled or cancelled"]
pub struct Reservation {
    pub(crate) state_id: u64,
    pub(crate) generation: u64,
    /// What each limit+scope holds: the estimate in that limit's unit (the estimate
    /// itself is not kept; settling "at the estimate" keeps each item as it is).
    pub(crate) items: Vec<Item>,
    pub(crate) admitted_at: Micros,
    pub(crate) shadow_verdict: Option<Box<Verdict>>,
    /// Before this time sending moves nothing (see
    /// [`restamp`](crate::quota::ProviderState::restamp)): the end of the newest bucket a
    /// rolling-window item landed in; `Micros::MAX` when it holds none.
    pub(crate) restamp_after: Micros,
    /// Shared mode: what the reservation holds in Redis.
    pub(crate) shared: Option<Box<crate::quota::shared::Ticket>>,
}

impl Reservation {
    pub(crate) fn new(state_id: u64, generation: u64, items: Vec<Item>, now: Micros) -> Self {
        Self {
            state_id,
            generation,
            items,
            admitted_at: now,
            shadow_verdict: None,
            restamp_after: Micros::MAX,
            shared: None,
        }
    }

    /// When it was admitted.
    pub fn admitted_at(&self) -> Micros {
        self.admitted_at
    }

    /// Number of limit+scope counters it holds.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no limit applied to the call.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// In shadow mode: what would have happened had the provider enforced (`None` when the
    /// call fit, or outside shadow mode).
    pub fn shadow_verdict(&self) -> Option<&Verdict> {
        self.shadow_verdict.as_deref()
    }
}

/// What a reservation is settled to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Settled<'a> {
    /// The call's actual costs, read from its response.
    Actual(&'a Costs),
    /// What was reserved: the call was sent and its cost is unknown.
    Estimate,
    /// Nothing: the call was never sent, and everything is refunded.
    Nothing,
}

impl Settled<'_> {
    /// What a limit counting `unit` ends up holding for an item that reserved `reserved`.
    #[inline]
    pub(crate) fn amount(self, unit: Unit, reserved: f64) -> f64 {
        match self {
            Settled::Actual(c) => c.get(unit),
            Settled::Estimate => reserved,
            Settled::Nothing => 0.0,
        }
    }
}
