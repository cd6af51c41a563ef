//! What one admission asks of Redis (pure): the applicable limits of a demand as script
//! items, their encoding as script arguments, the decoding of the script's reply, and the
//! correction ops that settle, cancel or reconcile them.

use crate::quota::admission::{scope_id, Demand};
use crate::quota::calendar::period_bounds;
use crate::quota::clock::{Micros, SECOND};
use crate::quota::fit::non_negative;
use crate::quota::reservation::Settled;
use crate::quota::rolling::geometry;
use crate::quota::shared::keys::{counter_key_after, counter_prefix, period_key};
use crate::quota::spec::{LimitSpec, Scope, WindowKind};
use crate::quota::state::ProviderState;
use crate::quota::status::Headroom;
use crate::quota::unit::Unit;

/// How one counter is kept in Redis.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    /// A hash of sub-buckets (field = absolute sub-bucket index).
    Rolling { width: Micros, n: u64 },
    /// A hash `level`, `last`.
    Bucket { rate: f64, burst: f64 },
    /// A float per period (the period start is part of the key).
    Calendar { start: Micros, end: Micros },
    /// A sorted set of leases (member → expiry), so a crashed proxy frees its slots.
    Concurrent { lease: Micros, member: String },
}

impl Kind {
    /// The script fields of this kind: its letter and two parameters.
    pub(crate) fn args(&self) -> (&'static str, String, String) {
        match self {
            Kind::Rolling { width, n } => ("r", width.to_string(), n.to_string()),
            Kind::Bucket { rate, burst } => ("b", rate.to_string(), burst.to_string()),
            Kind::Calendar { start, end } => ("c", start.to_string(), end.to_string()),
            Kind::Concurrent { lease, member } => ("k", lease.to_string(), member.clone()),
        }
    }
}

/// The client-share rule of a shared calendar item (see [`crate::quota::shares`]): every
/// group's usage is kept in the hash `<counter>:g`, field = group name.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ShareArgs {
    /// The caller's group (index into `groups`).
    pub group: usize,
    pub borrow: bool,
    /// (field name, guaranteed fraction) per group; the last is everyone not listed.
    pub groups: Vec<(String, f64)>,
}

impl ShareArgs {
    /// The group field of the caller.
    pub fn field(&self) -> &str {
        self.groups.get(self.group).map_or("", |g| g.0.as_str())
    }
}

/// One limit+scope of an admission.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Item {
    pub key: String,
    pub kind: Kind,
    pub unit: Unit,
    pub cost: f64,
    pub cap: f64,
    pub capacity: f64,
    pub limit: String,
    pub scope: Scope,
    pub scope_id: String,
    /// The client-share rule, for provider-scope calendar limits of a provider with shares.
    pub share: Option<ShareArgs>,
}

/// What a shared reservation holds: its items and the Redis time they were counted at.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ticket {
    pub items: Vec<Item>,
    pub at: Micros,
    /// Each item's usage with this call, as Redis answered (empty when not decided there).
    pub used: Vec<f64>,
    /// Admitted by the local engine while Redis was unreachable (to reconcile).
    pub fallback: bool,
}

impl Ticket {
    /// The item with the least room after this call, as Redis counted it (for the
    /// `RateLimit` headers); `None` when Redis did not decide the call. `now` is the local
    /// time the answer is read at; reset times are carried over from Redis time by their
    /// distance from the admission.
    pub(crate) fn tightest(&self, now: Micros) -> Option<Headroom> {
        let mut best: Option<(f64, Headroom)> = None;
        for (it, &used) in self.items.iter().zip(&self.used) {
            if it.capacity <= 0.0 || matches!(it.kind, Kind::Concurrent { .. }) {
                continue;
            }
            let remaining = (it.capacity - used).max(0.0);
            let fraction = remaining / it.capacity;
            if best.as_ref().is_some_and(|(f, _)| *f <= fraction) {
                continue;
            }
            let (window_secs, resets_in) = match it.kind {
                Kind::Rolling { width, n } => (Some((width * n / SECOND).max(1)), None),
                Kind::Calendar { end, .. } => (None, Some(end.saturating_sub(self.at))),
                Kind::Bucket { rate, .. } if rate > 0.0 => {
                    (None, Some((used.max(0.0) / rate).ceil() as Micros))
                }
                _ => (None, None),
            };
            let headroom = Headroom {
                name: it.limit.as_str().into(),
                amount: it.capacity,
                remaining,
                window_secs,
                resets_at: resets_in.map(|d| now.saturating_add(d)),
            };
            best = Some((fraction, headroom));
        }
        best.map(|(_, h)| h)
    }
}

