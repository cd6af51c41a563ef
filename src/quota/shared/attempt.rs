//! Admission through Redis for one provider: the same [`Attempt`]s as the local path,
//! decided by one script call per key option, with the `on_backend_error` policy when
//! Redis cannot be asked.

use std::sync::Arc;

use crate::quota::admission::Demand;
use crate::quota::clock::Micros;
use crate::quota::permit::Refusal;
use crate::quota::provider::{Attempt, ProviderHandle};
use crate::quota::reservation::{Reservation, Settled};
use crate::quota::shared::backend::{OnError, RedisBackend};
use crate::quota::shared::grant::Take;
use crate::quota::shared::plan::{reconcile_ops, settle_ops, Item, PlanCtx, Reply, Ticket};
use crate::quota::verdict::{TooLarge, Wait};

/// What Redis said about one demand (one key option).
enum Shared {
    Admitted(Reservation),
    Wait(Wait),
    TooLarge(TooLarge),
    Down,
}

/// The refusal of `on_backend_error = "deny"` while Redis is unreachable (503).
// Interim: `Refusal::BackendDown` waits for its arm in `proxy::error::quota_refusal`
// (whose match is exhaustive); until then a 503 through `QueueFull { max_queue: 0 }`.
pub(crate) fn backend_down() -> Refusal {
    Refusal::BackendDown
}

fn wait_of(b: &RedisBackend, items: &[Item], until: Micros, i: usize, release: bool) -> Wait {
    let it = &items[i.min(items.len().saturating_sub(1))];
    Wait {
        until: b.to_local(until),
        on_release: release,
        limit: it.limit.clone(),
        scope: it.scope,
        scope_id: it.scope_id.clone(),
    }
}

fn too_large(items: &[Item], i: usize) -> TooLarge {
    let it = &items[i.min(items.len().saturating_sub(1))];
    TooLarge {
        limit: it.limit.clone(),
        scope: it.scope,
        scope_id: it.scope_id.clone(),
        cost: it.cost,
        cap: it.cap,
        amount: it.capacity,
    }
}

fn reservation(now: Micros, ticket: Ticket) -> Reservation {
    let mut r = Reservation::new(0, 0, Vec::new(), now);
    r.shared = Some(Box::new(ticket));
    r
}

/// An admission counted by Redis at `at` (`used`: each item's usage with it).
fn admitted(now: Micros, items: Vec<Item>, at: Micros, used: Vec<f64>) -> Shared {
    let ticket = Ticket {
        items,
        at,
        used,
        fallback: false,
    };
    Shared::Admitted(reservation(now, ticket))
}

impl ProviderHandle {
    fn plan(
        &self,
        b: &RedisBackend,
        d: &Demand<'_>,
        redis_now: Micros,
        member: &(dyn Fn() -> String + Sync),
    ) -> Vec<Item> {
        let tag = self
            .redis_tag
            .get_or_init(|| super::keys::hash_tag(b.prefix(), self.name()));
        let ctx = PlanCtx {
            tag,
            now: redis_now,
            lease: crate::quota::clock::duration_micros(b.options.lease),
            member,
        };
        self.lock().shared_plan(d, &ctx)
    }

    /// One demand (no alternatives) through Redis.
    async fn shared_one(&self, b: &RedisBackend, d: &Demand<'_>, now: Micros) -> Shared {
        // One lease member for the call (kept if a stale period makes it plan again).
        let member = std::sync::OnceLock::new();
        let member = || member.get_or_init(|| b.member()).clone();
        let mut items = self.plan(b, d, b.redis_now(now), &member);
        if items.is_empty() {
            return admitted(now, items, b.redis_now(now), Vec::new());
        }
        // From a grant this replica holds for these counters, when one does.
        let mut refunds = Vec::new();
        let take = b.grants.take(&items, b.redis_now(now), &mut refunds);
        b.adjust_later(refunds);
        let (mut size, mut asking) = match take {
            Take::Local { at, used } => return admitted(now, items, at, used),
            Take::Ask { size } => (size, true),
            Take::Exact => (1, false),
        };
        // A stale calendar period (first call, or a boundary passed): recompute from the
        // server's time and ask again; a second stale answer is treated as a failure. A
        // grant refused (the counters had less room than this replica last saw) is asked
        // again for this admission alone.
        let mut stale = 0;
        let refused = loop {
            // A grant is asked for as the admission of `size` calls; the items keep one
            // call's costs.
            let costs = (size > 1).then(|| {
                items
                    .iter_mut()
                    .map(|it| {
                        let one = it.cost;
                        it.cost = one * f64::from(size);
                        one
                    })
                    .collect::<Vec<f64>>()
            });
            let (mut back, reply) = b.admit_coalesced(items).await;
            for (it, cost) in back.iter_mut().zip(costs.iter().flatten()) {
                it.cost = *cost;
            }
            items = back;
            let Ok(reply) = reply else {
                break Shared::Down;
            };
            match reply {
                Reply::Admitted { now: at, used } => {
                    let used = if asking {
                        let mut refunds = Vec::new();
                        let used = b.grants.granted(&items, size, at, &used, &mut refunds);
                        b.adjust_later(refunds);
                        used
                    } else {
                        used
                    };
                    return admitted(now, items, at, used);
                }
                Reply::Wait { .. } | Reply::TooLarge { .. } if size > 1 => size = 1,
                Reply::Wait {
                    until,
                    item,
                    on_release,
                    ..
                } => break Shared::Wait(wait_of(b, &items, until, item, on_release)),
                Reply::TooLarge { item, .. } => break Shared::TooLarge(too_large(&items, item)),
                Reply::Stale { now: redis_now } => {
                    stale += 1;
                    if stale == 2 {
                        break Shared::Down;
                    }
                    if asking {
                        // Replanned: another period, other counters.
                        b.grants.refused(&items);
                    }
                    items = self.plan(b, d, redis_now, &member);
                    (size, asking) = (1, false);
                }
            }
        };
        if asking {
            b.grants.refused(&items);
        }
        refused
    }

