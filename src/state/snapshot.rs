//! [`Snapshot`]: everything that survives a restart, taken from and put back into the
//! [`Persistent`] state (quota counters, key pools, statistics).
//!
//! [`capture`] only reads; [`restore`] runs once at start, after the config's runtime has
//! been built (so every configured provider has its pool and statistics) and before any
//! call is served. Secrets never enter a snapshot: keys are named by id.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::keys::Pool;
use crate::quota::{EngineExport, ImportReport, Micros};
use crate::runtime::Persistent;
use crate::state::pools::{PoolExport, PoolReport};
use crate::stats::{ProviderStats, StatsData};

/// The snapshot format this build reads and writes.
pub const VERSION: u32 = 1;

/// Everything that survives a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Format version ([`VERSION`]).
    pub version: u32,
    /// When it was taken, µs since the epoch.
    pub saved_at: Micros,
    /// Quota counters.
    pub engine: EngineExport,
    /// Key pools by provider.
    pub pools: BTreeMap<String, PoolExport>,
    /// Totals and hourly history by provider.
    pub stats: BTreeMap<String, StatsData>,
}

/// What [`restore`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RestoreReport {
    /// When the snapshot was taken.
    pub saved_at: Micros,
    /// Quota counters restored, expired, dropped and refused.
    pub engine: ImportReport,
    /// Per provider, what restoring its pool did.
    pub pools: BTreeMap<String, PoolReport>,
    /// Providers whose statistics were restored.
    pub stats: Vec<String>,
    /// Providers in the snapshot's pools or statistics that are not configured now.
    pub unknown_providers: Vec<String>,
}

impl RestoreReport {
    /// Every value that could not be restored, one sentence each (empty when clean).
    pub fn errors(&self) -> Vec<String> {
        let engine = self.engine.errors.iter().map(ToString::to_string);
        let pools = self
            .pools
            .iter()
            .flat_map(|(p, r)| r.errors.iter().map(move |e| format!("provider {p:?}: {e}")));
        engine.chain(pools).collect()
    }

    /// Whether everything in the snapshot was restored, expired or belonged to limits,
    /// keys or providers no longer configured.
    pub fn is_clean(&self) -> bool {
        self.engine.is_clean() && self.pools.values().all(|r| r.errors.is_empty())
    }
}

impl fmt::Display for RestoreReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: usize = self.pools.values().map(|r| r.restored).sum();
        write!(
            f,
            "restored {} counters ({} already over), {} keys, statistics of {} providers",
            self.engine.restored,
            self.engine.expired,
            keys,
            self.stats.len()
        )?;
        let dropped = self.engine.unknown_limits.len() + self.engine.unknown_providers.len();
        if dropped > 0 {
            write!(
                f,
                "; dropped {dropped} limits or providers no longer configured"
            )?;
        }
        let errors = self.errors().len();
        if errors > 0 {
            write!(f, "; {errors} values could not be restored")?;
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn pools_of(p: &Persistent) -> Vec<(String, Arc<Mutex<Pool>>)> {
    lock(&p.pools)
        .iter()
        .map(|(k, v)| (k.clone(), Arc::clone(v)))
        .collect()
}

fn stats_of(p: &Persistent) -> Vec<(String, Arc<ProviderStats>)> {
    lock(&p.stats)
        .iter()
        .map(|(k, v)| (k.clone(), Arc::clone(v)))
        .collect()
}

/// The durable state at `now`. Each provider and pool is read under its own short lock
/// (no lock is held while another is taken), so serving goes on meanwhile.
pub fn capture(persistent: &Persistent, now: Micros) -> Snapshot {
    let pools = pools_of(persistent)
        .into_iter()
        .map(|(name, pool)| (name, PoolExport::capture(&lock(&pool), now)))
        .collect();
    let stats = stats_of(persistent)
        .into_iter()
        .map(|(name, s)| (name, s.data()))
        .collect();
    Snapshot {
        version: VERSION,
        saved_at: now,
        engine: persistent.engine.export(now),
        pools,
        stats,
    }
}

/// Puts `snap` back at `now`: quota counters by limit identity (windows already over start
/// fresh), key states by id (lapsed ones become active), statistics by provider. Providers,
/// limits and keys no longer configured are dropped; invalid values are reported in the
/// [`RestoreReport`], never read as zero. Call it once, before serving.
pub fn restore(persistent: &Persistent, snap: Snapshot, now: Micros) -> RestoreReport {
    let mut report = RestoreReport {
        saved_at: snap.saved_at,
        engine: persistent.engine.import(snap.engine, now),
        ..RestoreReport::default()
    };
    let pools: BTreeMap<String, Arc<Mutex<Pool>>> = pools_of(persistent).into_iter().collect();
    for (name, export) in snap.pools {
        match pools.get(&name) {
            Some(pool) => {
                let r = export.restore(&mut lock(pool), now);
                report.pools.insert(name, r);
            }
            None => report.unknown_providers.push(name),
        }
    }
    let stats: BTreeMap<String, Arc<ProviderStats>> = stats_of(persistent).into_iter().collect();
    for (name, data) in snap.stats {
        match stats.get(&name) {
            Some(s) => {
                s.restore(data);
                report.stats.push(name);
            }
            None if !report.unknown_providers.contains(&name) => {
                report.unknown_providers.push(name)
            }
            None => {}
        }
    }
    report
}

#[cfg(test)]
#[path = "snapshot_tests.rs"]
mod tests;
