//! A key pool in the state file ([`PoolExport`]): per key id, its state, how many calls it
//! was sent, and what the upstream last said about it (learned limits). Keys are named by
//! id only, never by secret; calls in flight belong to the process that made them and are
//! not kept.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::keys::{KeyState, Learned, LearnedUnit, Micros, Pool};

/// One pool's keys, by key id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolExport {
    /// Keys by id.
    pub keys: BTreeMap<String, KeyExport>,
}

/// One key's durable state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyExport {
    /// Its state (timed states that lapsed by the export are written as active).
    pub state: KeyState,
    /// Calls sent with it (orders `least_used`).
    pub sent: u64,
    /// What the upstream last said, by unit name (`requests`, `tokens`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub learned: BTreeMap<String, Learned>,
}

/// What restoring one pool did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolReport {
    /// Keys restored.
    pub restored: usize,
    /// Exported key ids not in the pool now (ignored).
    pub unknown_keys: Vec<String>,
    /// Keys or values that could not be restored, and why.
    pub errors: Vec<String>,
}

fn check_learned(id: &str, unit: &str, l: &Learned) -> Result<(), String> {
    let bad = |what: &str| format!("key {id:?}, learned {unit}: {what}");
    if !l.remaining.is_finite() {
        return Err(bad("remaining is not a finite number"));
    }
    match l.limit {
        Some(limit) if !limit.is_finite() => Err(bad("limit is not a finite number")),
        Some(limit) if limit < 0.0 => Err(bad("limit is negative")),
        _ => Ok(()),
    }
}

impl PoolExport {
    /// The durable part of `pool` at `now`.
    pub fn capture(pool: &Pool, now: Micros) -> Self {
        let keys = pool
            .keys
            .iter()
            .map(|k| {
                let learned = LearnedUnit::ALL
                    .into_iter()
                    .filter_map(|u| Some((u.name().to_string(), k.learned[u as usize]?)))
                    .collect();
                let export = KeyExport {
                    state: k.state.at(now),
                    sent: k.sent,
                    learned,
                };
                (k.id.clone(), export)
            })
            .collect();
        PoolExport { keys }
    }

    /// Restores keys by id into `pool` at `now`: states that lapsed meanwhile become active,
    /// unknown ids are ignored. A key with an invalid value is left as it is and reported.
    pub fn restore(self, pool: &mut Pool, now: Micros) -> PoolReport {
        let mut report = PoolReport::default();
        for (id, export) in self.keys {
            let Some(i) = pool.index(&id) else {
                report.unknown_keys.push(id);
                continue;
            };
            match learned_of(&id, &export.learned) {
                Ok(learned) => {
                    let k = &mut pool.keys[i];
                    k.state = export.state.at(now);
                    k.sent = export.sent;
                    k.learned = learned;
                    report.restored += 1;
                }
                Err(e) => report.errors.push(e),
            }
        }
        report
    }
}

fn learned_of(
    id: &str,
    exported: &BTreeMap<String, Learned>,
) -> Result<[Option<Learned>; 5], String> {
    let mut learned = [None; 5];
    for (unit, l) in exported {
        let u = LearnedUnit::from_name(unit)
            .ok_or_else(|| format!("key {id:?}: unknown learned unit {unit:?}"))?;
        check_learned(id, unit, l)?;
        learned[u as usize] = Some(*l);
    }
    Ok(learned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Strategy;
    use crate::keys::KeyEvent;

    const S: Micros = 1_000_000;

    fn pool(ids: &[&str]) -> Pool {
        Pool::new(
            ids.iter().map(|id| (id.to_string(), None)),
            Strategy::FillFirst,
            600 * S,
        )
    }

    fn learned(remaining: f64) -> Learned {
        Learned {
            limit: Some(100.0),
            remaining,
            reset_at: Some(500 * S),
            seen_at: 10 * S,
        }
    }

    #[test]
    fn round_trip_by_id_through_json() {
        let mut p = pool(&["a", "b", "c", "d"]);
        p.observe(0, KeyEvent::RateLimited { until: 300 * S }, &[], 10 * S);
        p.observe(1, KeyEvent::Unauthorized, &[], 10 * S);
        p.observe(2, KeyEvent::OutOfCredit { until: None }, &[], 10 * S);
        p.observe(3, KeyEvent::RateLimited { until: 20 * S }, &[], 10 * S);
        p.observe(
            0,
            KeyEvent::Ok,
            &[(LearnedUnit::Tokens, learned(-5.0))],
            10 * S,
        );
        p.begin(1, &[]);
        p.begin(1, &[]);
        let export = PoolExport::capture(&p, 30 * S);
        let json = serde_json::to_string(&export).unwrap();
        assert!(
            json.contains(r#""state":{"name":"cooling","until":300000000}"#),
            "{json}"
        );
        assert_eq!(
            export.keys["d"].state,
            KeyState::Active,
            "lapsed at capture"
        );
        let back: PoolExport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, export);

        // The new config drops "c" and adds "e"; "a" moved in the list.
        let mut fresh = pool(&["e", "b", "a"]);
        let report = back.restore(&mut fresh, 40 * S);
        assert_eq!(report.restored, 2);
        assert_eq!(report.unknown_keys, ["c", "d"]);
        assert!(report.errors.is_empty());
        let a = &fresh.keys[2];
        assert_eq!(a.state, KeyState::Cooling { until: 300 * S });
        assert_eq!(a.learned[LearnedUnit::Tokens as usize], Some(learned(-5.0)));
        assert_eq!(fresh.keys[1].state.name(), "invalid");
        assert_eq!((fresh.keys[1].sent, fresh.keys[1].in_flight), (2, 0));
        assert_eq!(fresh.keys[0].state, KeyState::Active);
    }

    #[test]
    fn lapsed_states_become_active_and_bad_values_are_reported() {
        let mut p = pool(&["a", "b"]);
        p.observe(0, KeyEvent::RateLimited { until: 300 * S }, &[], 10 * S);
        let mut export = PoolExport::capture(&p, 10 * S);
        let mut fresh = pool(&["a", "b"]);
        export.clone().restore(&mut fresh, 301 * S);
        assert_eq!(
            fresh.keys[0].state,
            KeyState::Active,
            "lapsed before the restart"
        );

        export.keys.get_mut("b").unwrap().learned =
            [("bytes".to_string(), learned(1.0))].into_iter().collect();
        let mut nan = learned(1.0);
        nan.limit = Some(f64::NAN);
        export.keys.get_mut("a").unwrap().learned =
            [("tokens".to_string(), nan)].into_iter().collect();
        let mut fresh = pool(&["a", "b"]);
        let report = export.restore(&mut fresh, 20 * S);
        assert_eq!(report.restored, 0);
        assert_eq!(report.errors.len(), 2, "{report:?}");
        assert!(report.errors[0].contains("not a finite number"));
        assert!(report.errors[1].contains("unknown learned unit \"bytes\""));
        assert_eq!(fresh.keys[0].state, KeyState::Active, "left as it was");
    }
}
