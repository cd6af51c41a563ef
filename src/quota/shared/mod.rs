//! Shared quota state in Redis (`[state] backend = "redis"`, SPEC §11): every replica with
//! the same `redis_prefix` enforces the same limits.
//!
//! ```text
//! Provider::admit ─▶ ProviderHandle::attempt_async ─▶ ProviderState::shared_plan (items)
//!                        │                              │
//!                        │           coalesce: admissions waiting while script calls
//!                        │           are in flight (at most 2) go in the next one
//!                        │           EVALSHA admit.lua (one round trip, all limits of
//!                        │           each admission, all or nothing, clock = redis TIME)
//!                        ▼
//!    Permit ── settle / cancel / drop ──▶ worker: EVALSHA adjust.lua (batched, off the
//!                                          response path)
//! ```
//!
//! - **Grants** ([`grant`]): far from every limit, an admission takes several calls' worth
//!   of its counters at once and the next admissions of the same counters are served from
//!   it locally, at the grant's Redis time, while that time is exact for them; the rest is
//!   refunded when it ends. Near a limit every admission is its own script call.
//! - **Counters** mirror the local pure core: rolling windows as a hash of 64 conservative
//!   sub-buckets (field = absolute sub-bucket index), token buckets as `level`/`last`,
//!   calendar counters as one float per period, concurrency as a sorted set of leases
//!   (member → expiry) so a crashed proxy's slots free up after the lease (10 min).
//! - **Calendar periods**: the proxy computes `[start, end)` in the limit's zone from its
//!   estimate of the Redis time (local clock + the offset seen in the last reply) and
//!   passes them; the script checks them against `TIME` and answers "stale" when the
//!   server's time is outside, and the proxy recomputes from the returned time and asks
//!   once more. There is thus no boundary error, at the price of a second round trip on
//!   the first call and at each boundary.
//! - **Keys** (see [`keys`]) carry the hash tag `{<prefix>:<provider>}` and a TTL: window
//!   (+ one sub-bucket) + 60 s, until the bucket is full again + 60 s, until the period
//!   end + 60 s, lease + 60 s.
//! - **Failures** (error or `timeout`, 50 ms): `on_backend_error` decides — `local`
//!   admits with the local engine and queues that usage to be added to Redis when it is
//!   back; `allow` admits uncounted; `deny` refuses (503). A [`Breaker`] skips Redis for
//!   1 s after 3 consecutive failures, then lets one probe through.
//! - **Client shares**: a shared calendar counter of a provider with `[clients]` keeps each
//!   group's usage in the hash `<counter>:g` (field `c:<client>`, or `*` for everyone not
//!   listed), and the script applies the rule of [`crate::quota::shares`].
//! - **Status**: [`peek`] reads every counter without changing it.
//! - Not shared (local per replica): shadow-mode providers. Key states and learned signals
//!   are shared by [`crate::state::KeySync`].

mod attempt;
mod backend;
mod breaker;
mod coalesce;
mod grant;
pub mod keys;
mod options;
mod peek;
mod plan;
mod worker;

#[cfg(test)]
pub(crate) mod script_tests;

pub use backend::RedisBackend;
pub(crate) use backend::POLL;
pub use breaker::Breaker;
pub use options::{BackendError, OnError, RedisOptions};
pub(crate) use plan::Ticket;
