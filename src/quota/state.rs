//! [`ProviderState`]: the counters of one provider, keyed by (limit, scope id) and created
//! lazily, plus what a config reload needs to carry them over.
//!
//! Pure: no locks, no clock, no I/O. The engine wraps one in a `Mutex` per provider.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::quota::fit::{Cap, Undo};
use crate::quota::meter::{capacity_of, Meter};
use crate::quota::priority::Priority;
use crate::quota::reload::Remap;
use crate::quota::reservation::Item;
use crate::quota::shares::{ShareBook, ShareTable};
use crate::quota::spec::{LimitSpec, OnLimit, ProviderSpec, Scope, WindowKind};
use crate::quota::unit::Unit;
use crate::quota::verdict::WarnEvent;

/// Item lists kept for reuse.
const ITEM_POOL: usize = 256;
/// Marks a free slot, or a slot dropped by a reload in a remap table.
pub(crate) const NONE: u32 = u32::MAX;

static NEXT_STATE_ID: AtomicU64 = AtomicU64::new(1);

/// One configured limit with the keys it applies to and the index of its counters.
#[derive(Debug)]
pub(crate) struct Entry {
    pub spec: LimitSpec,
    /// A per-key limit: applies to this key only.
    pub only_key: Option<Box<str>>,
    /// A provider-level key-scope limit replaced for these keys by per-key limits.
    pub except_keys: Vec<Box<str>>,
    /// A provider-scope calendar limit governed by client shares.
    pub shared: bool,
    pub provider_slot: Option<u32>,
    pub by_scope: HashMap<Box<str>, u32>,
    /// The Redis hash tag and this limit's counter key prefix under it (built once).
    pub redis_prefix: std::sync::OnceLock<(String, String)>,
    /// The cap a call of each priority is held to (indexed by `Priority as usize`): the
    /// meter's capacity less the reserve held back from that priority. Fixed by the spec,
    /// so admission does not recompute it.
    pub caps: [Cap; 4],
    /// The limit's name, shared with the headroom each answer reports (no copy per call).
    pub name: std::sync::Arc<str>,
}

impl Entry {
    pub(crate) fn same_identity(&self, other: &Entry) -> bool {
        self.spec.same_identity(&other.spec) && self.only_key == other.only_key
    }
}

/// The counters of one limit for one scope id.
#[derive(Debug)]
pub(crate) struct Slot {
    /// Index into `entries`, or `NONE` when the slot is free.
    pub entry: u32,
    pub scope_id: Box<str>,
    pub meter: Meter,
    /// `warn_at` was reported in this period (calendar period start, else 0) and usage has
    /// not dropped below it since.
    pub warned: Option<u64>,
    /// Per share-group usage (shared entries only).
    pub book: Option<ShareBook>,
    /// Reservations not yet settled.
    pub outstanding: u32,
}

/// The quota state of one provider.
#[derive(Debug)]
pub struct ProviderState {
    pub(crate) id: u64,
    pub(crate) generation: u64,
    pub(crate) spec: ProviderSpec,
    pub(crate) entries: Vec<Entry>,
    pub(crate) slots: Vec<Slot>,
    pub(crate) free: Vec<u32>,
    pub(crate) shares: Option<ShareTable>,
    pub(crate) remaps: VecDeque<Remap>,
    pub(crate) warnings: Vec<WarnEvent>,
    /// Item lists of settled reservations, reused by the next admissions.
    pub(crate) pool: Vec<Vec<Item>>,
    /// Scratch of `count_if_fits`: what each count it took overwrote, by item index (as
    /// long as `entries`, once used).
    pub(crate) undo: Vec<Undo>,
    /// Some limit has a `warn_at` (fixed with the spec: a reload builds a new state).
    pub(crate) warns: bool,
}

/// [`Entry::caps`] of a limit.
fn caps_of(spec: &LimitSpec) -> [Cap; 4] {
    let capacity = capacity_of(spec);
    [
        Priority::Critical,
        Priority::High,
        Priority::Normal,
        Priority::Low,
    ]
    .map(|p| Cap::new(capacity * (1.0 - spec.reserve.fraction(p))))
}

