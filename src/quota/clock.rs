//! Time as the quota engine sees it: wall-clock microseconds, injected through [`Clock`].
//!
//! Pure code never reads a clock: it takes `now: Micros`. Only the engine façade asks a
//! [`Clock`], so tests drive time with [`ManualClock`] or with paused tokio time through
//! [`SystemClock`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Microseconds since the UNIX epoch (wall clock; calendar windows need wall time).
pub type Micros = u64;

/// One second in [`Micros`].
pub const SECOND: Micros = 1_000_000;

/// A source of the current wall-clock time.
pub trait Clock: Send + Sync {
    /// The current time in microseconds since the UNIX epoch.
    fn now(&self) -> Micros;
}

/// The real wall clock, advanced by tokio's monotonic clock.
///
/// The wall time is read once at creation; afterwards time advances with
/// [`tokio::time::Instant`], so it never jumps backwards and tests running with
/// `#[tokio::test(start_paused = true)]` move it with `tokio::time::advance`.
#[derive(Debug, Clone)]
pub struct SystemClock {
    base_wall: Micros,
    base: tokio::time::Instant,
}

/// The wall clock now, for a clock's base.
// The one place the wall clock is read: everything else takes time from a `Clock`.
#[allow(clippy::disallowed_methods)]
fn wall_now() -> Micros {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    duration_micros(wall)
}

impl SystemClock {
    /// Captures the wall clock and tokio's clock now.
    pub fn new() -> Self {
        Self {
            base_wall: wall_now(),
            base: tokio::time::Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Micros {
        self.base_wall
            .saturating_add(duration_micros(self.base.elapsed()))
    }
}

/// The clock the proxy runs with: the wall clock read once, then advanced by `quanta`'s
/// monotonic clock (the CPU's time-stamp counter, calibrated against the OS clock, or the OS
/// clock itself where the counter is unreliable). Reading it costs about a third of a
/// `clock_gettime` call, and an admission reads the clock once (the same source governor
/// uses). Tests that move time use [`SystemClock`] (tokio's clock) or [`ManualClock`].
#[derive(Debug, Clone)]
pub struct FastClock {
    base_wall: Micros,
    clock: quanta::Clock,
    /// The clock's raw reading at `base_wall` (scaled only as a difference, once per read).
    base_raw: u64,
    /// Microseconds per raw tick, in units of 2^-64 µs: a read is one multiplication.
    micros_per_tick: u64,
}

/// Ticks over which [`FastClock`] takes its scale from `quanta`'s calibration: about six
/// minutes of a 3 GHz counter, so the scale keeps eleven significant digits.
const SCALE_TICKS_LOG2: u32 = 40;

impl FastClock {
    /// Captures the wall clock and the monotonic clock now (calibrates on first use).
    pub fn new() -> Self {
        let clock = quanta::Clock::new();
        let base_raw = clock.raw();
        // quanta's nanoseconds for 2^40 ticks, as 2^-64 µs per tick.
        let nanos = clock.delta_as_nanos(0, 1 << SCALE_TICKS_LOG2);
        let scale = (u128::from(nanos) << (64 - SCALE_TICKS_LOG2)) / 1_000;
        Self {
            base_wall: wall_now(),
            clock,
            base_raw,
            micros_per_tick: u64::try_from(scale).unwrap_or(u64::MAX),
        }
    }
}

impl Default for FastClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for FastClock {
    fn now(&self) -> Micros {
        // A counter read on another core may trail the base by a little: that reads as 0.
        let ticks = self.clock.raw().saturating_sub(self.base_raw);
        let micros = (u128::from(ticks) * u128::from(self.micros_per_tick)) >> 64;
        self.base_wall.saturating_add(micros as Micros)
    }
}

/// A clock that moves only when told to; for tests and simulations.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicU64,
}

impl ManualClock {
    /// A clock reading `now`.
    pub fn new(now: Micros) -> Self {
        Self {
            now: AtomicU64::new(now),
        }
    }

    /// Sets the time (it may go backwards; the quota state tolerates that).
    pub fn set(&self, now: Micros) {
        self.now.store(now, Ordering::SeqCst);
    }

    /// Moves the time forward by `by` microseconds.
    pub fn advance(&self, by: Micros) {
        self.now.fetch_add(by, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Micros {
        self.now.load(Ordering::SeqCst)
    }
}

/// A [`Duration`] in whole microseconds, saturating.
pub fn duration_micros(d: Duration) -> Micros {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(5);
        assert_eq!(c.now(), 5);
        c.advance(10);
        assert_eq!(c.now(), 15);
        c.set(3);
        assert_eq!(c.now(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn system_clock_follows_paused_tokio_time() {
        let c = SystemClock::new();
        let t0 = c.now();
        assert!(t0 > 1_600_000_000 * SECOND, "wall time, not process time");
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(c.now() - t0, 90 * SECOND);
    }

    #[test]
    fn fast_clock_starts_at_wall_time_and_advances_with_the_os_clock() {
        use tokio::time::Instant;
        let c = FastClock::new();
        let (a0, t0, b0) = (Instant::now(), c.now(), Instant::now());
        assert!(t0 > 1_600_000_000 * SECOND, "wall time, not process time");
        std::thread::sleep(Duration::from_millis(50));
        let (a1, t1, b1) = (Instant::now(), c.now(), Instant::now());
        // Bracketed by OS clock reads, so preemption cannot fail it; 1 ms for calibration.
        let shortest = duration_micros(a1.duration_since(b0));
        let longest = duration_micros(b1.duration_since(a0));
        let moved = t1 - t0;
        assert!(
            moved + 1_000 >= shortest && moved <= longest + 1_000,
            "moved {moved} us; the OS clock moved {shortest}..{longest} us"
        );
    }
}
