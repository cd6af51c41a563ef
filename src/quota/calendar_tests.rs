//! Calendar edge cases: DST gaps and overlaps, month lengths, leap days, year rollover.

use super::*;
use chrono_tz::{America, Asia, Australia, Europe, Pacific};
use proptest::prelude::*;

/// UTC µs of an RFC 3339 instant.
fn at(s: &str) -> Micros {
    match DateTime::parse_from_rfc3339(s) {
        Ok(t) => from_utc(t.with_timezone(&Utc)),
        Err(e) => panic!("bad test time {s}: {e}"),
    }
}

fn bounds(period: CalendarPeriod, tz: Tz, now: &str) -> (Micros, Micros) {
    period_bounds(period, tz, at(now))
}

use CalendarPeriod::{Day, Hour, Month, Week};

#[test]
fn boundary_table() {
    let utc = chrono_tz::UTC;
    #[rustfmt::skip]
    let cases: &[(CalendarPeriod, Tz, &str, &str, &str)] = &[
        // Berlin spring forward 2026-03-29 02:00 CET -> 03:00 CEST: a 23 h day.
        (Day, Europe::Berlin, "2026-03-29T12:00:00+02:00", "2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z"),
        (Day, Europe::Berlin, "2026-03-28T23:00:00Z", "2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z"),
        (Day, Europe::Berlin, "2026-03-28T22:59:59Z", "2026-03-27T23:00:00Z", "2026-03-28T23:00:00Z"),
        // Berlin fall back 2026-10-25 03:00 CEST -> 02:00 CET: a 25 h day.
        (Day, Europe::Berlin, "2026-10-25T12:00:00+01:00", "2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z"),
        // Hours around the transitions: 01:xx CET, then 03:xx CEST.
        (Hour, Europe::Berlin, "2026-03-29T00:30:00Z", "2026-03-29T00:00:00Z", "2026-03-29T01:00:00Z"),
        (Hour, Europe::Berlin, "2026-03-29T01:30:00Z", "2026-03-29T01:00:00Z", "2026-03-29T02:00:00Z"),
        // The repeated 02:xx hour is two hours: first CEST, then CET.
        (Hour, Europe::Berlin, "2026-10-25T00:30:00Z", "2026-10-25T00:00:00Z", "2026-10-25T01:00:00Z"),
        (Hour, Europe::Berlin, "2026-10-25T01:30:00Z", "2026-10-25T01:00:00Z", "2026-10-25T02:00:00Z"),
        // New York: DST starts 2026-03-08, ends 2026-11-01.
        (Day, America::New_York, "2026-03-08T12:00:00-04:00", "2026-03-08T05:00:00Z", "2026-03-09T04:00:00Z"),
        (Day, America::New_York, "2026-11-01T12:00:00-05:00", "2026-11-01T04:00:00Z", "2026-11-02T05:00:00Z"),
        (Week, America::New_York, "2026-03-08T12:00:00-04:00", "2026-03-02T05:00:00Z", "2026-03-09T04:00:00Z"),
        (Month, America::New_York, "2026-03-15T00:00:00Z", "2026-03-01T05:00:00Z", "2026-04-01T04:00:00Z"),
        // Leap year February, and the leap day itself.
        (Month, utc, "2028-02-29T23:59:59Z", "2028-02-01T00:00:00Z", "2028-03-01T00:00:00Z"),
        (Month, utc, "2027-02-10T00:00:00Z", "2027-02-01T00:00:00Z", "2027-03-01T00:00:00Z"),
        (Day, utc, "2028-02-29T10:00:00Z", "2028-02-29T00:00:00Z", "2028-03-01T00:00:00Z"),
        (Month, Europe::Berlin, "2028-02-29T23:30:00+01:00", "2028-01-31T23:00:00Z", "2028-02-29T23:00:00Z"),
        // Month ends: the last second of a 30-day month and of a non-leap February, and a
        // Berlin March that starts in CET and ends in CEST (23 h shorter than 31 days).
        (Month, Europe::Berlin, "2026-04-30T23:59:59+02:00", "2026-03-31T22:00:00Z", "2026-04-30T22:00:00Z"),
        (Month, utc, "2027-02-28T23:59:59Z", "2027-02-01T00:00:00Z", "2027-03-01T00:00:00Z"),
        (Month, Europe::Berlin, "2026-03-31T23:59:59+02:00", "2026-02-28T23:00:00Z", "2026-03-31T22:00:00Z"),
        // Year rollover: December, and a week from Monday 2026-12-28 to Monday 2027-01-04.
        (Month, utc, "2026-12-31T23:59:59Z", "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"),
        (Month, utc, "2027-01-01T00:00:00Z", "2027-01-01T00:00:00Z", "2027-02-01T00:00:00Z"),
        (Week, utc, "2026-12-31T12:00:00Z", "2026-12-28T00:00:00Z", "2027-01-04T00:00:00Z"),
        (Week, utc, "2027-01-03T23:59:59Z", "2026-12-28T00:00:00Z", "2027-01-04T00:00:00Z"),
        (Week, utc, "2027-01-04T00:00:00Z", "2027-01-04T00:00:00Z", "2027-01-11T00:00:00Z"),
        (Month, Asia::Tokyo, "2026-12-31T15:00:00Z", "2026-12-31T15:00:00Z", "2027-01-31T15:00:00Z"),
        // Half-hour and 45-minute offsets cut hours at :30 / :15 UTC.
        (Hour, Asia::Kolkata, "2026-01-01T00:10:00Z", "2025-12-31T23:30:00Z", "2026-01-01T00:30:00Z"),
        (Hour, Asia::Kathmandu, "2026-01-01T00:10:00Z", "2025-12-31T23:15:00Z", "2026-01-01T00:15:00Z"),
        // Santiago springs forward at midnight (2026-09-06 00:00 -04 -> 01:00 -03):
        // that day starts at the end of the gap and lasts 23 h.
        (Day, America::Santiago, "2026-09-06T12:00:00-03:00", "2026-09-06T04:00:00Z", "2026-09-07T03:00:00Z"),
        (Day, America::Santiago, "2026-09-05T12:00:00-04:00", "2026-09-05T04:00:00Z", "2026-09-06T04:00:00Z"),
        // Lord Howe shifts by 30 minutes (2026-10-04 02:00 +10:30 -> 02:30 +11).
        (Hour, Australia::Lord_Howe, "2026-10-03T15:10:00Z", "2026-10-03T14:30:00Z", "2026-10-03T15:30:00Z"),
        (Hour, Australia::Lord_Howe, "2026-10-03T15:40:00Z", "2026-10-03T15:30:00Z", "2026-10-03T16:00:00Z"),
    ];
    for (period, tz, now, start, end) in cases {
        assert_eq!(
            bounds(*period, *tz, now),
            (at(start), at(end)),
            "{period:?} {tz} at {now}"
        );
    }
}

