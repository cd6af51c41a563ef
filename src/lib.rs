//! quota-proxy: an HTTP forward proxy and sidecar that enforces API quotas transparently.
//!
//! # Layout
//!
//! The modules follow a request:
//!
//! ```text
//! listener → (tunnel | intercept) → proxy pipeline → policy → quota → upstream → signals → state
//!                                                 admin and config sit beside, not inside
//! ```
//!
//! - [`config`]: the TOML model, validated into types that cannot be invalid; reloads.
//! - [`listener`]: accept loop, first-bytes sniff, hyper HTTP/1.1 and HTTP/2 serving.
//! - [`proxy`]: the one pipeline for plain, route-mode and intercepted requests; CONNECT;
//!   header normalisation; the single mapping from errors to responses.
//! - [`policy`]: host and route → provider matching; destination safety.
//! - [`upstream`]: the pooled, verifying upstream client.
//! - [`admin`]: health, readiness, metrics and reload endpoints.
//! - [`quota`]: the quota engine (pure core, delay queue, cost estimation).
//! - [`keys`]: key pools, key states and injection.
//! - [`signals`]: upstream rate-limit signals and streaming usage taps.
//! - [`runtime`]: what a config becomes at run time, per provider.
//! - [`state`]: durable state: snapshots, the `Store` trait, the local state file.
//! - [`stats`]: per-provider totals and hourly history.
//! - [`app`]: wiring, reload and graceful drain.
//! - [`tls`]: the local CA, leaf certificates and their cache (interception).
//! - [`telemetry`]: logging and the metrics recorder.
//! - [`deadline`]: timeouts on reused timers (upstream calls, Redis calls).

pub mod admin;
pub mod app;
pub mod config;
pub mod deadline;
pub mod keys;
pub mod listener;
pub mod policy;
pub mod proxy;
pub mod quota;
pub mod runtime;
pub mod signals;
pub mod state;
pub mod stats;
pub mod telemetry;
pub mod tls;
pub mod upstream;
