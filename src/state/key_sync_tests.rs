//! `key_merge.lua` against a real `redis-server`: the script and [`merge`] agree.

use std::sync::Weak;

use super::*;
use crate::config::Strategy;
use crate::keys::{KeyState, Learned, Micros};
use crate::quota::shared::script_tests::{backend, server};

const S: Micros = 1_000_000;

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn fresh_key() -> crate::keys::KeyRuntime {
    let mut pool = Pool::new([("k".to_string(), None)], Strategy::RoundRobin, 600 * S);
    pool.keys.remove(0)
}

fn random_record(rng: &mut Rng) -> KeyRecord {
    // Real epoch-scale times: the script must not round them.
    let t = |x: u64| 1_780_000_000_000_000 + x * S + 123;
    let state = match rng.next(5) {
        0 => KeyState::Active,
        1 => KeyState::Cooling {
            until: t(rng.next(20)),
        },
        2 => KeyState::Invalid {
            recheck_at: t(rng.next(20)),
        },
        3 => KeyState::OutOfCredit { until: None },
        _ => KeyState::Exhausted {
            until: t(rng.next(20)),
        },
    };
    let mut learned = [None; 5];
    for slot in learned.iter_mut() {
        if rng.next(3) == 0 {
            let seen = rng.next(30);
            // One upstream answer per seen_at: the same time carries the same values.
            *slot = Some(Learned {
                limit: (seen % 2 == 0).then_some(100.0),
                remaining: seen as f64 / 4.0 - 2.0,
                reset_at: (seen % 3 != 0).then(|| t(seen)),
                seen_at: t(seen),
            });
        }
    }
    KeyRecord {
        gen: rng.next(3),
        state,
        learned,
    }
}

#[tokio::test]
async fn the_script_merges_exactly_like_the_proxy() {
    let srv = server().await;
    let sync = KeySync::start(backend(&srv.url).await, Weak::new());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for case in 0..150 {
        let id = format!("key-{case}");
        let records: Vec<KeyRecord> = (0..1 + rng.next(5))
            .map(|_| random_record(&mut rng))
            .collect();
        let mut local = fresh_key();
        let mut stored = None;
        for r in &records {
            merge(&mut local, r);
            stored = sync.write("p", &id, r, false).await.unwrap().unwrap();
        }
        let want = KeyRecord::of(&local);
        match stored {
            Some(got) => assert_eq!(got, want, "case {case}: {records:?}"),
            None => assert!(want.is_default(), "case {case}: {records:?}"),
        }

        // A reset bumps the generation past everything seen and clears the key.
        let reset = sync
            .write("p", &id, &KeyRecord::of(&fresh_key()), true)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(reset.state, KeyState::Active);
        assert_eq!(reset.learned, [None; 5]);
        let max_gen = records.iter().map(|r| r.gen).max().unwrap_or(0);
        assert_eq!(reset.gen, max_gen + 1, "case {case}");
    }
}
