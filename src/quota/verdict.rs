//! The answers of an admission decision: admitted, wait until, or too large.

use crate::quota::clock::Micros;
use crate::quota::reservation::Reservation;
use crate::quota::spec::Scope;

/// The result of [`ProviderState::try_admit`](crate::quota::ProviderState::try_admit).
#[derive(Debug)]
#[must_use]
pub enum Admission {
    /// Reserved in every applicable limit (all or nothing). In shadow mode this is always
    /// the answer; see [`Reservation::shadow_verdict`].
    Admitted(Reservation),
    /// Nothing reserved; it would fit at `until`.
    Wait(Wait),
    /// Nothing reserved; it can never fit.
    TooLarge(TooLarge),
}

/// When a call that does not fit now would fit, and the limit that binds latest.
#[derive(Debug, Clone, PartialEq)]
pub struct Wait {
    /// The earliest time at which every time-based limit would fit (max over limits).
    pub until: Micros,
    /// A concurrency limit is full: it fits only once a call in flight is released, at
    /// `until` at the earliest.
    pub on_release: bool,
    /// The binding limit's name (a full concurrency limit binds first).
    pub limit: String,
    /// Its scope.
    pub scope: Scope,
    /// Its scope id (`""` for the provider).
    pub scope_id: String,
}

/// A call whose cost exceeds the most a limit could ever give it.
///
/// That is the limit's whole capacity (`amount`, or `burst` for a token bucket), reduced
/// by the priority reserve for the call's priority and, for provider-scope calendar limits
/// with client shares, to the most the client's share group can get: waiting would never
/// help, so the call is refused at once rather than queued forever.
#[derive(Debug, Clone, PartialEq)]
pub struct TooLarge {
    /// The limit's name.
    pub limit: String,
    /// Its scope.
    pub scope: Scope,
    /// Its scope id.
    pub scope_id: String,
    /// The call's cost in the limit's unit.
    pub cost: f64,
    /// The most this call could ever get.
    pub cap: f64,
    /// The limit's whole capacity.
    pub amount: f64,
}

/// A refusal decision (what shadow mode records instead of acting on).
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Would have waited.
    Wait(Wait),
    /// Would have been refused as too large.
    TooLarge(TooLarge),
}

/// A limit+scope crossed its `warn_at` threshold (reported once per window).
#[derive(Debug, Clone, PartialEq)]
pub struct WarnEvent {
    /// The limit's name.
    pub limit: String,
    /// Its scope.
    pub scope: Scope,
    /// Its scope id.
    pub scope_id: String,
    /// Used after the call.
    pub used: f64,
    /// The limit's capacity.
    pub amount: f64,
    /// The configured fraction.
    pub warn_at: f64,
}
