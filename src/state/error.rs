//! What can go wrong loading or saving state: every error names the file and says what is
//! wrong with it in a sentence an operator can act on.

use std::io;
use std::path::{Path, PathBuf};

/// A state backend error.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file or directory could not be read, written, created or synced.
    #[error("state: cannot {action} {}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// What was being done (`"read"`, `"write"`, `"create directory"`, ...).
        action: &'static str,
        /// The system's answer.
        #[source]
        source: io::Error,
    },
    /// The state file exists but cannot be trusted; it is never read as zero usage.
    #[error(
        "state file {} is unusable: {problem}; it was left untouched \
         (fix it, or move it aside to start with empty counters)",
        path.display()
    )]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        problem: Corruption,
    },
    /// The snapshot could not be turned into JSON (a bug, not an I/O problem).
    #[error("state: cannot encode the snapshot: {0}")]
    Encode(String),
    /// The Redis backend could not be set up (an invalid `redis_url`).
    #[error("state backend redis: {0}")]
    Redis(String),
    /// The configured backend is not part of this build.
    #[error("state backend {0:?} is not available in this build")]
    Unsupported(&'static str),
}

impl StateError {
    pub(crate) fn io(path: &Path, action: &'static str, source: io::Error) -> Self {
        StateError::Io {
            path: path.to_path_buf(),
            action,
            source,
        }
    }
}

/// Why a state file cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    /// Zero bytes, or only whitespace.
    #[error("the file is empty (was a write cut short?)")]
    Empty,
    /// Valid so far, but it ends before the JSON is complete.
    #[error(
        "the file ends after {len} bytes, before its JSON is complete (was a write cut short?)"
    )]
    Truncated {
        /// Bytes present.
        len: usize,
    },
    /// Not JSON at all.
    #[error("it is not valid JSON: {0}")]
    NotJson(String),
    /// JSON, but not a state file, or not in the layout this build writes.
    #[error("it is not a quota-proxy state file: {0}")]
    NotStateFile(String),
    /// A state file of another format version.
    #[error("it has format version {found}; this build reads version {expected}")]
    Version {
        /// The version in the file.
        found: u64,
        /// The version this build reads and writes.
        expected: u32,
    },
    /// The payload does not hash to the stored checksum.
    #[error("checksum mismatch: the file says {stored}, its payload hashes to {actual} (torn or edited?)")]
    Checksum {
        /// The checksum written in the file.
        stored: String,
        /// The checksum of the payload as read.
        actual: String,
    },
    /// The checksum matches but the payload is not a snapshot (written by a faulty build?).
    #[error("its payload is not a valid snapshot: {0}")]
    Payload(String),
}