/// The script's answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reply {
    /// `used`: each item's usage including this call (concurrency: 0).
    Admitted {
        now: Micros,
        used: Vec<f64>,
    },
    /// `item` is 0-based; times are Redis times.
    Wait {
        until: Micros,
        item: usize,
        on_release: bool,
        now: Micros,
    },
    TooLarge {
        item: usize,
        now: Micros,
    },
    /// A calendar period given does not hold the server's time: recompute and retry.
    Stale {
        now: Micros,
    },
}

/// A decimal integer (optional `-`, at least one digit, no overflow).
fn integer(field: &[u8]) -> Option<i64> {
    let (negative, digits) = match field {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, field),
    };
    if digits.is_empty() {
        return None;
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_sub(i64::from(d - b'0'))?;
    }
    if negative {
        Some(v)
    } else {
        v.checked_neg()
    }
}

fn micros(v: i64) -> Micros {
    u64::try_from(v).unwrap_or(0)
}

impl Reply {
    /// Decodes the script's reply (integers separated by spaces); `None` when it is
    /// malformed.
    pub fn decode(reply: &[u8]) -> Option<Reply> {
        let mut nums = [0i64; 5];
        let mut count = 0;
        let mut used = Vec::new();
        for field in reply.split(|&b| b == b' ') {
            let v = integer(field)?;
            if count < nums.len() {
                nums[count] = v;
            }
            if count == 2 && nums[0] == 1 {
                used.reserve_exact(reply.iter().filter(|&&b| b == b' ').count() - 1);
            }
            if count >= 2 {
                used.push(v as f64 / 1000.0);
            }
            count += 1;
        }
        let index = |i: i64| usize::try_from(i - 1).ok();
        Some(match (nums[0], count) {
            (1, 2..) => Reply::Admitted {
                now: micros(nums[1]),
                used,
            },
            (0, 5) => Reply::Wait {
                until: micros(nums[1]),
                item: index(nums[2])?,
                on_release: nums[3] == 1,
                now: micros(nums[4]),
            },
            (2, 3) => Reply::TooLarge {
                item: index(nums[1])?,
                now: micros(nums[2]),
            },
            (3, 2) => Reply::Stale {
                now: micros(nums[1]),
            },
            _ => return None,
        })
    }
}

/// Per-call parameters of a plan.
pub(crate) struct PlanCtx<'a> {
    pub tag: &'a str,
    /// The best estimate of the Redis time (for calendar periods).
    pub now: Micros,
    pub lease: Micros,
    /// The lease member of a concurrency item (made only when the plan has one).
    pub member: &'a (dyn Fn() -> String + Sync),
}

