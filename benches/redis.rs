//! Admission latency with the Redis backend beside the local backend, in the same run:
//! one `Engine::admit` + settle against 3 limits (rolling rpm, rolling tokens per minute,
//! calendar day USD). The Redis side is one EVALSHA round trip to a local `redis-server`
//! the bench starts on a free port (and kills at the end); settles are queued to the
//! backend's worker, off the measured path, as in the proxy.
//!
//! `redis_ping_round_trip` is the floor: one bare round trip on the same connection kind.
//! `redis_backend_16_at_once` times 16 admissions started together, which the backend sends
//! as batched script calls (the first alone, the rest together while it is in flight).
//!
//! Run: `cargo bench --bench redis -- --warm-up-time 1 --measurement-time 3`

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use quota_proxy::quota::shared::{OnError, RedisBackend, RedisOptions};
use quota_proxy::quota::{
    CalendarPeriod, Costs, Demand, Engine, LimitSpec, ProviderSpec, SystemClock, Unit, WindowKind,
    SECOND,
};

const HUGE: f64 = 1e15;

fn spec() -> ProviderSpec {
    let minute = WindowKind::Rolling { len: 60 * SECOND };
    let day = WindowKind::Calendar {
        period: CalendarPeriod::Day,
        tz: chrono_tz::Europe::Berlin,
    };
    ProviderSpec::new(
        "openai",
        vec![
            LimitSpec::new("rpm", Unit::Requests, HUGE, minute),
            LimitSpec::new("tpm", Unit::Tokens, HUGE, minute),
            LimitSpec::new("daily-usd", Unit::Usd, HUGE, day),
        ],
    )
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_server() -> (Server, u16) {
    for _ in 0..20 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return (Server(child), port);
            }
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
    }
    panic!("could not start redis-server");
}

fn admit_once(rt: &tokio::runtime::Runtime, engine: &Engine, actual: &Costs) {
    let costs = Costs::default()
        .with(Unit::Tokens, 900.0)
        .with(Unit::Usd, 0.0004);
    rt.block_on(async {
        match engine.admit("openai", Demand::new("c", costs), None).await {
            Ok(p) => p.settle(actual),
            Err(e) => panic!("refused: {e}"),
        }
    });
}

/// `n` admissions at once, as `n` requests arriving together, each settled at its estimate
/// (so no correction follows them to Redis: the iteration is the batch alone).
fn admit_many(rt: &tokio::runtime::Runtime, engine: &Engine, n: usize) {
    let costs = Costs::default()
        .with(Unit::Tokens, 900.0)
        .with(Unit::Usd, 0.0004);
    rt.block_on(async {
        let calls = (0..n).map(|_| engine.admit("openai", Demand::new("c", costs), None));
        for admitted in futures_util::future::join_all(calls).await {
            match admitted {
                Ok(p) => p.settle(&costs),
                Err(e) => panic!("refused: {e}"),
            }
        }
    });
}

fn bench(c: &mut Criterion) {
    let (_server, port) = redis_server();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let actual = Costs::default()
        .with(Unit::Tokens, 700.0)
        .with(Unit::Usd, 0.0003);
    let local = Engine::new(vec![spec()], Arc::new(SystemClock::new()));
    let shared = rt.block_on(async {
        let clock = Arc::new(SystemClock::new());
        let engine = Engine::new(vec![spec()], clock.clone());
        let options =
            RedisOptions::new(format!("redis://127.0.0.1:{port}"), "bench", OnError::Deny);
        let backend = RedisBackend::connect(options, clock).await.expect("redis");
        engine.set_backend(backend);
        engine
    });
    let mut g = c.benchmark_group("admission_3_limits");
    g.bench_function("local_backend", |b| {
        b.iter(|| admit_once(&rt, &local, &actual))
    });
    g.bench_function("redis_backend", |b| {
        b.iter(|| admit_once(&rt, &shared, &actual))
    });
    g.bench_function("redis_backend_16_at_once", |b| {
        b.iter(|| admit_many(&rt, &shared, 16))
    });
    // The floor: one bare round trip (PING) on the same kind of connection.
    let mut conn = rt.block_on(async {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
        client.get_connection_manager().await.expect("connect")
    });
    g.bench_function("redis_ping_round_trip", |b| {
        b.iter(|| {
            rt.block_on(async {
                let pong: String = redis::cmd("PING")
                    .query_async(&mut conn)
                    .await
                    .expect("ping");
                pong
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
