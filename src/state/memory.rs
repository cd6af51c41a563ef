//! `backend = "memory"`: nothing survives a restart.

use crate::state::error::StateError;
use crate::state::snapshot::Snapshot;
use crate::state::Store;

/// A store that keeps nothing: `load` finds nothing, `save` succeeds without writing.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryStore;

impl Store for MemoryStore {
    fn load(&self) -> Result<Option<Snapshot>, StateError> {
        Ok(None)
    }

    fn save(&self, _snapshot: &Snapshot) -> Result<(), StateError> {
        Ok(())
    }

    fn persists(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        "memory (nothing survives a restart)".to_string()
    }
}