impl ProviderState {
    /// The applicable limits of `d` as Redis items (same rules as the local decision:
    /// scope, per-key overrides, zero costs skipped, priority reserve applied).
    pub(crate) fn shared_plan(&self, d: &Demand<'_>, ctx: &PlanCtx<'_>) -> Vec<Item> {
        let mut items = Vec::new();
        let share = self.shares.as_ref().map(|t| ShareArgs {
            group: t.group_of(d.client),
            borrow: t.borrow(),
            groups: (0..t.groups())
                .map(|g| {
                    let field = t
                        .name(g)
                        .map_or_else(|| "*".to_string(), |n| format!("c:{n}"));
                    (field, t.fraction(g))
                })
                .collect(),
        });
        for e in &self.entries {
            let Some(sid) = scope_id(e, d) else {
                continue;
            };
            let spec = &e.spec;
            let cost = d.costs.get(spec.unit);
            if cost <= 0.0 {
                continue;
            }
            let (tag, prefix) = e
                .redis_prefix
                .get_or_init(|| (ctx.tag.to_string(), counter_prefix(ctx.tag, spec)));
            let prefix = if tag == ctx.tag {
                std::borrow::Cow::Borrowed(prefix.as_str())
            } else {
                std::borrow::Cow::Owned(counter_prefix(ctx.tag, spec))
            };
            let (kind, key, capacity) = counter_of_after(&prefix, spec, sid, ctx);
            // `e.shared`: a provider-scope calendar limit of a provider with shares.
            let share = share
                .as_ref()
                .filter(|_| e.shared && matches!(kind, Kind::Calendar { .. }))
                .cloned();
            items.push(Item {
                key,
                kind,
                unit: spec.unit,
                cost,
                cap: capacity * (1.0 - spec.reserve.fraction(d.priority)),
                capacity,
                limit: spec.name.clone(),
                scope: spec.scope,
                scope_id: sid.to_string(),
                share,
            });
        }
        items
    }
}

/// How the counter of `spec` for `scope_id` is kept: its kind, its key (calendar: of the
/// period holding `ctx.now`) and its capacity.
pub(crate) fn counter_of(
    spec: &LimitSpec,
    scope_id: &str,
    ctx: &PlanCtx<'_>,
) -> (Kind, String, f64) {
    counter_of_after(&counter_prefix(ctx.tag, spec), spec, scope_id, ctx)
}

/// [`counter_of`] with the limit's key prefix already built.
fn counter_of_after(
    prefix: &str,
    spec: &LimitSpec,
    scope_id: &str,
    ctx: &PlanCtx<'_>,
) -> (Kind, String, f64) {
    let amount = non_negative(spec.amount);
    let counter = counter_key_after(prefix, spec, scope_id);
    match spec.window {
        _ if spec.unit == Unit::Concurrent => (concurrent(ctx), counter, amount),
        WindowKind::None => (concurrent(ctx), counter, amount),
        WindowKind::Rolling { len } => {
            let (width, n) = geometry(len);
            (Kind::Rolling { width, n }, counter, amount)
        }
        WindowKind::TokenBucket { len, burst } => {
            let burst = non_negative(burst);
            let rate = amount / len.max(1) as f64;
            (Kind::Bucket { rate, burst }, counter, burst)
        }
        WindowKind::Calendar { period, tz } => {
            let (start, end) = period_bounds(period, tz, ctx.now);
            let key = period_key(&counter, start);
            (Kind::Calendar { start, end }, key, amount)
        }
    }
}

fn concurrent(ctx: &PlanCtx<'_>) -> Kind {
    Kind::Concurrent {
        lease: ctx.lease,
        member: (ctx.member)(),
    }
}

/// A share fraction or amount, read with `tonumber`: an integral value is written as an
/// integer (itoa), anything else as a float (ryu, several times the cost).
struct ScriptNum(f64);

/// Integers up to this magnitude are exact in a Lua number (a double).
const EXACT_INT: f64 = 9_007_199_254_740_992.0;

impl redis::ToRedisArgs for ScriptNum {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        let x = self.0;
        if x.fract() == 0.0 && x.abs() < EXACT_INT {
            (x as i64).write_redis_args(out)
        } else {
            x.write_redis_args(out)
        }
    }
}

/// The bytes of one item's record in the admission script's `ARGV[1]`: the kind's letter,
/// then cost, cap, p1, p2 and the count of its string fields as little-endian doubles
/// (Lua's `struct.unpack('<c1ddddd')`). Numbers travel exact, with no formatting here and
/// no parsing in the script. Each admission's records follow its item count (one double).
const RECORD: usize = 1 + 5 * 8;

