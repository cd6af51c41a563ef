//! The backend's settings ([`RedisOptions`], [`OnError`]) and its errors.

use std::time::Duration;

/// What to do with a call when Redis cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Decide with the local engine; add that usage to Redis when it returns.
    Local,
    /// Admit without counting.
    Allow,
    /// Refuse (503).
    Deny,
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    pub url: String,
    pub prefix: String,
    pub on_error: OnError,
    /// Bound on one script call; beyond it the call counts as a failure.
    pub timeout: Duration,
    /// Bound on the first connection at start.
    pub connect_timeout: Duration,
    /// Consecutive failures that open the breaker.
    pub breaker_threshold: u32,
    /// How long an open breaker skips Redis before one probe.
    pub cool_off: Duration,
    /// A concurrency slot's lease: a crashed proxy's slots free up after it.
    pub lease: Duration,
}

impl RedisOptions {
    /// Defaults: 100 ms per call, 1 s to connect, breaker after 3 failures for 1 s, 10 min
    /// leases.
    pub fn new(url: impl Into<String>, prefix: impl Into<String>, on_error: OnError) -> Self {
        Self {
            url: url.into(),
            prefix: prefix.into(),
            on_error,
            timeout: Duration::from_millis(100),
            connect_timeout: Duration::from_secs(1),
            breaker_threshold: 3,
            cool_off: Duration::from_secs(1),
            lease: Duration::from_secs(600),
        }
    }
}

/// Why a call could not be decided by Redis.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis is not connected")]
    NotConnected,
    #[error("the circuit breaker is open")]
    Open,
    #[error("unexpected script reply {0}")]
    Reply(String),
    #[error("unexpected reply: {0}")]
    Malformed(String),
    /// The script call that carried this admission with others failed.
    #[error("the batched script call failed: {0}")]
    Batch(String),
}
