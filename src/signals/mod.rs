//! Upstream signals: what an upstream's answer says about a key's quota, and what a call
//! actually used.
//!
//! Two halves, both free of clocks (time comes in as `now`) and of I/O:
//!
//! 1. **Signal parsers** (pure): [`from_headers`] reads `Retry-After` and the rate-limit
//!    headers of the configured [`Family`]s and [`CustomSignal`]s into [`Signals`];
//!    [`from_body`] adds what an error body (or a Keepa JSON body) says. Garbage is counted
//!    in [`Signals::malformed`] and otherwise ignored, never an error or a panic.
//! 2. **Usage taps**: [`UsageTap`] wraps a response body, passes every frame on as it
//!    arrives, and reads [`Usage`] from JSON bodies (copied up to a cap) or SSE streams
//!    (parsed incrementally by [`SseParser`]). With [`openai_request_add_include_usage`] the
//!    proxy asks OpenAI for streamed usage and the tap removes the extra chunk again.
//!
//! ```text
//! upstream response ─┬─ headers ─ from_headers ─┐
//!                    │                          ├─ Signals ─→ quota engine / key states
//!                    ├─ error body ─ from_body ─┘
//!                    └─ body ─ UsageTap ─→ app      (callback: TapOutcome { usage, .. })
//! ```
//!
//! File map: `types` (the vocabulary), `time` (durations and dates), `headers` (dispatch and
//! `Retry-After`), one file per family (`openai`, `anthropic`, `gemini`, `ietf`, `github`,
//! `odds_api`, `keepa`, `custom`), `body` (body dispatch), `usage` (usage shapes), `sse`
//! (event-stream parser), `include_usage` (OpenAI request rewrite), `collector` and `tap`
//! (the streaming body wrapper); `tests_*` hold the table and property tests.

mod anthropic;
mod body;
mod collector;
mod custom;
mod gemini;
mod github;
mod headers;
mod ietf;
mod include_usage;
mod keepa;
mod odds_api;
mod openai;
pub mod sse;
mod tap;
pub mod time;
mod types;
mod usage;

#[cfg(test)]
mod tests_body;
#[cfg(test)]
mod tests_headers;
#[cfg(test)]
mod tests_ietf;
#[cfg(test)]
mod tests_support;
#[cfg(test)]
mod tests_tap;
#[cfg(test)]
mod tests_tap_cases;

pub use body::from_body;
pub use headers::from_headers;
pub use include_usage::{openai_path_takes_include_usage, openai_request_add_include_usage};
pub use sse::{SseEvent, SseParser};
pub use tap::{BodyKind, TapConfig, TapOutcome, UsageTap, DEFAULT_JSON_CAP};
pub use types::{
    CustomSignal, Family, Field, Format, SignalUnit, Signals, Source, UnitSignal, UnknownFamily,
    Verdict,
};
pub use usage::{usage_from_json, Usage, UsageField, UsageFormat};

/// Time as µs since the UNIX epoch. Always passed in; this module never reads a clock.
pub type Micros = u64;