fn entries_of(spec: &ProviderSpec) -> Vec<Entry> {
    let entry = |spec: LimitSpec, only_key: Option<Box<str>>| Entry {
        shared: false,
        caps: caps_of(&spec),
        name: spec.name.as_str().into(),
        spec,
        only_key,
        except_keys: Vec::new(),
        provider_slot: None,
        by_scope: HashMap::new(),
        redis_prefix: std::sync::OnceLock::new(),
    };
    let mut entries: Vec<Entry> = spec
        .limits
        .iter()
        .cloned()
        .map(|l| entry(l, None))
        .collect();
    for (key, limits) in &spec.key_limits {
        for l in limits {
            for e in entries.iter_mut().filter(|e| e.only_key.is_none()) {
                if e.spec.scope == Scope::Key && e.spec.name == l.name {
                    e.except_keys.push(key.as_str().into());
                }
            }
        }
        for l in limits {
            entries.push(entry(
                l.clone().with_scope(Scope::Key),
                Some(key.as_str().into()),
            ));
        }
    }
    for e in &mut entries {
        e.shared = spec.shares.is_some()
            && e.spec.scope == Scope::Provider
            && e.spec.unit != Unit::Concurrent
            && matches!(e.spec.window, WindowKind::Calendar { .. });
    }
    entries
}

impl ProviderState {
    /// Empty state for `spec`.
    pub fn new(spec: ProviderSpec) -> Self {
        let entries = entries_of(&spec);
        Self {
            id: NEXT_STATE_ID.fetch_add(1, Ordering::Relaxed),
            generation: 0,
            warns: entries.iter().any(|e| e.spec.warn_at.is_some()),
            entries,
            shares: spec.shares.as_ref().map(ShareTable::new),
            spec,
            slots: Vec::new(),
            free: Vec::new(),
            remaps: VecDeque::new(),
            warnings: Vec::new(),
            pool: Vec::new(),
            undo: Vec::new(),
        }
    }

    /// An empty item list, reused when possible.
    #[inline]
    pub(crate) fn take_items(&mut self) -> Vec<Item> {
        self.pool.pop().unwrap_or_default()
    }

    /// Returns an item list to the pool (bounded).
    #[inline]
    pub(crate) fn recycle(&mut self, mut items: Vec<Item>) {
        if self.pool.len() < ITEM_POOL && items.capacity() <= 64 {
            items.clear();
            self.pool.push(items);
        }
    }

    /// The provider's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The spec in force.
    pub fn spec(&self) -> &ProviderSpec {
        &self.spec
    }

    /// What to do when a call does not fit.
    pub fn on_limit(&self) -> OnLimit {
        self.spec.on_limit
    }

    /// Whether the provider runs in shadow mode.
    pub fn is_shadow(&self) -> bool {
        self.spec.shadow
    }

    /// Warnings reported since the last call (see [`WarnEvent`]).
    pub fn take_warnings(&mut self) -> Vec<WarnEvent> {
        std::mem::take(&mut self.warnings)
    }

    /// Whether warnings are waiting to be taken.
    pub fn has_warnings(&self) -> bool {
        !self.warnings.is_empty()
    }

    /// The slot of (entry, scope id), created on first use.
    #[inline]
    pub(crate) fn slot_for(&mut self, entry: usize, scope_id: &str) -> u32 {
        let e = &self.entries[entry];
        let found = if e.spec.scope == Scope::Provider {
            e.provider_slot
        } else {
            e.by_scope.get(scope_id).copied()
        };
        match found {
            Some(s) => s,
            None => self.create_slot(entry, scope_id),
        }
    }

    fn create_slot(&mut self, entry: usize, scope_id: &str) -> u32 {
        let e = &self.entries[entry];
        let slot = Slot {
            entry: entry as u32,
            scope_id: scope_id.into(),
            meter: Meter::new(&e.spec),
            warned: None,
            book: match (&self.shares, e.shared) {
                (Some(t), true) => Some(t.book(0)),
                _ => None,
            },
            outstanding: 0,
        };
        let idx = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        let e = &mut self.entries[entry];
        if e.spec.scope == Scope::Provider {
            e.provider_slot = Some(idx);
        } else {
            e.by_scope.insert(scope_id.into(), idx);
        }
        idx
    }

    /// Forgets idle key, account and client counters (nothing counted, nothing in flight),
    /// so that many distinct client ids do not grow memory forever. Returns how many.
    pub fn prune(&mut self, now: crate::quota::Micros) -> usize {
        let mut pruned = 0;
        for i in 0..self.slots.len() {
            let s = &self.slots[i];
            if s.entry == NONE || s.outstanding > 0 || s.meter.used(now) > 0.0 {
                continue;
            }
            let e = &mut self.entries[s.entry as usize];
            if e.spec.scope == Scope::Provider {
                continue;
            }
            e.by_scope.remove(&s.scope_id);
            self.slots[i].entry = NONE;
            self.slots[i].scope_id = "".into();
            self.free.push(i as u32);
            pruned += 1;
        }
        pruned
    }
}
