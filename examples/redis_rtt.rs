//! One Redis round trip at a fixed rate, for the comparison benchmark (`benches/compare.sh`):
//! the yardstick of the Redis backend's added latency (SPEC §13: "added p50 ≤ one Redis
//! round trip + 20 µs"), measured the way the proxy meets Redis in that row: one request at a
//! time, paced at the rate of the latency rounds, so that each `PING` finds both processes
//! asleep as each admission does. (`redis-benchmark -c 1` sends the next `PING` the moment a
//! reply arrives, with both sides awake: the round trip of a saturated client.)
//!
//! ```text
//! cargo build --release --example redis_rtt
//! target/release/examples/redis_rtt --addr 127.0.0.1:6379 --rate 2000 --count 8000
//! ```
//!
//! Prints `RESULT count=N rate=R p50_us=.. p90_us=.. p99_us=..` (microseconds, one decimal).
//! A blocking socket and a sleeping thread: nothing between the program and the kernel.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
// tokio's `Instant` (the project's clock rule); outside a runtime it is the OS's monotonic clock.
use tokio::time::Instant;

#[derive(Parser)]
struct Args {
    /// Redis address, host:port.
    #[arg(long)]
    addr: String,
    /// Round trips per second; 0 sends each as soon as the last is answered.
    #[arg(long, default_value_t = 2000)]
    rate: u32,
    /// Round trips measured.
    #[arg(long, default_value_t = 8000)]
    count: usize,
    /// Round trips sent first and not measured.
    #[arg(long, default_value_t = 200)]
    warmup: usize,
}

const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";
const PONG: &[u8] = b"+PONG\r\n";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.count == 0 {
        bail!("--count must be above 0");
    }
    let mut conn =
        TcpStream::connect(&args.addr).with_context(|| format!("connecting to {}", args.addr))?;
    conn.set_nodelay(true)?;
    let period = (args.rate > 0).then(|| Duration::from_secs(1) / args.rate);
    let mut samples = Vec::with_capacity(args.count);
    let mut reply = [0u8; PONG.len()];
    let start = Instant::now();
    for i in 0..args.warmup + args.count {
        if let Some(period) = period {
            let due = start + period * u32::try_from(i).context("too many round trips")?;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let sent = Instant::now();
        conn.write_all(PING).context("writing PING")?;
        conn.read_exact(&mut reply).context("reading the reply")?;
        let took = sent.elapsed();
        if reply != PONG {
            bail!("unexpected reply {:?}", String::from_utf8_lossy(&reply));
        }
        if i >= args.warmup {
            samples.push(took);
        }
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i].as_secs_f64() * 1e6
    };
    println!(
        "RESULT count={} rate={} p50_us={:.1} p90_us={:.1} p99_us={:.1}",
        samples.len(),
        args.rate,
        at(0.50),
        at(0.90),
        at(0.99)
    );
    Ok(())
}