#[test]
fn counter_resets_at_the_boundary() {
    let mut c = CalendarCounter::new(Day, Europe::Berlin);
    let t = at("2026-03-29T20:00:00Z"); // 22:00 CEST
    assert_eq!(c.fit(60.0, 100.0, t), Fit::Now);
    let p = c.add(60.0, t);
    assert_eq!(c.fit(50.0, 100.0, t), Fit::At(at("2026-03-29T22:00:00Z")));
    assert_eq!(c.resets_at(t), at("2026-03-29T22:00:00Z"));
    assert_eq!(c.fit(101.0, 100.0, t), Fit::Never);
    c.adjust(p, -20.0, t);
    assert_eq!(c.used(t), 40.0);
    let next = at("2026-03-29T22:00:00Z");
    assert_eq!(c.used(next), 0.0);
    assert_eq!(c.resets_at(next), at("2026-03-30T22:00:00Z"));
    assert_eq!(c.fit(100.0, 100.0, next), Fit::Now);
    // A settle for the previous period changes nothing now.
    c.adjust(p, 500.0, next);
    assert_eq!(c.used(next), 0.0);
    // The clock going backwards never resurrects an old period.
    c.add(10.0, next);
    assert_eq!(c.fit(91.0, 100.0, t), Fit::At(at("2026-03-30T22:00:00Z")));
}

const ZONES: &[Tz] = &[
    chrono_tz::UTC,
    Europe::Berlin,
    America::New_York,
    America::Santiago,
    America::St_Johns,
    Asia::Kolkata,
    Asia::Kathmandu,
    Australia::Lord_Howe,
    Pacific::Chatham,
];

fn period_strategy() -> impl Strategy<Value = CalendarPeriod> {
    prop_oneof![Just(Hour), Just(Day), Just(Week), Just(Month)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Periods tile time: `now` lies in its period, the period is the same from its start to
    /// its last µs, the next one starts at its end, and lengths and local starts are sane.
    #[test]
    fn periods_tile_time(
        zone in 0..ZONES.len(),
        period in period_strategy(),
        secs in 946_684_800u64..2_208_988_800, // 2000 .. 2040
    ) {
        let tz = ZONES[zone];
        let now = secs * SECOND + 123;
        let (start, end) = period_bounds(period, tz, now);
        prop_assert!(start <= now && now < end);
        prop_assert_eq!(period_bounds(period, tz, start), (start, end));
        prop_assert_eq!(period_bounds(period, tz, end - 1), (start, end));
        prop_assert_eq!(period_bounds(period, tz, end).0, end);
        let len = end - start;
        let h = HOUR;
        let (lo, hi) = match period {
            Hour => (h / 2, 3 * h / 2),
            Day => (22 * h, 26 * h),
            Week => (7 * 24 * h - 2 * h, 7 * 24 * h + 2 * h),
            Month => (28 * 24 * h - 2 * h, 31 * 24 * h + 2 * h),
        };
        prop_assert!(lo <= len && len <= hi, "{:?} of {} µs", period, len);
        let local = to_utc(start).with_timezone(&tz);
        match period {
            Hour => prop_assert!(local.minute() == 0 || local.minute() == 30),
            Day => prop_assert!(local.hour() <= 1 && local.minute() == 0),
            Week => prop_assert_eq!(local.weekday(), chrono::Weekday::Mon),
            Month => prop_assert_eq!(local.day(), 1),
        }
    }

    /// Any instant at all, even far beyond chrono's range: no panic, `now` inside.
    #[test]
    fn any_instant_is_safe(zone in 0..ZONES.len(), period in period_strategy(), now in any::<u64>()) {
        let (start, end) = period_bounds(period, ZONES[zone], now);
        prop_assert!(start <= now && (now < end || now == u64::MAX));
    }
}
