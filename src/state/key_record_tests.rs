use proptest::prelude::*;

use super::*;
use crate::config::Strategy as KeyStrategy;
use crate::keys::Pool;

const S: Micros = 1_000_000;

fn key(state: KeyState, gen: u64) -> KeyRuntime {
    let mut pool = Pool::new([("k".to_string(), None)], KeyStrategy::RoundRobin, 600 * S);
    let mut k = pool.keys.remove(0);
    k.state = state;
    k.gen = gen;
    k
}

fn learned(remaining: f64, seen_at: Micros) -> Learned {
    Learned {
        limit: Some(100.0),
        remaining,
        reset_at: Some(seen_at + 60 * S),
        seen_at,
    }
}

/// What the script stores for a record: HSET of its arguments.
fn stored(r: &KeyRecord) -> Vec<String> {
    let [state, until] = r.state_args();
    let mut pairs = vec![
        "gen".into(),
        r.gen.to_string(),
        "state".into(),
        state,
        "until".into(),
        until,
    ];
    for u in r.learned_args().chunks(5) {
        for (suffix, v) in ["rem", "lim", "rst", "seen"].iter().zip(&u[1..]) {
            pairs.push(format!("{}.{suffix}", u[0]));
            pairs.push(v.clone());
        }
    }
    pairs
}

#[test]
fn records_round_trip_through_the_hash_fields() {
    let states = [
        KeyState::Active,
        KeyState::Cooling {
            until: 1_780_000_000_123_456,
        },
        KeyState::Exhausted { until: 42 * S },
        KeyState::Invalid { recheck_at: 7 * S },
        KeyState::OutOfCredit { until: None },
        KeyState::OutOfCredit { until: Some(9 * S) },
    ];
    for state in states {
        let mut k = key(state, 3);
        k.learned[LearnedUnit::Tokens as usize] = Some(learned(12.5, 1_780_000_000_654_321));
        k.learned[LearnedUnit::Credits as usize] = Some(Learned {
            limit: None,
            remaining: -3.0,
            reset_at: None,
            seen_at: 5,
        });
        let r = KeyRecord::of(&k);
        assert_eq!(KeyRecord::decode(&stored(&r)), Ok(Some(r)), "{state:?}");
    }
    assert_eq!(KeyRecord::decode(&[]), Ok(None));
}

#[test]
fn malformed_fields_are_errors_naming_them() {
    let bad = |pairs: &[&str]| {
        KeyRecord::decode(&pairs.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap_err()
    };
    assert!(bad(&["gen", "x"]).contains("gen"));
    assert!(bad(&["state", "cooling"]).contains("cooling"));
    assert!(bad(&["state", "frozen", "until", "5"]).contains("frozen"));
    assert!(bad(&["tokens.rem", "NaN", "tokens.seen", "1"]).contains("tokens.rem"));
}

#[test]
fn merge_rules() {
    let cooling = |until| KeyState::Cooling { until };
    // (local, remote, expected local after)
    let cases = [
        // Any state beats active within a generation; active never clears a state.
        (
            key(KeyState::Active, 0),
            key(cooling(10 * S), 0),
            cooling(10 * S),
        ),
        (
            key(cooling(10 * S), 0),
            key(KeyState::Active, 0),
            cooling(10 * S),
        ),
        // The later until wins; no until (out of credit) is forever.
        (
            key(cooling(10 * S), 0),
            key(cooling(20 * S), 0),
            cooling(20 * S),
        ),
        (
            key(cooling(20 * S), 0),
            key(cooling(10 * S), 0),
            cooling(20 * S),
        ),
        (
            key(cooling(20 * S), 0),
            key(KeyState::OutOfCredit { until: None }, 0),
            KeyState::OutOfCredit { until: None },
        ),
        // A higher generation (a reset) replaces; a lower one is ignored.
        (
            key(cooling(20 * S), 1),
            key(KeyState::Active, 2),
            KeyState::Active,
        ),
        (
            key(KeyState::Active, 2),
            key(cooling(20 * S), 1),
            KeyState::Active,
        ),
    ];
    for (mut local, remote, want) in cases {
        let r = KeyRecord::of(&remote);
        merge(&mut local, &r);
        assert_eq!(local.state, want, "remote {r:?}");
    }
}

#[test]
fn the_signal_seen_last_wins_per_unit() {
    let mut local = key(KeyState::Active, 0);
    local.learned[0] = Some(learned(5.0, 20));
    local.learned[1] = Some(learned(7.0, 10));
    let mut remote = key(KeyState::Active, 0);
    remote.learned[0] = Some(learned(1.0, 15));
    remote.learned[1] = Some(learned(2.0, 30));
    remote.learned[4] = Some(learned(3.0, 1));
    assert!(merge(&mut local, &KeyRecord::of(&remote)));
    assert_eq!(local.learned[0], Some(learned(5.0, 20)));
    assert_eq!(local.learned[1], Some(learned(2.0, 30)));
    assert_eq!(local.learned[4], Some(learned(3.0, 1)));
    assert!(!merge(&mut local, &KeyRecord::of(&remote)), "idempotent");
}

fn any_state() -> impl Strategy<Value = KeyState> {
    prop_oneof![
        Just(KeyState::Active),
        (1u64..50).prop_map(|t| KeyState::Cooling { until: t * S }),
        (1u64..50).prop_map(|t| KeyState::Invalid { recheck_at: t * S }),
        proptest::option::of(1u64..50).prop_map(|t| KeyState::OutOfCredit {
            until: t.map(|t| t * S)
        }),
    ]
}

fn any_record() -> impl Strategy<Value = KeyRecord> {
    (
        0u64..3,
        any_state(),
        proptest::option::of((0u64..100, 0u64..5)),
    )
        .prop_map(|(gen, state, l)| {
            let mut k = key(state, gen);
            // The same seen_at always carries the same value (one upstream answer).
            k.learned[1] = l.map(|(seen, _)| learned(seen as f64, seen));
            KeyRecord::of(&k)
        })
}

fn apply_all(records: &[KeyRecord]) -> KeyRecord {
    let mut k = key(KeyState::Active, 0);
    for r in records {
        merge(&mut k, r);
    }
    KeyRecord::of(&k)
}

proptest! {
    /// Replicas converge: the merged view does not depend on the order updates arrive in.
    #[test]
    fn merge_is_order_independent(mut records in proptest::collection::vec(any_record(), 1..6), seed in any::<u64>()) {
        let forward = apply_all(&records);
        let n = records.len();
        records.rotate_left((seed as usize) % n);
        if seed % 2 == 0 {
            records.reverse();
        }
        prop_assert_eq!(apply_all(&records), forward);
    }
}