fn push_record(out: &mut Vec<u8>, kind: u8, nums: [f64; 5]) {
    out.push(kind);
    for x in nums {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

/// Appends the admission script's arguments for a batch of admissions to `cmd`, after
/// their keys (every admission's items' keys, in order): `ARGV[1]`, per admission its item
/// count and one record per item ([`RECORD`]), then each item's string fields in order (a
/// concurrency lease's member; a shared calendar's group, borrow flag, amount and (field,
/// fraction) per group).
pub(crate) fn push_admit_args(cmd: &mut redis::Cmd, batch: &[&[Item]]) {
    let items = batch.iter().map(|a| a.len()).sum::<usize>();
    let mut records = Vec::with_capacity(batch.len() * 8 + items * RECORD);
    for admission in batch {
        records.extend_from_slice(&(admission.len() as f64).to_le_bytes());
        for it in *admission {
            let m = it.share.as_ref().map_or(0, |s| 3 + 2 * s.groups.len()) as f64;
            let (letter, p1, p2, m) = match &it.kind {
                Kind::Rolling { width, n } => (b'r', *width as f64, *n as f64, m),
                Kind::Bucket { rate, burst } => (b'b', *rate, *burst, m),
                Kind::Calendar { start, end } => (b'c', *start as f64, *end as f64, m),
                Kind::Concurrent { lease, .. } => (b'k', *lease as f64, 0.0, 1.0),
            };
            push_record(&mut records, letter, [it.cost, it.cap, p1, p2, m]);
        }
    }
    cmd.arg(records);
    for it in batch.iter().flat_map(|a| a.iter()) {
        if let Kind::Concurrent { member, .. } = &it.kind {
            cmd.arg(member.as_str());
        } else if let Some(s) = &it.share {
            cmd.arg(s.group + 1)
                .arg(u8::from(s.borrow))
                .arg(ScriptNum(it.capacity));
            for (field, fraction) in &s.groups {
                cmd.arg(field.as_str()).arg(ScriptNum(*fraction));
            }
        }
    }
}

/// One correction: (key, the 5 adjust-script fields).
pub(crate) type Op = (String, [String; 5]);

/// The correction of `item` by `delta` units, counted at Redis time `at`. Concurrency
/// items release their lease when `release` (settle, cancel); reconciling skips them.
pub(crate) fn adjust_op(item: &Item, at: Micros, delta: f64, release: bool) -> Option<Op> {
    let fields = match &item.kind {
        Kind::Concurrent { member, .. } if release => [
            "k".into(),
            "0".into(),
            member.clone(),
            "0".into(),
            "0".into(),
        ],
        Kind::Concurrent { .. } => return None,
        _ if delta == 0.0 || !delta.is_finite() => return None,
        Kind::Rolling { width, n } => {
            let tag = (at / width).to_string();
            [
                "r".into(),
                delta.to_string(),
                tag,
                width.to_string(),
                n.to_string(),
            ]
        }
        Kind::Bucket { rate, burst } => [
            "b".into(),
            delta.to_string(),
            "0".into(),
            rate.to_string(),
            burst.to_string(),
        ],
        Kind::Calendar { end, .. } => [
            "c".into(),
            delta.to_string(),
            item.share.as_ref().map_or("", ShareArgs::field).to_string(),
            end.to_string(),
            "0".into(),
        ],
    };
    Some((item.key.clone(), fields))
}

/// The ops that settle `ticket` to `actual` (`None`: cancel, refund everything).
pub(crate) fn settle_ops(ticket: &Ticket, how: Settled<'_>, release: bool) -> Vec<Op> {
    ticket
        .items
        .iter()
        .filter_map(|it| {
            let actual = how.amount(it.unit, it.cost);
            adjust_op(it, ticket.at, actual - it.cost, release)
        })
        .collect()
}

/// The ops that add a locally admitted reservation to the shared counters.
pub(crate) fn reconcile_ops(ticket: &Ticket) -> Vec<Op> {
    ticket
        .items
        .iter()
        .filter_map(|it| adjust_op(it, ticket.at, it.cost, false))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_numbers_are_integers_when_integral() {
        let text = |x: f64| {
            let args = redis::ToRedisArgs::to_redis_args(&ScriptNum(x));
            String::from_utf8(args.concat()).unwrap_or_default()
        };
        assert_eq!(text(1.0), "1");
        assert_eq!(text(100_000_000.0), "100000000");
        assert_eq!(text(-3.0), "-3");
        assert_eq!(text(0.0), "0");
        assert_eq!(text(0.5), "0.5");
        assert_eq!(text(0.0004), "0.0004");
        assert_eq!(text(1e300).parse::<f64>().ok(), Some(1e300));
        assert_eq!(text(f64::INFINITY), "inf");
    }

    #[test]
    fn replies_decode_or_are_refused() {
        assert_eq!(
            Reply::decode(b"1 5 2500 0"),
            Some(Reply::Admitted {
                now: 5,
                used: vec![2.5, 0.0]
            })
        );
        assert_eq!(
            Reply::decode(b"0 9 2 1 5"),
            Some(Reply::Wait {
                until: 9,
                item: 1,
                on_release: true,
                now: 5
            })
        );
        assert_eq!(
            Reply::decode(b"2 1 5"),
            Some(Reply::TooLarge { item: 0, now: 5 })
        );
        assert_eq!(Reply::decode(b"3 5"), Some(Reply::Stale { now: 5 }));
        assert_eq!(Reply::decode(b"2 0 5"), None);
        assert_eq!(Reply::decode(b"7"), None);
        assert_eq!(Reply::decode(b"1"), None);
        assert_eq!(Reply::decode(b"3 5 6"), None);
        assert_eq!(Reply::decode(b"1 5 x"), None);
        assert_eq!(Reply::decode(b"1  5"), None);
        assert_eq!(Reply::decode(b""), None);
        assert_eq!(Reply::decode(b"1 5 -"), None);
        assert_eq!(Reply::decode(b"1 5 99999999999999999999"), None);
        assert_eq!(
            Reply::decode(b"1 1733000000000000 -1500 9223372036854775807"),
            Some(Reply::Admitted {
                now: 1_733_000_000_000_000,
                used: vec![-1.5, i64::MAX as f64 / 1000.0]
            })
        );
        assert_eq!(integer(b"-9223372036854775808"), Some(i64::MIN));
    }

    #[test]
    fn settle_ops_correct_by_the_difference() {
        let item = |kind| Item {
            key: "k".into(),
            kind,
            unit: Unit::Tokens,
            cost: 10.0,
            cap: 100.0,
            capacity: 100.0,
            limit: "tpm".into(),
            scope: Scope::Provider,
            scope_id: String::new(),
            share: None,
        };
        let t = Ticket {
            items: vec![
                item(Kind::Rolling { width: 1000, n: 64 }),
                item(Kind::Concurrent {
                    lease: 5,
                    member: "m1".into(),
                }),
            ],
            at: 12_345,
            used: Vec::new(),
            fallback: false,
        };
        let ops = settle_ops(
            &t,
            Settled::Actual(&crate::quota::unit::Costs::ZERO.with(Unit::Tokens, 4.0)),
            true,
        );
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[0].1, ["r", "-6", "12", "1000", "64"].map(String::from));
        assert_eq!(ops[1].1[2], "m1");
        assert_eq!(reconcile_ops(&t).len(), 1, "leases are not reconciled");
        assert_eq!(reconcile_ops(&t)[0].1[1], "10");
        let same = settle_ops(
            &t,
            Settled::Actual(&crate::quota::unit::Costs::ZERO.with(Unit::Tokens, 10.0)),
            false,
        );
        assert!(same.is_empty());
        // Sent, cost unknown: every item keeps what it reserved; the lease is released.
        let kept = settle_ops(&t, Settled::Estimate, true);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].1[2], "m1");
        // Never sent: everything reserved comes back, and the lease is released.
        let refund = settle_ops(&t, Settled::Nothing, true);
        assert_eq!(refund.len(), 2);
        assert_eq!(refund[0].1[1], "-10");
    }
}
