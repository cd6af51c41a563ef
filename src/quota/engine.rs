//! The engine façade: every provider by name, the injected clock, the warning hook, and
//! config reloads. Admission itself lives in [`Provider`].

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use crate::quota::admission::Demand;
use crate::quota::clock::{Clock, Micros};
use crate::quota::import::ImportReport;
use crate::quota::permit::{Permit, Refusal};
use crate::quota::persist::EngineExport;
use crate::quota::provider::{Provider, ProviderHandle, Shared, WarnHook};
use crate::quota::spec::ProviderSpec;
use crate::quota::status::LimitStatus;
use crate::quota::verdict::WarnEvent;

/// The quota engine of all providers.
pub struct Engine {
    shared: Arc<Shared>,
    providers: RwLock<HashMap<Box<str>, Arc<ProviderHandle>>>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("providers", &self.providers())
            .finish()
    }
}

impl Engine {
    /// An engine enforcing `specs`, reading time from `clock`.
    pub fn new(specs: Vec<ProviderSpec>, clock: Arc<dyn Clock>) -> Self {
        let shared = Arc::new(Shared {
            clock,
            warn_hook: OnceLock::new(),
            backend: OnceLock::new(),
        });
        let providers = specs
            .into_iter()
            .map(|s| (s.name.as_str().into(), ProviderHandle::new(&shared, s)))
            .collect();
        Self {
            shared,
            providers: RwLock::new(providers),
        }
    }

    /// Sets the hook called for each [`WarnEvent`] (once; later calls are ignored and
    /// return `false`). Without a hook, events wait in [`Engine::take_warnings`].
    pub fn set_warn_hook(&self, hook: WarnHook) -> bool {
        self.shared.warn_hook.set(hook).is_ok()
    }

    /// Makes every admission go through the shared backend (once; later calls are
    /// ignored and return `false`). Providers keep their local state as the fallback.
    pub fn set_backend(&self, backend: Arc<crate::quota::shared::RedisBackend>) -> bool {
        self.shared.backend.set(backend).is_ok()
    }

    /// The shared backend, if any.
    pub fn backend(&self) -> Option<&Arc<crate::quota::shared::RedisBackend>> {
        self.shared.backend.get()
    }

    /// The engine's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.shared.clock
    }

    /// A handle on `provider`, to keep and skip the name lookup on every call.
    pub fn provider(&self, provider: &str) -> Option<Provider> {
        let map = self
            .providers
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(provider).cloned().map(Provider)
    }

    fn known(&self, provider: &str) -> Result<Provider, Refusal> {
        self.provider(provider)
            .ok_or_else(|| Refusal::UnknownProvider(provider.to_string()))
    }

    /// Configured provider names, sorted.
    pub fn providers(&self) -> Vec<String> {
        let map = self
            .providers
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut names: Vec<String> = map.keys().map(|k| k.to_string()).collect();
        names.sort();
        names
    }

    /// Admits a call now or refuses it; never waits (a wait becomes `Limited`) and ignores
    /// the queue. For callers that cannot wait, and benchmarks.
    pub fn try_admit(&self, provider: &str, demand: &Demand<'_>) -> Result<Permit, Refusal> {
        self.known(provider)?.try_admit(demand)
    }

    /// Admits a call, waiting in the provider's FIFO queue when the action is `delay` and
    /// every limit fits within `min(max_delay, max_delay_override)` of arrival.
    ///
    /// If nobody waits the call is tried at once; otherwise it queues behind the others
    /// (strict FIFO per provider, even when its own limits have room). Beyond `max_queue`
    /// waiting calls it is refused (`QueueFull`). Dropping the future while it waits
    /// leaves the queue and costs nothing. With `reject`, a call that does not fit now is
    /// refused with a retry-after computed from the state. A call waiting on a full
    /// concurrency limit wakes when a call ends, and gives up at its deadline.
    pub async fn admit(
        &self,
        provider: &str,
        demand: Demand<'_>,
        max_delay_override: Option<Micros>,
    ) -> Result<Permit, Refusal> {
        self.known(provider)?
            .admit(demand, max_delay_override)
            .await
    }

    /// Calls waiting for `provider` (`None` if unknown).
    pub fn queue_len(&self, provider: &str) -> Option<usize> {
        self.provider(provider).map(|p| p.queue_len())
    }

    /// Status of every counter of `provider` at `now` (`None` if unknown).
    pub fn snapshot(&self, provider: &str, now: Micros) -> Option<Vec<LimitStatus>> {
        self.provider(provider).map(|p| p.snapshot(now))
    }

    /// Warnings not yet delivered (they only accumulate when no hook is set).
    pub fn take_warnings(&self, provider: &str) -> Vec<WarnEvent> {
        self.provider(provider)
            .map(|p| p.0.lock().take_warnings())
            .unwrap_or_default()
    }

    /// Forgets idle key, account and client counters of every provider.
    pub fn prune(&self) -> usize {
        let now = self.shared.clock.now();
        let handles: Vec<Arc<ProviderHandle>> = {
            let map = self
                .providers
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            map.values().cloned().collect()
        };
        handles.iter().map(|h| h.lock().prune(now)).sum()
    }

    /// Every provider's non-empty counters at `now`, for the state file (concurrency and
    /// warning state excepted; reservations in flight count at their estimate).
    pub fn export(&self, now: Micros) -> EngineExport {
        let providers = self
            .providers()
            .into_iter()
            .filter_map(|name| {
                let p = self.provider(&name)?;
                let export = p.0.lock().export(now);
                Some((name, export))
            })
            .collect();
        EngineExport { providers }
    }

    /// Restores exported counters at `now` into the configured providers: limits whose
    /// identity still exists get their counters back, windows already over start fresh,
    /// and invalid values are reported, never read as zero (see [`ImportReport`]).
    pub fn import(&self, export: EngineExport, now: Micros) -> ImportReport {
        let mut report = ImportReport::default();
        for (name, provider) in export.providers {
            match self.provider(&name) {
                Some(p) => p.0.lock().import(provider, now, &mut report),
                None => report.unknown_providers.push(name),
            }
        }
        report
    }

    /// Applies a reloaded config: providers are added, removed or reconfigured; counters
    /// of limits whose (provider, name, unit, window, scope) did not change are kept, as
    /// are queues. Permits of removed providers still settle harmlessly.
    pub fn replace(&self, specs: Vec<ProviderSpec>) {
        let mut map = self
            .providers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut next = HashMap::with_capacity(specs.len());
        for spec in specs {
            let name: Box<str> = spec.name.as_str().into();
            let handle = match map.remove(&name) {
                Some(h) => {
                    h.reconfigure(spec);
                    h
                }
                None => ProviderHandle::new(&self.shared, spec),
            };
            next.insert(name, handle);
        }
        *map = next;
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
