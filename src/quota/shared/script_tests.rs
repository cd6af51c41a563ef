//! The Lua scripts against a real `redis-server` (started per test on a free port).

use std::sync::Arc;
use std::time::Duration;

use super::plan::{settle_ops, Kind, PlanCtx, Reply, Ticket};
use super::{OnError, RedisBackend, RedisOptions};
use crate::quota::clock::{SystemClock, SECOND};
use crate::quota::reservation::Settled;
use crate::quota::spec::{CalendarPeriod, LimitSpec, ProviderSpec, WindowKind};
use crate::quota::state::ProviderState;
use crate::quota::unit::{Costs, Unit};
use crate::quota::Demand;

pub(crate) struct Server {
    child: std::process::Child,
    pub url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `redis-server` of the test's own on a free port.
pub(crate) async fn server() -> Server {
    for _ in 0..20 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let mut s = Server {
            child,
            url: format!("redis://127.0.0.1:{port}"),
        };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return s;
            }
            if s.child.try_wait().unwrap().is_some() {
                break; // port taken meanwhile: try another
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = s.child.kill();
    }
    panic!("could not start redis-server");
}

pub(crate) async fn backend(url: &str) -> Arc<RedisBackend> {
    let mut o = RedisOptions::new(url, "t", OnError::Deny);
    o.timeout = Duration::from_secs(2);
    RedisBackend::connect(o, Arc::new(SystemClock::new()))
        .await
        .unwrap()
}

fn plan(state: &ProviderState, costs: Costs, now: u64) -> Vec<super::plan::Item> {
    let ctx = PlanCtx {
        tag: "{t:p}",
        now,
        lease: 60 * SECOND,
        member: &|| "m".to_string(),
    };
    state.shared_plan(&Demand::new("c", costs), &ctx)
}

/// Limit `rpm`: `amount` requests per rolling minute.
fn rpm_limit(amount: f64) -> LimitSpec {
    LimitSpec::new(
        "rpm",
        Unit::Requests,
        amount,
        WindowKind::Rolling { len: 60 * SECOND },
    )
}

/// Provider `p` with one limit: `amount` requests per rolling minute.
fn rpm(amount: f64) -> ProviderSpec {
    ProviderSpec::new("p", vec![rpm_limit(amount)])
}

