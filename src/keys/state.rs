//! One key's state machine [pure] (SPEC §6): `active`, `cooling` (upstream 429 or remaining 0,
//! until Retry-After or reset), `exhausted` (a key-scope calendar limit is spent, until the
//! window resets), `invalid` (401/403, rechecked after `invalid_recheck`), `out_of_credit`
//! (until the next calendar reset or a manual reset).

use serde::{Deserialize, Serialize};

use super::Micros;

/// A key's state; every non-active state says until when (if known). In the state file it
/// reads `{"name": "cooling", "until": 1780000000000000}` (times in µs since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum KeyState {
    Active,
    Cooling { until: Micros },
    Exhausted { until: Micros },
    Invalid { recheck_at: Micros },
    OutOfCredit { until: Option<Micros> },
}

impl KeyState {
    /// The state's name as in `/status` and the `key_state` metric.
    pub fn name(&self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Cooling { .. } => "cooling",
            KeyState::Exhausted { .. } => "exhausted",
            KeyState::Invalid { .. } => "invalid",
            KeyState::OutOfCredit { .. } => "out_of_credit",
        }
    }

    /// Every state name, for resetting the `key_state` gauges.
    pub const NAMES: [&'static str; 5] =
        ["active", "cooling", "exhausted", "invalid", "out_of_credit"];

    /// Until when the key is unusable (None: usable now, or unknown for out_of_credit).
    pub fn until(&self) -> Option<Micros> {
        match *self {
            KeyState::Active => None,
            KeyState::Cooling { until } | KeyState::Exhausted { until } => Some(until),
            KeyState::Invalid { recheck_at } => Some(recheck_at),
            KeyState::OutOfCredit { until } => until,
        }
    }

    /// The state at `now`: timed states lapse back to active.
    pub fn at(self, now: Micros) -> KeyState {
        match self.until() {
            Some(t) if now >= t => KeyState::Active,
            _ => self,
        }
    }

    pub fn is_usable(&self, now: Micros) -> bool {
        matches!(self.at(now), KeyState::Active)
    }
}

/// What an upstream response says about the key that served it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeyEvent {
    /// 2xx/3xx, or an error that says nothing about the key.
    Ok,
    /// 429 or remaining 0: cool until this time.
    RateLimited { until: Micros },
    /// 401/403.
    Unauthorized,
    /// OpenAI `insufficient_quota`, Odds API credits 0.
    OutOfCredit { until: Option<Micros> },
    /// A key-scope calendar limit is spent until the window resets.
    Exhausted { until: Micros },
}

/// The next state after `event` at `now`. A longer cooling is never shortened by a shorter one.
pub fn transition(
    current: KeyState,
    event: KeyEvent,
    now: Micros,
    invalid_recheck: Micros,
) -> KeyState {
    let current = current.at(now);
    match event {
        KeyEvent::Ok => match current {
            // A success proves the key works again (e.g. after an invalid recheck).
            KeyState::Invalid { .. } | KeyState::OutOfCredit { .. } => KeyState::Active,
            other => other,
        },
        KeyEvent::RateLimited { until } => match current {
            KeyState::Cooling { until: old } if old >= until => current,
            KeyState::Invalid { .. } | KeyState::OutOfCredit { .. } => current,
            _ => KeyState::Cooling {
                until: until.max(now),
            },
        },
        KeyEvent::Unauthorized => KeyState::Invalid {
            recheck_at: now + invalid_recheck,
        },
        KeyEvent::OutOfCredit { until } => KeyState::OutOfCredit { until },
        KeyEvent::Exhausted { until } => match current {
            KeyState::Invalid { .. } | KeyState::OutOfCredit { .. } => current,
            _ => KeyState::Exhausted { until },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Micros = 1_000_000;

    #[test]
    fn transitions_table() {
        let recheck = 600 * S;
        let cases = [
            (KeyState::Active, KeyEvent::Ok, KeyState::Active),
            (
                KeyState::Active,
                KeyEvent::RateLimited { until: 20 * S },
                KeyState::Cooling { until: 20 * S },
            ),
            (
                KeyState::Cooling { until: 50 * S },
                KeyEvent::RateLimited { until: 20 * S },
                KeyState::Cooling { until: 50 * S },
            ),
            (
                KeyState::Cooling { until: 15 * S },
                KeyEvent::RateLimited { until: 20 * S },
                KeyState::Cooling { until: 20 * S },
            ),
            (
                KeyState::Active,
                KeyEvent::Unauthorized,
                KeyState::Invalid {
                    recheck_at: 10 * S + recheck,
                },
            ),
            (
                KeyState::Invalid { recheck_at: 5 * S },
                KeyEvent::Ok,
                KeyState::Active,
            ),
            (
                KeyState::Active,
                KeyEvent::OutOfCredit { until: None },
                KeyState::OutOfCredit { until: None },
            ),
            (
                KeyState::OutOfCredit { until: None },
                KeyEvent::RateLimited { until: 20 * S },
                KeyState::OutOfCredit { until: None },
            ),
            (
                KeyState::Active,
                KeyEvent::Exhausted { until: 99 * S },
                KeyState::Exhausted { until: 99 * S },
            ),
            // An expired cooling is active again before the event applies.
            (
                KeyState::Cooling { until: 5 * S },
                KeyEvent::Ok,
                KeyState::Active,
            ),
        ];
        for (from, event, want) in cases {
            assert_eq!(
                transition(from, event, 10 * S, recheck),
                want,
                "{from:?} + {event:?}"
            );
        }
    }

    #[test]
    fn timed_states_lapse() {
        let s = KeyState::Cooling { until: 10 };
        assert!(!s.is_usable(9));
        assert!(s.is_usable(10));
        assert!(!KeyState::OutOfCredit { until: None }.is_usable(u64::MAX));
        assert_eq!(KeyState::Invalid { recheck_at: 3 }.at(4), KeyState::Active);
    }
}
