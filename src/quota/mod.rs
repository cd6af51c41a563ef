//! Quota engine: decides whether a call may go now, later, or never, and keeps the books.
//!
//! ```text
//! CostModel::estimate ─▶ Demand ─▶ Engine::admit / Provider::admit ─▶ (FIFO queue)
//!                                          │             ProviderState::try_admit
//!                                          │               every applicable limit:
//!                                          │      rolling │ bucket │ calendar │ concurrency
//!                                          ▼
//!                          Permit ── settle / cancel / drop ──▶ ProviderState::settle
//! ```
//!
//! Layers, from the inside out:
//! - **Pure counters** ([`RollingWindow`], [`TokenBucket`], [`CalendarCounter`],
//!   [`ConcurrencyGauge`], behind [`Meter`]): each answers "does `cost` fit under this cap
//!   at `now`, and if not, when?" ([`Fit`]). Time is always an argument ([`Micros`]).
//! - **Admission** ([`ProviderState`]): one provider's counters keyed by (limit, scope id),
//!   created lazily; [`ProviderState::try_admit`] reserves in every applicable limit or in
//!   none, applying priority reserves and client shares; [`ProviderState::settle`] and
//!   [`ProviderState::cancel`] correct or refund; [`ProviderState::reconfigure`] carries
//!   counters over a reload. Still pure: no locks, no clock.
//! - **Engine** ([`Engine`], [`Provider`]): a `Mutex<ProviderState>` per provider (never held
//!   across an await), the FIFO delay queue, the injected [`Clock`], [`Permit`]s that always
//!   settle, warnings, and config reloads.
//! - **Persistence** ([`EngineExport`], [`Engine::export`], [`Engine::import`]): the
//!   counters as plain data with absolute times, keyed by limit identity and scope id, for
//!   the state file; restoring continues windows that are still open. Still pure.
//! - **Shared mode** ([`shared`], `backend = "redis"`): the engine's admission loop is
//!   unchanged, but each attempt is one atomic Lua script call in Redis on the server's
//!   clock; the local [`ProviderState`] stays as the `on_backend_error = "local"` fallback.
//! - **Cost estimation** ([`CostModel`], [`RouteAverages`]): what a call will cost before it
//!   is sent.
//!
//! Decisions worth knowing:
//! - Rolling windows use 128 sub-buckets and one more as a margin for the time from
//!   admission to the upstream, counted conservatively: never an overshoot in any interval,
//!   ≈98.5% of the permitted rate under saturation.
//! - A cost larger than what a limit could ever give the call (its whole amount, reduced by
//!   the priority reserve and the client's share) is [`TooLarge`]: waiting cannot help.
//! - A full concurrency limit has no known free time: [`Wait::on_release`] is set and the
//!   queue head wakes on every settle or cancel (a refund may also free room earlier).
//! - Client shares are hard guarantees; borrowing only uses capacity that no other listed
//!   client's unused guarantee holds (see [`ShareTable`]).
//! - Settling uses the reservation's admission time; counters never move backwards, so
//!   the result is the same as with the current time and a clock read is saved.

mod admission;
mod bucket;
mod calendar;
mod clock;
mod concurrency;
mod cost;
mod engine;
mod fit;
mod import;
mod meter;
mod permit;
mod persist;
mod priority;
mod provider;
mod queue;
mod reload;
mod reservation;
mod rolling;
mod route_cost;
mod settle;
pub mod shared;
mod shares;
mod spec;
mod state;
mod status;
mod unit;
mod verdict;

#[cfg(test)]
mod persist_tests;
#[cfg(test)]
mod sim_tests;

pub use admission::{Demand, KeyOption};
pub use bucket::TokenBucket;
pub use calendar::{period_bounds, CalendarCounter};
pub use clock::{duration_micros, Clock, FastClock, ManualClock, Micros, SystemClock, SECOND};
pub use concurrency::ConcurrencyGauge;
pub use cost::{CostModel, Estimate, Price, RequestInfo};
pub use engine::Engine;
pub use fit::Fit;
pub use import::{ImportProblem, ImportReport, MAX_CLOCK_SKEW};
pub use meter::Meter;
pub use permit::{Permit, Refusal};
pub use persist::{
    CounterExport, EngineExport, LimitExport, MeterExport, ProviderExport, ShareUse, WindowExport,
};
pub use priority::{Priority, PriorityReserve, UnknownPriority};
pub use provider::{Provider, WarnHook, CONCURRENCY_RETRY_AFTER, QUEUE_LIMIT};
pub use reservation::Reservation;
pub use rolling::{RollingWindow, BUCKETS};
pub use route_cost::{
    glob_match, param_value_count, CreditRule, InvalidCreditRule, RouteAverages, RouteCost,
};
pub use shares::{ShareBook, ShareFit, ShareTable};
pub use spec::{
    format_duration, CalendarPeriod, ClientShares, LimitSpec, OnLimit, OnLimitAction, ProviderSpec,
    Scope, WindowKind,
};
pub use state::ProviderState;
pub use status::{Headroom, LimitStatus, ShareStatus};
pub use unit::{Costs, Unit, UnknownUnit};
pub use verdict::{Admission, TooLarge, Verdict, Wait, WarnEvent};
