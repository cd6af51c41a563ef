//! Key pools (SPEC §6): each provider's keys with their states ([`state`]), the strategy that
//! picks one for a call and the limits learned from upstream signals ([`pool`]), and how a key
//! is written into a request ([`inject`]). All pure; the pipeline holds a pool per provider
//! behind a short-lived lock.

pub mod inject;
pub mod pool;
pub mod state;

pub use pool::{Candidates, KeyRuntime, Learned, LearnedUnit, Pool};
pub use state::{transition, KeyEvent, KeyState};

/// Microseconds since the UNIX epoch.
pub type Micros = u64;
