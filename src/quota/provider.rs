//! One provider inside the engine: its `Mutex<ProviderState>` (`parking_lot`'s, which has
//! no poison to check on each admission; never held across an await), its delay queue, and the admission policy (delay or reject) around them.
//! [`Provider`] is a cheap handle on it; keep one to skip the engine's name lookup.

use std::fmt;
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, MutexGuard};
use std::time::Duration;

use crate::quota::admission::Demand;
use crate::quota::clock::{Clock, Micros, SECOND};
use crate::quota::permit::{Permit, Refusal};
use crate::quota::queue::DelayQueue;
use crate::quota::reservation::{Reservation, Settled};
use crate::quota::spec::{OnLimit, OnLimitAction, ProviderSpec, Scope};
use crate::quota::state::ProviderState;
use crate::quota::status::{Headroom, LimitStatus};
use crate::quota::verdict::{Admission, Verdict, Wait, WarnEvent};

/// Retry-after given when only a full concurrency limit binds (its time is unknown).
pub const CONCURRENCY_RETRY_AFTER: Micros = SECOND;

/// The limit named when a call's delay budget runs out while other calls are ahead of it
/// in the queue and its own limits would have room.
pub const QUEUE_LIMIT: &str = "queue";

/// Called with (provider, event) when a limit crosses `warn_at`, outside any lock.
pub type WarnHook = Arc<dyn Fn(&str, &WarnEvent) + Send + Sync>;

/// What every provider shares with the engine.
pub(crate) struct Shared {
    pub clock: Arc<dyn Clock>,
    pub warn_hook: OnceLock<WarnHook>,
    /// Set once in shared mode (`backend = "redis"`): admissions go to Redis.
    pub backend: OnceLock<Arc<crate::quota::shared::RedisBackend>>,
}

/// One provider: its state and its queue.
pub(crate) struct ProviderHandle {
    name: Box<str>,
    state: Mutex<ProviderState>,
    pub(crate) queue: DelayQueue,
    pub(crate) shared: Arc<Shared>,
    /// The Redis hash tag of this provider's keys, built at its first shared admission (the
    /// backend, and so its prefix, is set once).
    pub(crate) redis_tag: OnceLock<String>,
}

impl fmt::Debug for ProviderHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("queue", &self.queue.len())
            .finish()
    }
}

/// What one attempt at admission came to.
pub(crate) enum Attempt {
    /// With the index of the chosen key option, if the demand had alternatives.
    Admitted(Reservation, Option<usize>),
    /// With the provider's policy, read under the same lock.
    Wait(Wait, OnLimit),
    Refused(Refusal),
}

fn limited(w: Wait, now: Micros) -> Refusal {
    let mut retry_after = w.until.saturating_sub(now);
    if w.on_release {
        retry_after = retry_after.max(CONCURRENCY_RETRY_AFTER);
    }
    Refusal::Limited {
        limit: w.limit,
        scope: w.scope,
        scope_id: w.scope_id,
        retry_after: retry_after.max(1),
    }
}

