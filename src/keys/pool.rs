//! A provider's key pool at run time [pure]: each key's state, in-flight count and what the
//! upstream last said about it ("learned limits"), and the strategy that orders the usable keys
//! for a call (`round_robin`, `least_used`, `fill_first`, `sticky` per client).

use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};

use super::state::{transition, KeyEvent, KeyState};
use super::Micros;
use crate::config::Strategy;

/// Units the upstream reports remaining amounts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LearnedUnit {
    Requests = 0,
    Tokens = 1,
    InputTokens = 2,
    OutputTokens = 3,
    Credits = 4,
}

impl LearnedUnit {
    pub const ALL: [LearnedUnit; 5] = [
        LearnedUnit::Requests,
        LearnedUnit::Tokens,
        LearnedUnit::InputTokens,
        LearnedUnit::OutputTokens,
        LearnedUnit::Credits,
    ];

    /// The unit named `name` (as [`LearnedUnit::name`] spells it).
    pub fn from_name(name: &str) -> Option<LearnedUnit> {
        LearnedUnit::ALL.into_iter().find(|u| u.name() == name)
    }

    pub fn name(self) -> &'static str {
        [
            "requests",
            "tokens",
            "input_tokens",
            "output_tokens",
            "credits",
        ][self as usize]
    }
}

/// What the upstream last said about one unit of one key (kept in the state file).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Learned {
    pub limit: Option<f64>,
    pub remaining: f64,
    pub reset_at: Option<Micros>,
    pub seen_at: Micros,
}

/// A learned remaining with no reset time is trusted this long.
pub const LEARNED_TTL: Micros = 60_000_000;

impl Learned {
    /// Until when this says a call of `cost` cannot go (None: it may go now).
    fn blocks_until(&self, cost: f64, now: Micros) -> Option<Micros> {
        let expires = self.reset_at.unwrap_or(self.seen_at + LEARNED_TTL);
        (now < expires && self.remaining < cost).then_some(expires)
    }
}

/// One key at run time.
#[derive(Debug, Clone)]
pub struct KeyRuntime {
    pub id: String,
    pub account: Option<String>,
    pub state: KeyState,
    pub in_flight: u32,
    pub sent: u64,
    pub learned: [Option<Learned>; 5],
    /// Generation of the shared record (Redis backend): a reset anywhere bumps it, and a
    /// record of a higher generation replaces this key's state instead of merging.
    pub gen: u64,
}

/// The usable keys for a call, in the order to try them, and when the first unusable one frees.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidates {
    pub usable: Vec<usize>,
    /// Earliest time an unusable key becomes usable (None: none will by itself).
    pub earliest: Option<Micros>,
}

/// A provider's pool.
#[derive(Debug, Clone)]
pub struct Pool {
    pub keys: Vec<KeyRuntime>,
    strategy: Strategy,
    next: usize,
    invalid_recheck: Micros,
}

impl Pool {
    pub fn new(
        keys: impl IntoIterator<Item = (String, Option<String>)>,
        strategy: Strategy,
        invalid_recheck: Micros,
    ) -> Self {
        let keys = keys
            .into_iter()
            .map(|(id, account)| KeyRuntime {
                id,
                account,
                state: KeyState::Active,
                in_flight: 0,
                sent: 0,
                learned: [None; 5],
                gen: 0,
            })
            .collect();
        Pool {
            keys,
            strategy,
            next: 0,
            invalid_recheck,
        }
    }

    /// Rebuilds for a new config, keeping the state of keys whose id is unchanged.
    pub fn reconfigure(&mut self, mut fresh: Pool) {
        for k in &mut fresh.keys {
            if let Some(old) = self.keys.iter().find(|o| o.id == k.id) {
                k.state = old.state;
                k.in_flight = old.in_flight;
                k.sent = old.sent;
                k.learned = old.learned;
                k.gen = old.gen;
            }
        }
        *self = fresh;
    }

    pub fn index(&self, id: &str) -> Option<usize> {
        self.keys.iter().position(|k| k.id == id)
    }

