//! Keepa signals, from every JSON body: `tokensLeft`, `refillIn` (ms until the next refill),
//! `refillRate` (tokens per minute) and `tokensConsumed` (this call's cost), as
//! [`SignalUnit::Credits`].
//!
//! Keepa serves a call while the balance is positive and lets it go negative; tokens older
//! than an hour expire, so the bucket holds at most `60 × refillRate` (reported as the
//! limit). When the balance is not positive, `reset_at` is when enough refills will have
//! made it positive again: the next refill plus a minute per further refill needed.

use serde::Deserialize;

use crate::signals::time::secs_to_micros;
use crate::signals::types::{SignalUnit, Signals};
use crate::signals::Micros;

#[derive(Deserialize)]
struct Fields {
    #[serde(rename = "tokensLeft")]
    tokens_left: Option<f64>,
    #[serde(rename = "refillIn")]
    refill_in: Option<f64>,
    #[serde(rename = "refillRate")]
    refill_rate: Option<f64>,
    #[serde(rename = "tokensConsumed")]
    tokens_consumed: Option<f64>,
}

/// Read the Keepa fields from a (possibly large) JSON body without building a tree.
pub(crate) fn body(status: u16, body: &[u8], now: Micros, s: &mut Signals) {
    let fields: Fields = match serde_json::from_slice(body) {
        Ok(f) => f,
        Err(e) => {
            let is_object = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
            if e.classify() == serde_json::error::Category::Data && is_object {
                s.malformed += 1; // a Keepa field with the wrong type
            }
            return;
        }
    };
    if let Some(c) = fields.tokens_consumed {
        s.cost = Some(c);
    }
    let Some(left) = fields.tokens_left else {
        return;
    };
    let rate = fields.refill_rate.filter(|r| *r > 0.0);
    let reset_at = if left <= 0.0 {
        fields.refill_in.and_then(|ms| {
            let refills = rate.map_or(1.0, |r| (-left / r).floor() + 1.0);
            secs_to_micros(ms / 1000.0 + (refills - 1.0) * 60.0).map(|d| now.saturating_add(d))
        })
    } else {
        None
    };
    let u = s.unit_mut(SignalUnit::Credits);
    u.remaining = Some(left);
    u.limit = rate.map(|r| r * 60.0).or(u.limit);
    u.reset_at = reset_at.or(u.reset_at);
    if status == 429 && s.retry_after.is_none() {
        s.retry_after = reset_at;
    }
}
