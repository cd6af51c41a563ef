//! One API key's shared record (Redis backend) [pure]: its state and learned upstream
//! signals as a flat Redis hash, and the merge every replica and the server-side script
//! apply alike, so that all replicas converge on the same view whatever the order of
//! updates:
//!
//! - a record of a higher generation replaces the key's state (a manual reset bumps it);
//! - within one generation the stricter state wins: any state over `active`, then the later
//!   `until` (none = until a manual reset);
//! - per unit, the signal seen last wins.
//!
//! Hash fields: `gen`, `state`, `until` (µs or empty), and per learned unit `<unit>.rem`,
//! `<unit>.lim`, `<unit>.rst`, `<unit>.seen` (µs). Keys are named by id only.

use crate::keys::{KeyRuntime, KeyState, Learned, LearnedUnit, Micros};
use crate::quota::shared::keys::escape;

/// What the replicas share about one key.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeyRecord {
    pub gen: u64,
    pub state: KeyState,
    pub learned: [Option<Learned>; 5],
}

impl KeyRecord {
    /// The shared part of a local key.
    pub fn of(k: &KeyRuntime) -> Self {
        KeyRecord {
            gen: k.gen,
            state: k.state,
            learned: k.learned,
        }
    }

    /// Whether there is anything to share (a fresh key is not written).
    pub fn is_default(&self) -> bool {
        self.gen == 0 && self.state == KeyState::Active && self.learned.iter().all(Option::is_none)
    }

    /// The merge script's arguments after the reset/generation flag, TTL and channel
    /// (see `key_merge.lua`): state, until, then 5 fields per learned unit.
    pub fn state_args(&self) -> [String; 2] {
        [
            self.state.name().to_string(),
            self.state
                .until()
                .map(|t| t.to_string())
                .unwrap_or_default(),
        ]
    }

    /// 5 fields per learned unit: name, remaining, limit, reset, seen.
    pub fn learned_args(&self) -> Vec<String> {
        let opt = |v: Option<String>| v.unwrap_or_default();
        LearnedUnit::ALL
            .into_iter()
            .filter_map(|u| Some((u, self.learned[u as usize]?)))
            .flat_map(|(u, l)| {
                [
                    u.name().to_string(),
                    l.remaining.to_string(),
                    opt(l.limit.map(|x| x.to_string())),
                    opt(l.reset_at.map(|x| x.to_string())),
                    l.seen_at.to_string(),
                ]
            })
            .collect()
    }

    /// Decodes HGETALL pairs (`[field, value, ...]`). `None` for an empty hash; unknown
    /// fields are ignored, a malformed value is an error naming the field.
    pub fn decode(pairs: &[String]) -> Result<Option<KeyRecord>, String> {
        if pairs.is_empty() {
            return Ok(None);
        }
        let field = |name: &str| {
            pairs
                .chunks_exact(2)
                .find(|c| c[0] == name)
                .map(|c| c[1].as_str())
        };
        let num = |name: &str| -> Result<Option<f64>, String> {
            match field(name) {
                None | Some("") => Ok(None),
                Some(v) => v
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .map(Some)
                    .ok_or_else(|| format!("field {name}: {v:?} is not a number")),
            }
        };
        let micros = |name: &str| num(name).map(|v| v.map(|x| x.max(0.0) as Micros));
        let gen = micros("gen")?.unwrap_or(0);
        let until = micros("until")?;
        let state = match (field("state").unwrap_or("active"), until) {
            ("active", _) => KeyState::Active,
            ("cooling", Some(until)) => KeyState::Cooling { until },
            ("exhausted", Some(until)) => KeyState::Exhausted { until },
            ("invalid", Some(recheck_at)) => KeyState::Invalid { recheck_at },
            ("out_of_credit", until) => KeyState::OutOfCredit { until },
            (other, _) => return Err(format!("state {other:?} without a valid until")),
        };
        let mut learned = [None; 5];
        for u in LearnedUnit::ALL {
            let n = u.name();
            let (Some(remaining), Some(seen_at)) =
                (num(&format!("{n}.rem"))?, micros(&format!("{n}.seen"))?)
            else {
                continue;
            };
            learned[u as usize] = Some(Learned {
                limit: num(&format!("{n}.lim"))?,
                remaining,
                reset_at: micros(&format!("{n}.rst"))?,
                seen_at,
            });
        }
        Ok(Some(KeyRecord {
            gen,
            state,
            learned,
        }))
    }
}

/// How strict a state is: active below everything, then by `until` (none = forever), then
/// by name, so that every replica breaks ties alike.
fn rank(s: KeyState) -> Option<(Micros, &'static str)> {
    match s {
        KeyState::Active => None,
        other => Some((other.until().unwrap_or(Micros::MAX), other.name())),
    }
}

/// Merges a shared record into a local key; true when the local key changed.
pub fn merge(local: &mut KeyRuntime, remote: &KeyRecord) -> bool {
    if remote.gen > local.gen {
        let changed = local.state != remote.state || local.learned != remote.learned;
        local.gen = remote.gen;
        local.state = remote.state;
        local.learned = remote.learned;
        return changed;
    }
    if remote.gen < local.gen {
        return false;
    }
    let mut changed = false;
    if rank(remote.state) > rank(local.state) {
        local.state = remote.state;
        changed = true;
    }
    for (mine, theirs) in local.learned.iter_mut().zip(remote.learned) {
        let Some(theirs) = theirs else { continue };
        if mine.is_none_or(|m| theirs.seen_at > m.seen_at) {
            *mine = Some(theirs);
            changed = true;
        }
    }
    changed
}

/// The Redis key of one API key's record: `{<prefix>:<provider>}:key:<id>`.
pub fn record_key(tag: &str, id: &str) -> String {
    format!("{tag}:key:{}", escape(id))
}

#[cfg(test)]
#[path = "key_record_tests.rs"]
mod tests;
