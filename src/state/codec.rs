//! The state file's bytes [pure]: a JSON envelope whose checksum covers the exact payload
//! bytes, so a torn, truncated or edited file is recognised instead of read as zero usage.
//!
//! ```text
//! {"format":"quota-proxy-state","version":1,"checksum":"sha256:<hex>","payload":{...}}
//! ```
//!
//! The checksum is over the payload's bytes as written, not over a re-serialisation:
//! JSON number parsing need not give back the identical float, so re-encoding could
//! disagree with a perfectly good file. Hence the layout is fixed: `decode` accepts the
//! envelope exactly as `encode` writes it (any trailing whitespace aside).

use ring::digest::{digest, SHA256};

use crate::state::error::Corruption;
use crate::state::snapshot::{Snapshot, VERSION};

/// The envelope's `format` value.
pub const FORMAT: &str = "quota-proxy-state";

fn checksum(payload: &[u8]) -> String {
    let hash = digest(&SHA256, payload);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in hash.as_ref() {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

fn header(version: u64, checksum: &str) -> String {
    format!(r#"{{"format":"{FORMAT}","version":{version},"checksum":"{checksum}","payload":"#)
}

/// The file's bytes for `snap` (one line).
pub fn encode(snap: &Snapshot) -> Result<Vec<u8>, serde_json::Error> {
    let payload = serde_json::to_vec(snap)?;
    let mut out = header(u64::from(VERSION), &checksum(&payload)).into_bytes();
    out.extend_from_slice(&payload);
    out.extend_from_slice(b"}\n");
    Ok(out)
}

fn not_json(e: &serde_json::Error, len: usize) -> Corruption {
    if e.is_eof() {
        Corruption::Truncated { len }
    } else {
        Corruption::NotJson(e.to_string())
    }
}

/// The snapshot in `bytes`, or what is wrong with them.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, Corruption> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Corruption::Empty);
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| not_json(&e, bytes.len()))?;
    let not_state = |why: &str| Corruption::NotStateFile(why.to_string());
    let obj = value
        .as_object()
        .ok_or_else(|| not_state("it is not a JSON object"))?;
    if obj.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(not_state(&format!("its \"format\" is not {FORMAT:?}")));
    }
    let version = obj
        .get("version")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| not_state("it has no \"version\""))?;
    if version != u64::from(VERSION) {
        return Err(Corruption::Version {
            found: version,
            expected: VERSION,
        });
    }
    let stored = obj
        .get("checksum")
        .and_then(|c| c.as_str())
        .ok_or_else(|| not_state("it has no \"checksum\""))?;
    let head = header(version, stored);
    let payload = bytes
        .strip_prefix(head.as_bytes())
        .map(|rest| rest.trim_ascii_end())
        .and_then(|rest| rest.strip_suffix(b"}"))
        .ok_or_else(|| not_state("it is not laid out as this build writes it (edited by hand?)"))?;
    let actual = checksum(payload);
    if actual != stored {
        return Err(Corruption::Checksum {
            stored: stored.to_string(),
            actual,
        });
    }
    let snap: Snapshot =
        serde_json::from_slice(payload).map_err(|e| Corruption::Payload(e.to_string()))?;
    if snap.version != VERSION {
        return Err(Corruption::Version {
            found: u64::from(snap.version),
            expected: VERSION,
        });
    }
    Ok(snap)
}
