//! The Lua scripts against a real `redis-server` (started per test on a free port).

use std::sync::Arc;
use std::time::Duration;

use super::plan::{admit_args, settle_ops, Kind, PlanCtx, Reply, Ticket};
use super::{OnError, RedisBackend, RedisOptions};
use crate::quota::clock::{SystemClock, SECOND};
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
        member: "m",
    };
    state.shared_plan(&Demand::new("c", costs), &ctx)
}

#[tokio::test]
async fn rolling_admits_up_to_the_amount_then_names_a_time() {
    let srv = server().await;
    let b = backend(&srv.url).await;
    let spec = ProviderSpec::new(
        "p",
        vec![LimitSpec::new(
            "rpm",
            Unit::Requests,
            3.0,
            WindowKind::Rolling { len: 60 * SECOND },
        )],
    );
    let state = ProviderState::new(spec);
    let items = plan(&state, Costs::default(), 0);
    assert_eq!(admit_args(&items)[0], "1");
    let mut first = 0;
    for i in 0..3 {
        match b.admit(&items).await.unwrap() {
            Reply::Admitted { now } if i == 0 => first = now,
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
        fallback: false,
    };
    b.adjust_later(settle_ops(&ticket, None, true));
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
        fallback: false,
    };
    b.adjust_later(settle_ops(
        &ticket,
        Some(&Costs::default().with(Unit::Credits, 5.0)),
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
                (&want, got),
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
        member: "m",
    };
    state.shared_plan(
        &Demand::new(client, Costs::default().with(Unit::Credits, cost)),
        &ctx,
    )
}
