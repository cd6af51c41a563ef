//! Durable state (SPEC §11, §12): quota counters, key states, upstream signals and history
//! survive a restart.
//!
//! ```text
//!  start:     Store::load ─▶ Snapshot ─▶ restore(&Persistent, snap, now)   (before serving)
//!  every      capture(&Persistent, now) ─▶ Snapshot ─▶ Store::save          (flush_interval,
//!  interval                                                                   and at shutdown)
//! ```
//!
//! - [`Snapshot`]: plain data with absolute times ([`crate::quota::EngineExport`],
//!   [`PoolExport`] by key id, [`crate::stats::StatsData`]); [`capture`] and [`restore`]
//!   move it out of and into [`crate::runtime::Persistent`]. No secrets: keys by id only.
//! - [`Store`]: the narrow backend trait. [`MemoryStore`] keeps nothing; [`LocalStore`]
//!   writes `<dir>/state.json` atomically (temp file → fsync → rename → fsync of the
//!   directory, created 0700).
//! - The file carries a format version and a SHA-256 checksum of its payload: a torn,
//!   truncated, edited or foreign file is a [`StateError::Corrupt`] that names the file and
//!   what is wrong, and is never read as zero usage.
//!
//! Saves are blocking file I/O: call [`Store::save`] from `spawn_blocking`.

mod codec;
mod error;
mod key_record;
mod key_sync;
mod local;
mod memory;
mod pools;
mod redis;
mod snapshot;

pub use codec::FORMAT;
pub use error::{Corruption, StateError};
pub use key_record::{merge as merge_key_record, KeyRecord};
pub use key_sync::KeySync;
pub use local::{LocalStore, STATE_FILE};
pub use memory::MemoryStore;
pub use pools::{KeyExport, PoolExport, PoolReport};
pub use redis::{open_shared, redis_options};
pub use snapshot::{capture, restore, RestoreReport, Snapshot, VERSION};

use crate::config::{Backend, StateSettings};

/// Where snapshots are kept.
pub trait Store: Send + Sync {
    /// The last snapshot saved, `Ok(None)` when there is none yet, or an error when it
    /// exists but cannot be read or trusted.
    fn load(&self) -> Result<Option<Snapshot>, StateError>;

    /// Saves `snapshot` in place of the previous one, atomically.
    fn save(&self, snapshot: &Snapshot) -> Result<(), StateError>;

    /// Whether a save keeps anything. A store that keeps nothing is never flushed, so no
    /// snapshot is taken and no blocking thread is started for it.
    fn persists(&self) -> bool {
        true
    }

    /// The backend in words, for logs (`"local file state/state.json"`).
    fn describe(&self) -> String {
        std::any::type_name::<Self>().to_string()
    }
}

/// The store `settings` ask for: `memory`, or `local` under `dir` (created, and cleaned of
/// temp files a crash left). With `redis` the counters live in Redis ([`open_shared`])
/// and nothing is snapshotted locally.
pub fn open(settings: &StateSettings) -> Result<Box<dyn Store>, StateError> {
    match settings.backend {
        Backend::Memory => Ok(Box::new(MemoryStore)),
        Backend::Local => Ok(Box::new(LocalStore::open(&settings.dir)?)),
        Backend::Redis => Ok(Box::new(MemoryStore)),
    }
}