    /// The usable keys for a call needing `needs` (unit, estimated cost), in strategy order.
    pub fn candidates(
        &mut self,
        client: &str,
        needs: &[(LearnedUnit, f64)],
        now: Micros,
    ) -> Candidates {
        let n = self.keys.len();
        let mut earliest: Option<Micros> = None;
        let mut usable = Vec::with_capacity(n);
        for (i, key) in self.keys.iter().enumerate() {
            let mut blocked = key
                .state
                .at(now)
                .until()
                .filter(|_| !key.state.is_usable(now));
            let out_of_credit_forever =
                matches!(key.state.at(now), KeyState::OutOfCredit { until: None });
            for &(unit, cost) in needs {
                if let Some(until) =
                    key.learned[unit as usize].and_then(|l| l.blocks_until(cost, now))
                {
                    blocked = Some(blocked.map_or(until, |b| b.max(until)));
                }
            }
            match blocked {
                Some(t) => earliest = Some(earliest.map_or(t, |e| e.min(t))),
                None if out_of_credit_forever => {}
                None => usable.push(i),
            }
        }
        let start = match self.strategy {
            Strategy::RoundRobin => {
                let s = self.next;
                self.next = self.next.wrapping_add(1);
                s
            }
            Strategy::Sticky => {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                client.hash(&mut h);
                h.finish() as usize
            }
            Strategy::FillFirst | Strategy::LeastUsed => 0,
        };
        if n > 0 {
            let start = start % n;
            usable.sort_by_key(|&i| (i + n - start) % n);
        }
        if self.strategy == Strategy::LeastUsed {
            usable.sort_by_key(|&i| (self.keys[i].in_flight, self.keys[i].sent));
        }
        Candidates { usable, earliest }
    }

    /// A call was admitted on key `i` with these estimated costs.
    pub fn begin(&mut self, i: usize, needs: &[(LearnedUnit, f64)]) {
        if let Some(k) = self.keys.get_mut(i) {
            k.in_flight += 1;
            k.sent += 1;
            for &(unit, cost) in needs {
                if let Some(l) = &mut k.learned[unit as usize] {
                    l.remaining -= cost;
                }
            }
        }
    }

    /// The call on key `i` finished (any way).
    pub fn end(&mut self, i: usize) {
        if let Some(k) = self.keys.get_mut(i) {
            k.in_flight = k.in_flight.saturating_sub(1);
        }
    }

    /// Applies what an upstream response said about key `i`.
    pub fn observe(
        &mut self,
        i: usize,
        event: KeyEvent,
        learned: &[(LearnedUnit, Learned)],
        now: Micros,
    ) {
        let recheck = self.invalid_recheck;
        if let Some(k) = self.keys.get_mut(i) {
            k.state = transition(k.state, event, now, recheck);
            for &(unit, l) in learned {
                k.learned[unit as usize] = Some(l);
            }
        }
    }

    /// Clears a key's cooling/invalid/out_of_credit/exhausted state. False if no such key.
    pub fn reset(&mut self, id: &str) -> bool {
        match self.keys.iter_mut().find(|k| k.id == id) {
            Some(k) => {
                k.state = KeyState::Active;
                k.learned = [None; 5];
                true
            }
            None => false,
        }
    }

