//! Calendar windows: a counter that resets at each hour, day, week (Monday) or month
//! boundary of an IANA time zone.
//!
//! A boundary is the first instant whose local time is at or after the local boundary time:
//! a midnight skipped by a DST gap resolves to the end of the gap, a repeated one to its
//! first occurrence. Hours are cut on the local wall clock of the instant, so the repeated
//! hour of a fall-back transition is two separate hours.

use chrono::{
    DateTime, Datelike, Duration, MappedLocalTime, NaiveDate, NaiveDateTime, TimeZone, Timelike,
    Utc,
};
use chrono_tz::Tz;

use crate::quota::clock::{Micros, SECOND};
use crate::quota::fit::{fits, Cap, Fit, Undo};
use crate::quota::spec::CalendarPeriod;

const HOUR: Micros = 3600 * SECOND;

fn to_utc(t: Micros) -> DateTime<Utc> {
    let micros = i64::try_from(t).unwrap_or(i64::MAX);
    DateTime::from_timestamp_micros(micros).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn from_utc(t: DateTime<Utc>) -> Micros {
    u64::try_from(t.timestamp_micros()).unwrap_or(0)
}

/// The first instant whose local time in `tz` is `>= local`.
fn first_instant_at_or_after(tz: Tz, local: NaiveDateTime) -> Micros {
    if let Some(t) = tz.from_local_datetime(&local).earliest() {
        return from_utc(t.with_timezone(&Utc));
    }
    // In a DST gap: step to the first minute that exists; that is the end of the gap.
    let mut probe = local;
    for _ in 0..(26 * 60) {
        probe = match probe.checked_add_signed(Duration::minutes(1)) {
            Some(p) => p,
            None => break,
        };
        if let Some(t) = tz.from_local_datetime(&probe).earliest() {
            let probe_utc = from_utc(t.with_timezone(&Utc));
            // Gaps end on whole minutes in modern data; walk back to the exact second.
            return refine_gap_end(tz, local, probe_utc);
        }
    }
    from_utc(local.and_utc())
}

/// Moves back second by second (at most a minute) while local time stays `>= local`.
fn refine_gap_end(tz: Tz, local: NaiveDateTime, mut t: Micros) -> Micros {
    for _ in 0..60 {
        let prev = t.saturating_sub(SECOND);
        if to_utc(prev).with_timezone(&tz).naive_local() >= local {
            t = prev;
        } else {
            break;
        }
    }
    t
}

/// Start of the local hour containing `now`: the repeated hour of a fall-back transition
/// resolves to the occurrence `now` is in, an hour starting in a gap to the gap's end.
fn hour_start(tz: Tz, now: Micros) -> Micros {
    let local = to_utc(now).with_timezone(&tz).naive_local();
    let Some(trunc) = local.with_minute(0).and_then(|l| l.with_second(0)) else {
        return now;
    };
    let trunc = trunc.with_nanosecond(0).unwrap_or(trunc);
    let start = match tz.from_local_datetime(&trunc) {
        MappedLocalTime::Single(t) => from_utc(t.with_timezone(&Utc)),
        MappedLocalTime::Ambiguous(first, second) => {
            let second = from_utc(second.with_timezone(&Utc));
            if second <= now {
                second
            } else {
                from_utc(first.with_timezone(&Utc))
            }
        }
        MappedLocalTime::None => first_instant_at_or_after(tz, trunc),
    };
    start.min(now)
}

/// The next hour boundary after `start` (normally `start + 1 h`; 30-minute DST shifts
/// make hours of 30 or 90 minutes).
fn hour_end(tz: Tz, start: Micros) -> Micros {
    (1..=4)
        .map(|k| hour_start(tz, start.saturating_add(k * HOUR / 2)))
        .find(|&s| s > start)
        .unwrap_or(start.saturating_add(HOUR))
}

fn first_local_day(period: CalendarPeriod, date: NaiveDate) -> NaiveDate {
    match period {
        CalendarPeriod::Hour | CalendarPeriod::Day => date,
        CalendarPeriod::Week => {
            let back = Duration::days(i64::from(date.weekday().num_days_from_monday()));
            date.checked_sub_signed(back).unwrap_or(date)
        }
        CalendarPeriod::Month => date.with_day(1).unwrap_or(date),
    }
}

fn next_first_day(period: CalendarPeriod, first: NaiveDate) -> NaiveDate {
    match period {
        CalendarPeriod::Hour | CalendarPeriod::Day => first.succ_opt().unwrap_or(first),
        CalendarPeriod::Week => first.checked_add_signed(Duration::days(7)).unwrap_or(first),
        CalendarPeriod::Month => {
            let (y, m) = if first.month() == 12 {
                (first.year() + 1, 1)
            } else {
                (first.year(), first.month() + 1)
            };
            NaiveDate::from_ymd_opt(y, m, 1).unwrap_or(first)
        }
    }
}

/// Calendar arithmetic stops at 9999-12-31T00:00Z; later instants form one endless period.
const CALENDAR_END: Micros = 253_402_214_400 * SECOND;

/// `[start, end)` of the period containing `now` (UTC µs) in `tz`.
pub fn period_bounds(period: CalendarPeriod, tz: Tz, now: Micros) -> (Micros, Micros) {
    if now >= CALENDAR_END {
        return (CALENDAR_END, Micros::MAX);
    }
    if period == CalendarPeriod::Hour {
        let start = hour_start(tz, now);
        return (start, hour_end(tz, start).max(now.saturating_add(1)));
    }
    let date = to_utc(now).with_timezone(&tz).date_naive();
    let first = first_local_day(period, date);
    let start = first_instant_at_or_after(tz, first.and_time(chrono::NaiveTime::MIN));
    let next = next_first_day(period, first);
    let end = first_instant_at_or_after(tz, next.and_time(chrono::NaiveTime::MIN));
    (start.min(now), end.max(now.saturating_add(1)))
}

/// A usage counter for one calendar period. Pure: every method takes `now`.
#[derive(Debug, Clone)]
pub struct CalendarCounter {
    period: CalendarPeriod,
    tz: Tz,
    start: Micros,
    end: Micros,
    used: f64,
}

impl CalendarCounter {
    /// A counter that has seen nothing yet.
    pub fn new(period: CalendarPeriod, tz: Tz) -> Self {
        Self {
            period,
            tz,
            start: 0,
            end: 0,
            used: 0.0,
        }
    }

    /// Rolls into the period of `now` when the current one has ended; returns whether it did.
    /// A clock going backwards never rolls back.
    #[inline]
    pub fn advance(&mut self, now: Micros) -> bool {
        if now < self.end {
            return false;
        }
        let (start, end) = period_bounds(self.period, self.tz, now);
        self.start = start;
        self.end = end;
        self.used = 0.0;
        true
    }

    /// Start of the current period (identifies it in reservations).
    pub fn period_start(&self) -> Micros {
        self.start
    }

    /// End of the current period (0 before the first use).
    pub fn period_end(&self) -> Micros {
        self.end
    }

    /// Sets the usage of the period containing `start` (restoring a state file). Returns
    /// `false`, changing nothing, when that period is over at `now`.
    pub fn restore(&mut self, start: Micros, used: f64, now: Micros) -> bool {
        let (s, e) = period_bounds(self.period, self.tz, start);
        if now >= e {
            return false;
        }
        self.start = s;
        self.end = e;
        self.used = used;
        true
    }

    /// Whether `cost` fits under `cap` now, else the next reset.
    pub fn fit(&mut self, cost: f64, cap: f64, now: Micros) -> Fit {
        self.advance(now);
        if !fits(0.0, cost, cap) {
            Fit::Never
        } else if fits(self.used, cost, cap) {
            Fit::Now
        } else {
            Fit::At(self.end)
        }
    }

    /// When `self.fit(cost, cap.cap, now) == Fit::Now`, counts `cost` as [`add`](Self::add)
    /// does and returns the period start and what [`undo_add`](Self::undo_add) puts back;
    /// otherwise counts nothing.
    #[inline]
    pub(crate) fn add_if_fits(
        &mut self,
        cost: f64,
        cap: &Cap,
        now: Micros,
    ) -> Option<(Micros, Undo)> {
        self.advance(now);
        if !(cap.admits(0.0, cost) && cap.admits(self.used, cost)) {
            return None;
        }
        let undo = Undo(self.used, 0.0);
        self.used = undo.0 + cost;
        Some((self.start, undo))
    }

    /// Takes back the last [`add_if_fits`](Self::add_if_fits), with nothing changed since.
    pub(crate) fn undo_add(&mut self, undo: Undo) {
        self.used = undo.0;
    }

    /// Adds `cost`; returns the period start it landed in.
    #[inline]
    pub fn add(&mut self, cost: f64, now: Micros) -> Micros {
        self.advance(now);
        self.used += cost;
        self.start
    }

    /// Adds `delta` (may be negative, never below zero) if `period` is still current.
    pub fn adjust(&mut self, period: Micros, delta: f64, now: Micros) {
        self.advance(now);
        if period == self.start {
            self.used = (self.used + delta).max(0.0);
        }
    }

    /// Used in the period of `now`.
    pub fn used(&self, now: Micros) -> f64 {
        if now >= self.end {
            0.0
        } else {
            self.used
        }
    }

    /// When the period of `now` ends.
    pub fn resets_at(&self, now: Micros) -> Micros {
        if now >= self.end {
            period_bounds(self.period, self.tz, now).1
        } else {
            self.end
        }
    }
}

#[cfg(test)]
#[path = "calendar_tests.rs"]
mod tests;
