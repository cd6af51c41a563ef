//! Config reloads: carry counters over to a new [`ProviderSpec`] and keep reservations made
//! before the reload settleable.

use crate::quota::meter::Meter;
use crate::quota::spec::{ProviderSpec, Scope};
use crate::quota::state::{ProviderState, Slot, NONE};

/// Reload remaps kept, so reservations made up to this many reloads ago still settle.
const REMAP_HISTORY: usize = 16;

/// Old slot → new slot after the reload that ended generation `from`.
#[derive(Debug)]
pub(crate) struct Remap {
    pub from: u64,
    pub slots: Vec<u32>,
}

impl ProviderState {
    /// Applies a new spec (config reload). Counters of limits whose name, unit, window and
    /// scope (and key, for per-key limits) are unchanged are kept, as are per-client share
    /// usages by client name; everything else starts empty. Reservations made before still
    /// settle (up to 16 reloads back).
    pub fn reconfigure(&mut self, spec: ProviderSpec) {
        let mut new = ProviderState::new(spec);
        new.id = self.id;
        new.generation = self.generation + 1;
        let mut old_slots: Vec<Option<Slot>> = std::mem::take(&mut self.slots)
            .into_iter()
            .map(Some)
            .collect();
        let mut remap = vec![NONE; old_slots.len()];
        let mut taken = vec![false; new.entries.len()];
        for old in &self.entries {
            let found =
                (0..new.entries.len()).find(|&n| !taken[n] && new.entries[n].same_identity(old));
            let Some(n) = found else { continue };
            taken[n] = true;
            let old_ids = old
                .provider_slot
                .into_iter()
                .chain(old.by_scope.values().copied());
            for old_idx in old_ids {
                let Some(mut slot) = old_slots.get_mut(old_idx as usize).and_then(Option::take)
                else {
                    continue;
                };
                slot.entry = n as u32;
                if let Meter::Bucket(_) = slot.meter {
                    let fresh = Meter::new(&new.entries[n].spec);
                    if let (Meter::Bucket(b), Meter::Bucket(f)) = (&mut slot.meter, fresh) {
                        b.set_rate_from(&f);
                    }
                }
                slot.book = match (&new.shares, new.entries[n].shared) {
                    (Some(t), true) => Some(match (&self.shares, &slot.book) {
                        (Some(old_t), Some(b)) => t.migrate(old_t, b),
                        _ => t.book(slot.meter.period_start().unwrap_or(0)),
                    }),
                    _ => None,
                };
                let idx = new.slots.len() as u32;
                let e = &mut new.entries[n];
                if e.spec.scope == Scope::Provider {
                    e.provider_slot = Some(idx);
                } else {
                    e.by_scope.insert(slot.scope_id.clone(), idx);
                }
                new.slots.push(slot);
                remap[old_idx as usize] = idx;
            }
        }
        new.remaps = std::mem::take(&mut self.remaps);
        new.remaps.push_back(Remap {
            from: self.generation,
            slots: remap,
        });
        while new.remaps.len() > REMAP_HISTORY {
            new.remaps.pop_front();
        }
        new.warnings = std::mem::take(&mut self.warnings);
        new.pool = std::mem::take(&mut self.pool);
        *self = new;
    }

    /// The current slot of a reservation item made in `generation`, if it still exists.
    #[inline]
    pub(crate) fn resolve(&self, generation: u64, slot: u32) -> Option<usize> {
        let mut slot = slot;
        if generation != self.generation {
            let first = self.remaps.iter().position(|r| r.from == generation)?;
            for r in self.remaps.iter().skip(first) {
                slot = *r.slots.get(slot as usize)?;
                if slot == NONE {
                    return None;
                }
            }
        }
        let s = self.slots.get(slot as usize)?;
        (s.entry != NONE).then_some(slot as usize)
    }
}