    /// Lets lapsed states return to active (for status and metrics).
    pub fn refresh(&mut self, now: Micros) {
        for k in &mut self.keys {
            k.state = k.state.at(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(strategy: Strategy) -> Pool {
        Pool::new(
            ["a", "b", "c"].map(|id| (id.to_string(), None)),
            strategy,
            600_000_000,
        )
    }

    fn ids(p: &Pool, c: &Candidates) -> Vec<String> {
        c.usable.iter().map(|&i| p.keys[i].id.clone()).collect()
    }

    #[test]
    fn round_robin_rotates() {
        let mut p = pool(Strategy::RoundRobin);
        let firsts: Vec<String> = (0..6)
            .map(|_| {
                let c = p.candidates("x", &[], 0);
                ids(&p, &c)[0].clone()
            })
            .collect();
        assert_eq!(firsts, ["a", "b", "c", "a", "b", "c"]);
    }

    #[test]
    fn fill_first_and_least_used() {
        let mut p = pool(Strategy::FillFirst);
        let c = p.candidates("x", &[], 0);
        assert_eq!(ids(&p, &c), ["a", "b", "c"]);
        let mut p = pool(Strategy::LeastUsed);
        p.begin(0, &[]);
        p.begin(1, &[]);
        p.end(1);
        let c = p.candidates("x", &[], 0);
        assert_eq!(
            ids(&p, &c),
            ["c", "b", "a"],
            "in-flight first, then total sent"
        );
    }

    #[test]
    fn sticky_is_stable_per_client_and_falls_back() {
        let mut p = pool(Strategy::Sticky);
        let first = ids(&p, &p.clone().candidates("team-x", &[], 0))[0].clone();
        for _ in 0..5 {
            let c = p.candidates("team-x", &[], 0);
            assert_eq!(ids(&p, &c)[0], first);
        }
        let i = p.index(&first).unwrap();
        p.observe(i, KeyEvent::RateLimited { until: 100 }, &[], 0);
        let c = p.candidates("team-x", &[], 50);
        assert_eq!(c.usable.len(), 2);
        assert!(!ids(&p, &c).contains(&first));
        assert_eq!(c.earliest, Some(100));
    }

    #[test]
    fn learned_limits_block_until_reset() {
        let mut p = pool(Strategy::FillFirst);
        let learned = Learned {
            limit: Some(100.0),
            remaining: 5.0,
            reset_at: Some(1_000),
            seen_at: 0,
        };
        p.observe(0, KeyEvent::Ok, &[(LearnedUnit::Tokens, learned)], 0);
        let needs = [(LearnedUnit::Tokens, 10.0)];
        let c = p.candidates("x", &needs, 10);
        assert_eq!(ids(&p, &c), ["b", "c"]);
        assert_eq!(c.earliest, Some(1_000));
        assert_eq!(
            ids(
                &p,
                &p.clone().candidates("x", &[(LearnedUnit::Tokens, 5.0)], 10)
            ),
            ["a", "b", "c"]
        );
        assert_eq!(
            ids(&p, &p.clone().candidates("x", &needs, 1_000)),
            ["a", "b", "c"],
            "reset passed"
        );
        // Admitting consumes the learned remaining locally.
        p.begin(0, &[(LearnedUnit::Tokens, 5.0)]);
        assert_eq!(
            ids(
                &p,
                &p.clone().candidates("x", &[(LearnedUnit::Tokens, 1.0)], 10)
            ),
            ["b", "c"]
        );
    }

    #[test]
    fn out_of_credit_without_reset_is_never_usable_until_reset() {
        let mut p = pool(Strategy::FillFirst);
        p.observe(0, KeyEvent::OutOfCredit { until: None }, &[], 0);
        let c = p.candidates("x", &[], u64::MAX / 2);
        assert_eq!(ids(&p, &c), ["b", "c"]);
        assert_eq!(c.earliest, None);
        assert!(p.reset("a"));
        assert_eq!(ids(&p, &p.clone().candidates("x", &[], 0)), ["a", "b", "c"]);
        assert!(!p.reset("zzz"));
    }

    #[test]
    fn reconfigure_keeps_state_by_id() {
        let mut p = pool(Strategy::FillFirst);
        p.observe(1, KeyEvent::Unauthorized, &[], 0);
        let fresh = Pool::new(
            ["b", "d"].map(|id| (id.to_string(), None)),
            Strategy::FillFirst,
            1,
        );
        p.reconfigure(fresh);
        assert_eq!(p.keys.len(), 2);
        assert_eq!(p.keys[0].state.name(), "invalid");
        assert_eq!(p.keys[1].state.name(), "active");
    }
}