impl ProviderHandle {
    pub(crate) fn new(shared: &Arc<Shared>, spec: ProviderSpec) -> Arc<Self> {
        Arc::new(Self {
            name: spec.name.as_str().into(),
            state: Mutex::new(ProviderState::new(spec)),
            queue: DelayQueue::default(),
            shared: Arc::clone(shared),
            redis_tag: OnceLock::new(),
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The state, locked. `parking_lot`'s mutex has no poisoning: a panic while the lock was
    /// held does not stop later admissions (the standard mutex's poison was ignored too).
    #[inline(always)]
    pub(crate) fn lock(&self) -> MutexGuard<'_, ProviderState> {
        self.state.lock()
    }

    /// Runs `f` on the state, then reports warnings outside the lock.
    #[inline]
    fn with_state<R>(&self, f: impl FnOnce(&mut ProviderState) -> R) -> R {
        let mut state = self.lock();
        let out = f(&mut state);
        self.release(state);
        out
    }

    /// Unlocks the state, then reports the warnings it took.
    #[inline(always)]
    fn release(&self, state: MutexGuard<'_, ProviderState>) {
        if state.has_warnings() {
            self.report(state);
        }
    }

    /// The rest of [`release`](Self::release), out of the admission's line: takes the
    /// warnings (when a hook is set to hear them), unlocks, then calls the hook.
    #[cold]
    #[inline(never)]
    fn report(&self, mut state: MutexGuard<'_, ProviderState>) {
        let Some(hook) = self.shared.warn_hook.get() else {
            return;
        };
        let warnings = state.take_warnings();
        drop(state);
        warnings.iter().for_each(|w| hook(&self.name, w));
    }

    /// The common admission, with no key alternatives: every limit has room now. The call
    /// is counted under the lock and its reservation built after the lock is released.
    /// `None` (nothing counted) leaves the decision to `ProviderState::try_admit`.
    #[inline(always)]
    fn admit_now(&self, demand: &Demand<'_>, now: Micros) -> Option<Reservation> {
        let mut state = self.lock();
        let counted = state.count_if_fits(demand, now)?;
        let (id, generation) = (state.id, state.generation);
        self.release(state);
        Some(counted.into_reservation(id, generation, now))
    }

    pub(crate) fn attempt(&self, demand: &Demand<'_>, now: Micros) -> Attempt {
        if demand.keys.is_empty() {
            if let Some(r) = self.admit_now(demand, now) {
                return Attempt::Admitted(r, None);
            }
            return match self.with_state(|s| (s.try_admit(demand, now), s.on_limit())) {
                (Admission::Admitted(r), _) => Attempt::Admitted(r, None),
                (Admission::Wait(w), on_limit) => Attempt::Wait(w, on_limit),
                (Admission::TooLarge(t), _) => Attempt::Refused(Refusal::TooLarge(t)),
            };
        }
        // Key alternatives, under one lock: the first that fits wins; otherwise the
        // earliest time any would fit; TooLarge only if every key is too small.
        self.with_state(|s| {
            let on_limit = s.on_limit();
            let mut wait: Option<Wait> = None;
            let mut too_large = None;
            for (i, option) in demand.keys.iter().enumerate() {
                let mut one = *demand;
                one.keys = &[];
                one.key = Some(option.key);
                one.account = option.account;
                match s.try_admit(&one, now) {
                    Admission::Admitted(r) => return Attempt::Admitted(r, Some(i)),
                    Admission::Wait(w) => {
                        if wait.as_ref().is_none_or(|best| w.until < best.until) {
                            wait = Some(w);
                        }
                    }
                    Admission::TooLarge(t) => too_large = Some(t),
                }
            }
            match (wait, too_large) {
                (Some(w), _) => Attempt::Wait(w, on_limit),
                (None, Some(t)) => Attempt::Refused(Refusal::TooLarge(t)),
                (None, None) => Attempt::Refused(Refusal::Limited {
                    limit: "keys".to_string(),
                    scope: Scope::Key,
                    scope_id: String::new(),
                    retry_after: CONCURRENCY_RETRY_AFTER,
                }),
            }
        })
    }

    /// See [`ProviderState::restamp`]; the lock is taken only when a count moves.
    pub(crate) fn restamp(&self, r: &mut Reservation, now: Micros) {
        if now >= r.restamp_after {
            self.lock().restamp(r, now);
        }
    }

    /// Settles the reservation (see [`Settled`]), then wakes the queue.
    pub(crate) fn settle(&self, mut r: Reservation, how: Settled<'_>) {
        if let Some(ticket) = r.shared.take() {
            self.settle_shared(&ticket, how);
        }
        // The admission time gives the same result as the current time (see
        // `ProviderState::settle`) and saves a clock read.
        let now = r.admitted_at;
        self.with_state(|s| s.finish(r, how, now));
        if self.queue.len() > 0 {
            self.queue.wake();
        }
    }

    /// The refusal of a call whose budget ran out while others were ahead of it: what
    /// the state says now, or the queue itself when its limits would have room.
    fn queued_too_long(&self, demand: &Demand<'_>, now: Micros) -> Refusal {
        match self.with_state(|s| s.check(demand, now)) {
            Some(Verdict::Wait(w)) => limited(w, now),
            Some(Verdict::TooLarge(t)) => Refusal::TooLarge(t),
            None => Refusal::Limited {
                limit: QUEUE_LIMIT.to_string(),
                scope: Scope::Provider,
                scope_id: String::new(),
                retry_after: CONCURRENCY_RETRY_AFTER,
            },
        }
    }

    /// Reloads the spec, keeping unchanged counters, and lets the queue re-check.
    pub(crate) fn reconfigure(&self, spec: ProviderSpec) {
        self.with_state(|s| s.reconfigure(spec));
        self.queue.wake();
    }
}

/// A handle on one provider of an [`Engine`](crate::quota::Engine). Cheap to clone; after
/// [`Engine::replace`](crate::quota::Engine::replace) removes the provider, the handle
/// still works on its own (orphaned) state.
#[derive(Debug, Clone)]
pub struct Provider(pub(crate) Arc<ProviderHandle>);

impl Provider {
    /// The provider's name.
    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// Calls waiting now.
    pub fn queue_len(&self) -> usize {
        self.0.queue.len()
    }

    /// Status of every counter at `now`.
    pub fn snapshot(&self, now: Micros) -> Vec<LimitStatus> {
        self.0.lock().snapshot(now)
    }

    /// Status of every counter shared through Redis (the configured `keys` and `accounts`
    /// and every scope id Redis holds); `None` when this provider's counters are not shared
    /// (no Redis backend, or shadow mode).
    pub async fn shared_snapshot(
        &self,
        keys: &[String],
        accounts: &[String],
        now: Micros,
    ) -> Option<Result<Vec<LimitStatus>, crate::quota::shared::BackendError>> {
        let b = Arc::clone(self.0.shared.backend.get()?);
        if self.0.lock().is_shadow() {
            return None;
        }
        Some(self.0.shared_snapshot(&b, keys, accounts, now).await)
    }

    /// See [`ProviderState::tightest`]: the limit with the least room for this call.
    pub fn tightest(
        &self,
        client: &str,
        key: Option<&str>,
        account: Option<&str>,
        now: Micros,
    ) -> Option<Headroom> {
        self.0.lock().tightest(client, key, account, now)
    }

    /// Admits a call now or refuses it; never waits (a wait becomes `Limited`) and ignores
    /// the queue.
    pub fn try_admit(&self, demand: &Demand<'_>) -> Result<Permit, Refusal> {
        let now = self.0.shared.clock.now();
        if demand.keys.is_empty() {
            // The common case of `attempt`, building the permit straight from the state's
            // answer (the provider's delay policy does not matter here).
            if let Some(r) = self.0.admit_now(demand, now) {
                return Ok(Permit::new(Arc::clone(&self.0), r, 0));
            }
            return match self.0.with_state(|s| s.try_admit(demand, now)) {
                Admission::Admitted(r) => Ok(Permit::new(Arc::clone(&self.0), r, 0)),
                Admission::Wait(w) => Err(limited(w, now)),
                Admission::TooLarge(t) => Err(Refusal::TooLarge(t)),
            };
        }
        match self.0.attempt(demand, now) {
            Attempt::Admitted(r, k) => Ok(Permit::new(Arc::clone(&self.0), r, 0).with_key(k)),
            Attempt::Wait(w, _) => Err(limited(w, now)),
            Attempt::Refused(r) => Err(r),
        }
    }

    /// See [`Engine::admit`](crate::quota::Engine::admit).
    pub async fn admit(
        &self,
        demand: Demand<'_>,
        max_delay_override: Option<Micros>,
    ) -> Result<Permit, Refusal> {
        let h = &self.0;
        let clock = &h.shared.clock;
        let arrival = clock.now();
        let deadline = |on: &OnLimit| {
            let budget = max_delay_override.map_or(on.max_delay, |o| o.min(on.max_delay));
            arrival.saturating_add(budget)
        };
        let may_wait = |w: &Wait, on: &OnLimit, now: Micros| {
            let deadline = deadline(on);
            on.action == OnLimitAction::Delay
                && w.until <= deadline
                && (!w.on_release || now < deadline)
        };
        let on = if h.queue.len() == 0 {
            match h.attempt_async(&demand, arrival).await {
                Attempt::Admitted(r, k) => return Ok(Permit::new(Arc::clone(h), r, 0).with_key(k)),
                Attempt::Refused(r) => return Err(r),
                Attempt::Wait(w, on) if !may_wait(&w, &on, arrival) => {
                    return Err(limited(w, arrival))
                }
                Attempt::Wait(_, on) => on,
            }
        } else {
            h.lock().on_limit()
        };
        let Some(_ticket) = h.queue.join(on.max_queue) else {
            return Err(Refusal::QueueFull {
                max_queue: on.max_queue,
            });
        };
        // Waiting behind others counts against this call's own delay budget too.
        let behind = deadline(&on).saturating_sub(arrival);
        let _head = tokio::select! {
            biased;
            head = h.queue.head() => head,
            _ = tokio::time::sleep(Duration::from_micros(behind)) => {
                return Err(h.queued_too_long(&demand, clock.now()));
            }
        };
        loop {
            let now = clock.now();
            let (w, on) = match h.attempt_async(&demand, now).await {
                Attempt::Admitted(r, k) => {
                    let delayed = now.saturating_sub(arrival);
                    return Ok(Permit::new(Arc::clone(h), r, delayed).with_key(k));
                }
                Attempt::Refused(r) => return Err(r),
                Attempt::Wait(w, on) => (w, on),
            };
            if !may_wait(&w, &on, now) {
                return Err(limited(w, now));
            }
            let mut wake_at = if w.until > now {
                w.until
            } else {
                deadline(&on)
            };
            if w.on_release && h.shared.backend.get().is_some() {
                // Other replicas' releases wake nobody here: ask again soon.
                wake_at = wake_at.min(now.saturating_add(crate::quota::shared::POLL));
            }
            h.queue.sleep(wake_at.saturating_sub(now)).await;
        }
    }
}
