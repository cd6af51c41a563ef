//! `backend = "redis"`: the quota counters live in Redis (see [`crate::quota::shared`]);
//! this turns the `[state]` settings into a connected [`RedisBackend`]. Nothing is
//! snapshotted locally in this mode (the store is a [`super::MemoryStore`]).

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Backend, OnBackendError, StateSettings};
use crate::quota::shared::{OnError, RedisBackend, RedisOptions};
use crate::quota::Clock;
use crate::state::StateError;

/// The backend options `settings` ask for (`None` unless `backend = "redis"`).
pub fn redis_options(settings: &StateSettings) -> Option<RedisOptions> {
    if settings.backend != Backend::Redis {
        return None;
    }
    let on_error = match settings.on_backend_error {
        OnBackendError::Local => OnError::Local,
        OnBackendError::Allow => OnError::Allow,
        OnBackendError::Deny => OnError::Deny,
    };
    let url = settings.redis_url.clone().unwrap_or_default();
    let mut options = RedisOptions::new(url, settings.redis_prefix.clone(), on_error);
    options.timeout = settings.redis_timeout.max(Duration::from_millis(1));
    Some(options)
}

/// Connects the shared backend when `settings` ask for Redis (a bounded wait; an
/// unreachable Redis starts the proxy in fallback mode).
pub async fn open_shared(
    settings: &StateSettings,
    clock: Arc<dyn Clock>,
) -> Result<Option<Arc<RedisBackend>>, StateError> {
    let Some(options) = redis_options(settings) else {
        return Ok(None);
    };
    RedisBackend::connect(options, clock)
        .await
        .map(Some)
        .map_err(|e| StateError::Redis(e.to_string()))
}