    /// [`ProviderHandle::attempt`], through Redis when the engine has a shared backend.
    pub(crate) async fn attempt_async(&self, d: &Demand<'_>, now: Micros) -> Attempt {
        match self.shared.backend.get() {
            // Boxed: the Redis exchange is most of this future's size, and every admission
            // future (and so every request's) would carry it, and be copied with it, even
            // with the local backend.
            Some(b) if !self.lock().is_shadow() => {
                Box::pin(self.attempt_shared(Arc::clone(b), d, now)).await
            }
            _ => self.attempt(d, now),
        }
    }

    /// [`ProviderHandle::attempt_async`] through Redis.
    async fn attempt_shared(&self, b: Arc<RedisBackend>, d: &Demand<'_>, now: Micros) -> Attempt {
        if d.keys.is_empty() {
            return match self.shared_one(&b, d, now).await {
                Shared::Admitted(r) => Attempt::Admitted(r, None),
                Shared::Wait(w) => Attempt::Wait(w, self.lock().on_limit()),
                Shared::TooLarge(t) => Attempt::Refused(Refusal::TooLarge(t)),
                Shared::Down => self.fallback(&b, d, now),
            };
        }
        let (mut wait, mut large): (Option<Wait>, Option<TooLarge>) = (None, None);
        for (i, option) in d.keys.iter().enumerate() {
            let mut one = *d;
            one.keys = &[];
            one.key = Some(option.key);
            one.account = option.account;
            match self.shared_one(&b, &one, now).await {
                Shared::Admitted(r) => return Attempt::Admitted(r, Some(i)),
                Shared::Wait(w) => {
                    if wait.as_ref().is_none_or(|best| w.until < best.until) {
                        wait = Some(w);
                    }
                }
                Shared::TooLarge(t) => large = Some(t),
                Shared::Down => return self.fallback(&b, d, now),
            }
        }
        match (wait, large) {
            (Some(w), _) => Attempt::Wait(w, self.lock().on_limit()),
            (None, Some(t)) => Attempt::Refused(Refusal::TooLarge(t)),
            (None, None) => self.attempt(d, now),
        }
    }

    /// Redis could not decide: `on_backend_error`.
    fn fallback(&self, b: &RedisBackend, d: &Demand<'_>, now: Micros) -> Attempt {
        match b.on_error() {
            OnError::Deny => Attempt::Refused(backend_down()),
            OnError::Allow => {
                let ticket = Ticket {
                    items: Vec::new(),
                    at: 0,
                    used: Vec::new(),
                    fallback: false,
                };
                let key = (!d.keys.is_empty()).then_some(0);
                Attempt::Admitted(reservation(now, ticket), key)
            }
            OnError::Local => match self.attempt(d, now) {
                Attempt::Admitted(mut r, k) => {
                    let mut one = *d;
                    if let Some(option) = k.and_then(|i| d.keys.get(i)) {
                        one.keys = &[];
                        one.key = Some(option.key);
                        one.account = option.account;
                    }
                    let at = b.redis_now(now);
                    let items = self.plan(b, &one, at, &String::new);
                    let ticket = Ticket {
                        items,
                        at,
                        used: Vec::new(),
                        fallback: true,
                    };
                    b.reconcile_later(reconcile_ops(&ticket));
                    r.shared = Some(Box::new(ticket));
                    Attempt::Admitted(r, k)
                }
                other => other,
            },
        }
    }

    /// Settles the shared part of a reservation; the local part (fallback) is settled by
    /// the caller as usual.
    pub(crate) fn settle_shared(&self, ticket: &Ticket, how: Settled<'_>) {
        let Some(b) = self.shared.backend.get() else {
            return;
        };
        if ticket.fallback {
            b.reconcile_later(settle_ops(ticket, how, false));
        } else {
            b.adjust_later(settle_ops(ticket, how, true));
        }
    }
}