#[tokio::test]
async fn the_admission_script_is_loaded_again_when_redis_forgot_it_and_never_counted_twice() {
    let srv = server().await;
    let b = backend(&srv.url).await;
    let items = plan(&ProviderState::new(rpm(3.0)), Costs::default(), 0);
    let client = redis::Client::open(srv.url.as_str()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let loaded = |c: &mut redis::aio::MultiplexedConnection| {
        let mut c = c.clone();
        let hash = b.admit.get_hash().to_string();
        async move {
            let found: Vec<bool> = redis::cmd("SCRIPT")
                .arg("EXISTS")
                .arg(hash)
                .query_async(&mut c)
                .await
                .unwrap();
            found == [true]
        }
    };
    // Loaded when the backend connected.
    assert!(loaded(&mut c).await);
    assert!(matches!(
        b.admit(&items).await.unwrap(),
        Reply::Admitted { .. }
    ));
    assert!(loaded(&mut c).await);
    // Redis forgets its scripts (a restart, SCRIPT FLUSH): loaded again, counts go on.
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(!loaded(&mut c).await);
    assert!(matches!(
        b.admit(&items).await.unwrap(),
        Reply::Admitted { .. }
    ));
    assert!(matches!(
        b.admit(&items).await.unwrap(),
        Reply::Admitted { .. }
    ));
    // Three admitted of three: the retried calls were not counted twice.
    assert!(matches!(b.admit(&items).await.unwrap(), Reply::Wait { .. }));
}

#[tokio::test]
async fn rolling_admits_up_to_the_amount_then_names_a_time() {
    let srv = server().await;
    let b = backend(&srv.url).await;
    let state = ProviderState::new(rpm(3.0));
    let items = plan(&state, Costs::default(), 0);
    assert_eq!(items.len(), 1);
    let mut first = 0;
    for i in 0..3 {
        match b.admit(&items).await.unwrap() {
            Reply::Admitted { now, .. } if i == 0 => first = now,
            Reply::Admitted { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    let Reply::Wait {
        until,
        item: 0,
        on_release: false,
        now,
    } = b.admit(&items).await.unwrap()
    else {
        panic!("expected a wait")
    };
    let width = 60 * SECOND / 64;
    assert!(
        until >= first + 60 * SECOND && until <= now + 60 * SECOND + 2 * width,
        "{until}"
    );
    // Cancelling one admission makes room again.
    let ticket = Ticket {
        items: items.clone(),
        at: first,
        used: Vec::new(),
        fallback: false,
    };
    b.adjust_later(settle_ops(&ticket, Settled::Nothing, true));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(matches!(
        b.admit(&items).await.unwrap(),
        Reply::Admitted { .. }
    ));
    let big = plan(&state, Costs::ZERO.with(Unit::Requests, 4.0), 0);
    assert_eq!(b.admit(&big).await.unwrap().item_too_large(), Some(0));
}

#[tokio::test]
async fn bucket_calendar_and_concurrency_all_or_nothing() {
    let srv = server().await;
    let b = backend(&srv.url).await;
    let limits = vec![
        LimitSpec::new(
            "tb",
            Unit::Requests,
            60.0,
            WindowKind::TokenBucket {
                len: 60 * SECOND,
                burst: 2.0,
            },
        ),
        LimitSpec::new(
            "day",
            Unit::Credits,
            10.0,
            WindowKind::Calendar {
                period: CalendarPeriod::Day,
                tz: chrono_tz::UTC,
            },
        ),
        LimitSpec::new("conc", Unit::Concurrent, 1.0, WindowKind::None),
    ];
    let state = ProviderState::new(ProviderSpec::new("p", limits));
    let costs = Costs::default().with(Unit::Credits, 4.0);
    // The proxy's first guess of the period is wrong (time 0): stale, then right.
    let stale = plan(&state, costs, 0);
    let Reply::Stale { now } = b.admit(&stale).await.unwrap() else {
        panic!("stale")
    };
    let items = plan(&state, costs, now);
    assert!(matches!(items[1].kind, Kind::Calendar { .. }));
    assert!(matches!(
        b.admit(&items).await.unwrap(),
        Reply::Admitted { .. }
    ));
    // Concurrency is full: nothing else is counted (all or nothing).
    let mut other = plan(&state, costs, now);
    if let Kind::Concurrent { member, .. } = &mut other[2].kind {
        *member = "m2".into();
    }
    let Reply::Wait {
        on_release: true,
        item: 2,
        ..
    } = b.admit(&other).await.unwrap()
    else {
        panic!("expected a wait on release")
    };
    let ticket = Ticket {
        items,
        at: now,
        used: Vec::new(),
        fallback: false,
    };
    b.adjust_later(settle_ops(
        &ticket,
        Settled::Actual(&Costs::default().with(Unit::Credits, 5.0)),
        true,
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Level 1 of 2 tokens, 5 of 10 credits: one more fits, then the calendar binds.
    assert!(matches!(
        b.admit(&other).await.unwrap(),
        Reply::Admitted { .. }
    ));
}

impl Reply {
    fn item_too_large(self) -> Option<usize> {
        match self {
            Reply::TooLarge { item, .. } => Some(item),
            _ => None,
        }
    }
}

/// The client-share rule decided in Redis agrees with the local engine's, call for call,
/// with and without borrowing (SPEC §5).
#[tokio::test]
async fn client_shares_decide_like_the_local_engine() {
    use crate::quota::spec::ClientShares;
    use crate::quota::verdict::Admission;

    let srv = server().await;
    let b = backend(&srv.url).await;
    let clients = ["europe", "americas", "apac", "other"];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for (round, borrow) in [false, true, false, true].into_iter().enumerate() {
        let mut spec = ProviderSpec::new(
            format!("p{round}"),
            vec![LimitSpec::new(
                "day",
                Unit::Credits,
                100.0,
                WindowKind::Calendar {
                    period: CalendarPeriod::Day,
                    tz: chrono_tz::UTC,
                },
            )],
        );
        spec.shares = Some(ClientShares {
            shares: vec![("europe".into(), 0.4), ("americas".into(), 0.35)],
            borrow,
        });
        let mut local = ProviderState::new(spec);
        let state = ProviderState::new(local.spec().clone());
        let Reply::Stale { now } = b
            .admit(&plan_for(&state, "europe", 1.0, round, 0))
            .await
            .unwrap()
        else {
            panic!("the first call names the period")
        };
        let (mut admitted, mut refused) = (0, 0);
        for call in 0..60 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let client = clients[(seed % 4) as usize];
            let cost = 1.0 + ((seed >> 8) % 45) as f64;
            let want = local.try_admit(
                &Demand::new(client, Costs::default().with(Unit::Credits, cost)),
                now,
            );
            let got = b
                .admit(&plan_for(&state, client, cost, round, now))
                .await
                .unwrap();
            let same = matches!(
                (&want, &got),
                (Admission::Admitted(_), Reply::Admitted { .. })
                    | (Admission::Wait(_), Reply::Wait { .. })
                    | (Admission::TooLarge(_), Reply::TooLarge { .. })
            );
            assert!(same, "borrow {borrow}, call {call}: {client} costing {cost}: local {want:?}, redis {got:?}");
            match got {
                Reply::Admitted { .. } => admitted += 1,
                _ => refused += 1,
            }
        }
        assert!(
            admitted > 3 && refused > 3,
            "a mix of both: {admitted} / {refused}"
        );
    }
}

fn plan_for(
    state: &ProviderState,
    client: &str,
    cost: f64,
    round: usize,
    now: u64,
) -> Vec<super::plan::Item> {
    let tag = format!("{{t:p{round}}}");
    let ctx = PlanCtx {
        tag: &tag,
        now,
        lease: 60 * SECOND,
        member: &|| "m".to_string(),
    };
    state.shared_plan(
        &Demand::new(client, Costs::default().with(Unit::Credits, cost)),
        &ctx,
    )
}

/// A rolling window's running sum `s` always equals the sum of the sub-buckets it counts
/// (index `lo` and newer), through admissions, settles in both directions and sub-buckets
/// leaving the window (10 ms wide here, so many leave during the test).
#[tokio::test]
async fn the_rolling_sum_matches_its_sub_buckets() {
    use super::plan::adjust_op;

    let srv = server().await;
    let b = backend(&srv.url).await;
    let spec = ProviderSpec::new(
        "p",
        vec![LimitSpec::new(
            "tpm",
            Unit::Tokens,
            1500.0,
            WindowKind::Rolling {
                len: 640 * 1000, // 640 ms: 64 sub-buckets of 10 ms
            },
        )],
    );
    let state = ProviderState::new(spec);
    let mut conn = b.conn.load_full().expect("connected").as_ref().clone();
    let key = plan(&state, Costs::default().with(Unit::Tokens, 1.0), 0)[0]
        .key
        .clone();
    let mut seed = 0x1234_5678_9abc_def1u64;
    let (mut admitted, mut refused) = (0, 0);
    for step in 0..400 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let cost = 1.0 + (seed % 40) as f64;
        let items = plan(&state, Costs::default().with(Unit::Tokens, cost), 0);
        match b.admit(&items).await.unwrap() {
            Reply::Admitted { now, .. } => {
                admitted += 1;
                // Settle to a random actual cost, up or down (applied at once here).
                let actual = ((seed >> 8) % 60) as f64;
                if let Some(op) = adjust_op(&items[0], now, actual - cost, true) {
                    b.apply(&b.corrections(vec![op]).unwrap()).await.unwrap();
                }
            }
            _ => refused += 1,
        }
        if step % 3 == 0 {
            tokio::time::sleep(Duration::from_millis((seed >> 16) % 12)).await;
        }
        let fields: Vec<(String, f64)> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let get = |f: &str| fields.iter().find(|(k, _)| k == f).map(|(_, v)| *v);
        let (Some(s), Some(lo)) = (get("s"), get("lo")) else {
            panic!("step {step}: no bookkeeping in {fields:?}")
        };
        let counted: f64 = fields
            .iter()
            .filter_map(|(k, v)| Some((k.parse::<f64>().ok()?, *v)))
            .filter(|(b, _)| *b >= lo)
            .map(|(_, v)| v)
            .sum();
        assert!(
            (s - counted).abs() < 1e-6,
            "step {step}: s = {s}, sub-buckets from {lo} sum to {counted}: {fields:?}"
        );
        assert!(
            fields
                .iter()
                .all(|(k, _)| k.parse::<f64>().map_or(true, |b| b >= lo)),
            "step {step}: a sub-bucket older than lo = {lo} is left: {fields:?}"
        );
    }
    assert!(
        admitted > 50 && refused > 0,
        "{admitted} admitted, {refused} refused"
    );
}

/// Four limits of every kind the script caches or writes in place: 5 requests per rolling
/// hour, a token bucket of 4 refilled once a day, 9 credits a day, 3 at a time.
fn four_kinds() -> ProviderSpec {
    ProviderSpec::new(
        "p",
        vec![
            LimitSpec::new(
                "rph",
                Unit::Requests,
                5.0,
                WindowKind::Rolling { len: 3600 * SECOND },
            ),
            LimitSpec::new(
                "tb",
                Unit::Requests,
                1.0,
                WindowKind::TokenBucket {
                    len: 86_400 * SECOND,
                    burst: 4.0,
                },
            ),
            LimitSpec::new(
                "day",
                Unit::Credits,
                9.0,
                WindowKind::Calendar {
                    period: CalendarPeriod::Day,
                    tz: chrono_tz::UTC,
                },
            ),
            LimitSpec::new("conc", Unit::Concurrent, 3.0, WindowKind::None),
        ],
    )
}

/// The plans of `costs` (credits) at Redis time `now`, each with its own lease member.
fn plans_of(state: &ProviderState, costs: &[f64], now: u64) -> Vec<Vec<super::plan::Item>> {
    costs
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let member = format!("m{i}");
            let ctx = PlanCtx {
                tag: "{t:p}",
                now,
                lease: 60 * SECOND,
                member: &|| member.clone(),
            };
            state.shared_plan(
                &Demand::new("c", Costs::default().with(Unit::Credits, c)),
                &ctx,
            )
        })
        .collect()
}

/// A reply without its times (which differ between two servers by the time between calls).
fn shape(r: &Reply) -> String {
    match r {
        Reply::Admitted { used, .. } => format!("admitted {used:?}"),
        Reply::Wait {
            item, on_release, ..
        } => format!("wait on {item} (release {on_release})"),
        Reply::TooLarge { item, .. } => format!("too large {item}"),
        Reply::Stale { .. } => "stale".into(),
    }
}

/// The counters as stored: rolling sum, bucket level (3 decimals: it refills by 1/86400
/// per second), calendar usage, leases held.
async fn stored(b: &RedisBackend, items: &[super::plan::Item]) -> String {
    let mut conn = b.conn.load_full().expect("connected").as_ref().clone();
    let mut out = Vec::new();
    for it in items {
        let mut cmd = match it.kind {
            Kind::Rolling { .. } | Kind::Bucket { .. } => redis::cmd("HGET"),
            Kind::Calendar { .. } => redis::cmd("GET"),
            Kind::Concurrent { .. } => redis::cmd("ZCARD"),
        };
        cmd.arg(&it.key);
        match it.kind {
            Kind::Rolling { .. } => cmd.arg("s"),
            Kind::Bucket { .. } => cmd.arg("level"),
            _ => &mut cmd,
        };
        let v: Option<f64> = cmd.query_async(&mut conn).await.unwrap();
        out.push(format!("{}={:.3}", it.limit, v.unwrap_or(-1.0)));
    }
    out.join(" ")
}

/// One script call for many admissions decides each as if it were its own call, one after
/// another: the same answers and the same counters as the calls made singly (on a second
/// server), with the cached counters written back, a refusal in the middle counting
/// nothing, and the next single call seeing everything the batch counted.
#[tokio::test]
async fn a_batch_decides_as_its_admissions_would_one_by_one() {
    let (one, two) = (server().await, server().await);
    let (single, batched) = (backend(&one.url).await, backend(&two.url).await);
    let state = ProviderState::new(four_kinds());
    // Credits 9 a day, requests 5 an hour and 4 tokens, 3 leases: each kind binds somewhere.
    let costs = [2.0, 1.0, 8.0, 3.0, 1.0, 1.0, 2.0, 1.0, 1.0];
    let mut shapes = Vec::new();
    for b in [&single, &batched] {
        let Reply::Stale { now } = b.admit(&plans_of(&state, &[1.0], 0)[0]).await.unwrap() else {
            panic!("the first call names the period")
        };
        let plans = plans_of(&state, &costs, now);
        let replies = if Arc::ptr_eq(b, &single) {
            let mut r = Vec::new();
            for p in &plans {
                r.push(b.admit(p).await.unwrap());
            }
            r
        } else {
            let parts: Vec<&[super::plan::Item]> = plans.iter().map(Vec::as_slice).collect();
            b.admit_batch(&parts).await.unwrap()
        };
        let mut s: Vec<String> = replies.iter().map(shape).collect();
        s.push(stored(b, &plans[0]).await);
        // The next call, alone, sees what the batch counted.
        s.push(shape(
            &b.admit(&plans_of(&state, &[1.0], now)[0]).await.unwrap(),
        ));
        shapes.push(s);
    }
    assert_eq!(shapes[0], shapes[1]);
    let s = &shapes[1];
    assert!(
        s[0].starts_with("admitted") && s[1].starts_with("admitted"),
        "{s:?}"
    );
    assert!(s[2].starts_with("wait on 2"), "8 credits over 9 - 3: {s:?}");
    assert!(s[3].starts_with("admitted"), "{s:?}");
    assert!(
        s[4].starts_with("wait on 3 (release true)"),
        "3 leases held: {s:?}"
    );
    assert_eq!(
        s[costs.len()],
        "rph=3.000 tb=1.000 day=6.000 conc=3.000",
        "counters written back once, refusals counting nothing"
    );
}

/// Admissions that arrive while a script call is in flight go together in the next one:
/// 40 concurrent calls against 15 requests a minute make a few script calls, not 40, and
/// exactly 15 are admitted.
#[tokio::test]
async fn concurrent_admissions_share_script_calls_and_never_overshoot() {
    let srv = server().await;
    let b = backend(&srv.url).await;
    let state = Arc::new(ProviderState::new(rpm(15.0)));
    let mut conn = b.conn.load_full().expect("connected").as_ref().clone();
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    let calls: Vec<_> = (0..40)
        .map(|_| {
            let (b, state) = (Arc::clone(&b), Arc::clone(&state));
            tokio::spawn(async move {
                let items = plan(&state, Costs::ZERO.with(Unit::Requests, 1.0), 0);
                b.admit_coalesced(items).await.1.unwrap()
            })
        })
        .collect();
    let mut admitted = 0;
    for c in calls {
        match c.await.unwrap() {
            Reply::Admitted { .. } => admitted += 1,
            Reply::Wait { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(admitted, 15);
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    let scripts: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no EVALSHA in {info}"));
    assert!(
        (1..10).contains(&scripts),
        "{scripts} script calls for 40 admissions"
    );
}

/// A caller that goes away while its admission waits for Redis (its request cancelled)
/// has what was admitted for it refunded and its lease released, not held until the lease
/// expires.
#[tokio::test]
async fn an_admission_whose_caller_went_away_is_refunded() {
    let srv = server().await;
    let b = backend(&srv.url).await;
    let state = ProviderState::new(ProviderSpec::new(
        "p",
        vec![
            rpm_limit(10.0),
            LimitSpec::new("conc", Unit::Concurrent, 1.0, WindowKind::None),
        ],
    ));
    let items = plan(&state, Costs::ZERO.with(Unit::Requests, 1.0), 0);
    let keys: Vec<String> = items.iter().map(|it| it.key.clone()).collect();
    // Polled once: the admission is queued, then the caller is dropped before the answer.
    tokio::select! {
        biased;
        _ = b.admit_coalesced(items) => panic!("answered without a round trip"),
        () = std::future::ready(()) => {}
    }
    let mut conn = b.conn.load_full().expect("connected").as_ref().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let (mut counted, mut leases) = (None, None);
    // The refund goes through the settle worker: wait for both counters to come back.
    while tokio::time::Instant::now() < deadline {
        counted = redis::cmd("HGET")
            .arg(&keys[0])
            .arg("s")
            .query_async::<Option<f64>>(&mut conn)
            .await
            .unwrap();
        leases = Some(
            redis::cmd("ZCARD")
                .arg(&keys[1])
                .query_async::<u64>(&mut conn)
                .await
                .unwrap(),
        );
        if counted == Some(0.0) && leases == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        (counted, leases),
        (Some(0.0), Some(0)),
        "refunded and released"
    );
    // The one concurrency slot is free for the next caller.
    let next = plan(&state, Costs::ZERO.with(Unit::Requests, 1.0), 0);
    assert!(matches!(
        b.admit_coalesced(next).await.1.unwrap(),
        Reply::Admitted { .. }
    ));
}

/// A correction whose call timed out on a frozen Redis ran when Redis resumed; sent again
/// from the backlog (the proxy cannot know it ran), it changes nothing: a refund counted
/// twice would undercount. Another batch with the same ops still applies.
#[tokio::test]
async fn a_correction_that_ran_after_its_call_timed_out_is_not_applied_again() {
    let srv = server().await;
    let mut o = RedisOptions::new(&srv.url, "t", OnError::Local);
    o.timeout = Duration::from_millis(200);
    let b = RedisBackend::connect(o, Arc::new(SystemClock::new()))
        .await
        .unwrap();
    let state = ProviderState::new(rpm(3.0));
    let items = plan(&state, Costs::default(), 0);
    let mut at = 0;
    for _ in 0..3 {
        let Reply::Admitted { now, .. } = b.admit(&items).await.unwrap() else {
            panic!("three of three admitted")
        };
        at = now;
    }
    assert_eq!(stored(&b, &items).await, "rpm=3.000");
    let ticket = Ticket {
        items: items.clone(),
        at,
        used: Vec::new(),
        fallback: false,
    };
    let cancel = || {
        b.corrections(settle_ops(&ticket, Settled::Nothing, true))
            .unwrap()
    };
    let refund = cancel();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &srv.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    };
    signal("-STOP");
    let frozen = b.apply(&refund).await;
    signal("-CONT");
    assert!(
        matches!(frozen, Err(super::BackendError::Timeout(_))),
        "{frozen:?}"
    );
    // Redis runs the sending it held when it resumes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while stored(&b, &items).await != "rpm=2.000" && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stored(&b, &items).await, "rpm=2.000");
    b.apply(&refund).await.unwrap();
    assert_eq!(stored(&b, &items).await, "rpm=2.000", "applied once");
    b.apply(&cancel()).await.unwrap();
    assert_eq!(stored(&b, &items).await, "rpm=1.000", "a batch of its own");
}

/// Usage admitted locally while Redis was away is kept as one batch per provider, its
/// deltas added per counter and sub-bucket (not one batch per call, which a long outage
/// would overflow), and all of it reaches Redis once it answers.
#[tokio::test]
async fn a_backlog_of_local_usage_merges_per_counter_and_all_of_it_reaches_redis() {
    let srv = server().await;
    let b = backend(&srv.url).await;
    let state = ProviderState::new(rpm(1_000_000.0));
    let Reply::Admitted { now, .. } = b.admit(&plan(&state, Costs::default(), 0)).await.unwrap()
    else {
        panic!("admitted")
    };
    let items = plan(&state, Costs::default(), now);
    let local = |at: u64| Ticket {
        items: items.clone(),
        at,
        used: Vec::new(),
        fallback: true,
    };
    // 5,000 calls in one sub-bucket, then 5,000 in the next: one batch, two ops.
    let width = 60 * SECOND / 64;
    for i in 0..10_000u64 {
        let at = if i < 5_000 { now } else { now + width };
        b.reconcile_later(super::plan::reconcile_ops(&local(at)));
    }
    assert_eq!(b.pending(), 1, "one batch");
    assert_eq!(
        super::backend::lock(&b.pending)[0].ops.len(),
        2,
        "one op per sub-bucket"
    );
    // The worker sends it within its next tick.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while b.pending() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.pending(), 0, "flushed");
    assert_eq!(stored(&b, &items).await, "rpm=10001.000");
}
