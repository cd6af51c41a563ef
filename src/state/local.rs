//! `backend = "local"`: one file, `<dir>/state.json`, replaced atomically on every save.
//!
//! A save writes `state.json.tmp.<pid>` (mode 0600), fsyncs it, renames it over
//! `state.json` and fsyncs the directory, so after a crash the file is either the old
//! snapshot or the new one, never a mix. A temp file left by a crash mid-write is never
//! read, and [`LocalStore::open`] removes it. The directory is created with mode 0700.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::state::codec;
use crate::state::error::StateError;
use crate::state::snapshot::Snapshot;
use crate::state::Store;

/// The state file's name inside the directory.
pub const STATE_FILE: &str = "state.json";
/// Temp files are this prefix plus the writer's process id.
const TEMP_PREFIX: &str = "state.json.tmp.";

/// A durable store in one directory.
#[derive(Debug)]
pub struct LocalStore {
    dir: PathBuf,
    file: PathBuf,
    /// Serialises saves: they share one temp file.
    writing: Mutex<()>,
}

impl LocalStore {
    /// A store under `dir`; nothing is touched until it is used.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            file: dir.join(STATE_FILE),
            dir,
            writing: Mutex::new(()),
        }
    }

    /// A store under `dir`, creating it (mode 0700) if missing and removing temp files a
    /// crash left behind. Fails when the directory cannot be created or listed.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StateError> {
        let store = Self::new(dir);
        store.ensure_dir()?;
        store.remove_stale_temps()?;
        Ok(store)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.file
    }

    fn ensure_dir(&self) -> Result<(), StateError> {
        match fs::metadata(&self.dir) {
            Ok(m) if m.is_dir() => return Ok(()),
            Ok(_) => {
                let e = std::io::Error::new(ErrorKind::AlreadyExists, "not a directory");
                return Err(StateError::io(&self.dir, "use directory", e));
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(StateError::io(&self.dir, "inspect directory", e)),
        }
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| StateError::io(&self.dir, "create directory", e))?;
        // The umask may have narrowed 0700 further; never leave it wider or unusable.
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| StateError::io(&self.dir, "set permissions of", e))
    }

    /// Removes temp files left by a crash mid-write; returns how many.
    fn remove_stale_temps(&self) -> Result<usize, StateError> {
        let entries =
            fs::read_dir(&self.dir).map_err(|e| StateError::io(&self.dir, "list directory", e))?;
        let mut removed = 0;
        for entry in entries.flatten() {
            let stale = entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(TEMP_PREFIX));
            // A temp file that cannot be removed is harmless: it is never read.
            if stale && fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn temp_path(&self) -> PathBuf {
        self.dir
            .join(format!("{TEMP_PREFIX}{}", std::process::id()))
    }

    fn write_temp(&self, tmp: &Path, bytes: &[u8]) -> Result<(), StateError> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(tmp)
            .map_err(|e| StateError::io(tmp, "create", e))?;
        f.write_all(bytes)
            .map_err(|e| StateError::io(tmp, "write", e))?;
        f.sync_all().map_err(|e| StateError::io(tmp, "fsync", e))
    }

    fn replace(&self, bytes: &[u8]) -> Result<(), StateError> {
        let tmp = self.temp_path();
        let written = self.write_temp(&tmp, bytes).and_then(|()| {
            fs::rename(&tmp, &self.file).map_err(|e| StateError::io(&self.file, "replace", e))
        });
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StateError::io(&self.dir, "fsync directory", e))
    }
}

impl Store for LocalStore {
    /// `Ok(None)` when there is no state file yet; an error when it cannot be read or
    /// trusted (see [`StateError::Corrupt`]), never an empty snapshot.
    fn load(&self) -> Result<Option<Snapshot>, StateError> {
        let bytes = match fs::read(&self.file) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StateError::io(&self.file, "read", e)),
        };
        codec::decode(&bytes)
            .map(Some)
            .map_err(|problem| StateError::Corrupt {
                path: self.file.clone(),
                problem,
            })
    }

    fn save(&self, snapshot: &Snapshot) -> Result<(), StateError> {
        let bytes = codec::encode(snapshot).map_err(|e| StateError::Encode(e.to_string()))?;
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        self.ensure_dir()?;
        self.replace(&bytes)
    }

    fn describe(&self) -> String {
        format!("local file {}", self.file.display())
    }
}

#[cfg(test)]
#[path = "local_tests.rs"]
mod tests;
