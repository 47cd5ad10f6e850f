//! When a cron schedule fires, as one pure function over (expression, time
//! zone, instant).
//!
//! Expressions are POSIX cron with 5 fields (minute hour day-of-month month
//! day-of-week), or 6 with seconds first, or an alias (`@yearly`,
//! `@monthly`, `@weekly`, `@daily`, `@hourly`). Day-of-week numbers follow
//! POSIX (0 or 7 is Sunday); the `cron` crate underneath counts 1 = Sunday,
//! so numbers are translated to names before it sees them.
//!
//! Fire times are wall-clock times in an IANA zone. Daylight-saving changes:
//! - a local time that does not exist (spring forward) fires once, at the
//!   first instant after the gap (02:30 in Berlin on the last Sunday of March
//!   fires at 03:00 CEST);
//! - a local time that occurs twice (fall back) fires once, at its first
//!   occurrence.
//!
//! Nothing in this module reads a clock or the database.

use std::str::FromStr;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

/// A parsed schedule: its expression and zone.
#[derive(Debug, Clone)]
pub struct CronSpec {
    schedule: cron::Schedule,
    tz: Tz,
}

/// Why an expression or zone was refused, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("cron: {0}")]
    Cron(String),
    #[error("timezone: {0}")]
    Timezone(String),
}

impl ScheduleError {
    /// The request field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            ScheduleError::Cron(_) => "cron",
            ScheduleError::Timezone(_) => "timezone",
        }
    }
}

const DAY_NAMES: [&str; 8] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"];

impl CronSpec {
    /// Parses `expr` in the IANA zone `timezone` (e.g. `Europe/Berlin`, `UTC`).
    pub fn parse(expr: &str, timezone: &str) -> Result<CronSpec, ScheduleError> {
        let tz = Tz::from_str(timezone.trim()).map_err(|_| {
            ScheduleError::Timezone(format!("`{timezone}` is not an IANA time zone (e.g. `UTC`, `Europe/Berlin`)"))
        })?;
        let expr = expr.trim();
        let crate_expr = if expr.starts_with('@') {
            expr.to_owned()
        } else {
            let fields: Vec<&str> = expr.split_whitespace().collect();
            let (seconds, rest) = match fields.len() {
                5 => ("0", &fields[..]),
                6 => (fields[0], &fields[1..]),
                n => {
                    return Err(ScheduleError::Cron(format!(
                        "`{expr}` has {n} fields; give 5 (minute hour day month weekday), 6 (with seconds first) \
                         or an alias such as @hourly"
                    )))
                }
            };
            let weekday = posix_weekday(rest[4]).map_err(ScheduleError::Cron)?;
            format!("{seconds} {} {} {} {} {weekday}", rest[0], rest[1], rest[2], rest[3])
        };
        let schedule = cron::Schedule::from_str(&crate_expr)
            .map_err(|e| ScheduleError::Cron(format!("`{expr}`: {}", e.to_string().lines().last().unwrap_or(""))))?;
        if schedule.upcoming(Utc).next().is_none() {
            return Err(ScheduleError::Cron(format!("`{expr}` never fires")));
        }
        Ok(CronSpec { schedule, tz })
    }

    /// The zone fire times are read in.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The first fire time strictly after `after`, or None if there is none.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Walk the schedule's wall-clock times from `after`'s local time on;
        // cron reads a naive time as if it were UTC, which is exactly a wall clock.
        let local = after.with_timezone(&self.tz).naive_local();
        let start = Utc.from_utc_datetime(&(local - chrono::Duration::seconds(1)));
        // A wall clock repeats at most one hour per fall-back, so a bounded walk always gets past it.
        for candidate in self.schedule.after(&start).take(10_000) {
            let instant = self.instant_of(candidate.naive_utc());
            if instant > after {
                return Some(instant);
            }
        }
        None
    }

    /// The next `n` fire times after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut at = after;
        while out.len() < n {
            match self.next_after(at) {
                Some(next) => {
                    out.push(next);
                    at = next;
                }
                None => break,
            }
        }
        out
    }

    /// The instant a wall-clock time means in this zone: its first occurrence
    /// if it repeats, the end of the gap if it does not exist.
    fn instant_of(&self, wall: NaiveDateTime) -> DateTime<Utc> {
        match self.tz.from_local_datetime(&wall) {
            chrono::LocalResult::Single(t) => t.with_timezone(&Utc),
            chrono::LocalResult::Ambiguous(first, second) => first.min(second).with_timezone(&Utc),
            chrono::LocalResult::None => {
                // In a gap: the first instant whose wall clock is at or past `wall`.
                // Gaps are at most a few hours; search a day around it by bisection.
                let mut lo = Utc.from_utc_datetime(&wall) - chrono::Duration::hours(26);
                let mut hi = Utc.from_utc_datetime(&wall) + chrono::Duration::hours(26);
                while hi - lo > chrono::Duration::seconds(1) {
                    let mid = lo + (hi - lo) / 2;
                    if mid.with_timezone(&self.tz).naive_local() >= wall {
                        hi = mid;
                    } else {
                        lo = mid;
                    }
                }
                hi
            }
        }
    }
}

/// A POSIX day-of-week field (0-7, 0 and 7 both Sunday, names allowed) as
/// the `cron` crate reads it (names only, so no numbering can be misread).
fn posix_weekday(field: &str) -> Result<String, String> {
    let name = |token: &str| -> Result<String, String> {
        match token.parse::<usize>() {
            Ok(n) if n <= 7 => Ok(DAY_NAMES[n].to_owned()),
            Ok(n) => Err(format!("day of week {n} is out of range (0-7, 0 and 7 are Sunday)")),
            Err(_) => Ok(token.to_owned()),
        }
    };
    let mut out = Vec::new();
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (part, None),
        };
        let step = step.map(|s| format!("/{s}")).unwrap_or_default();
        match range.split_once('-') {
            // `5-7` (Friday to Sunday): the crate cannot wrap past Saturday.
            Some((from, "7")) if step.is_empty() => {
                out.push(format!("{}-SAT", name(from)?));
                out.push("SUN".to_owned());
            }
            Some((from, to)) => out.push(format!("{}-{}{step}", name(from)?, name(to)?)),
            None if range == "*" || range == "?" => out.push(format!("{range}{step}")),
            None => out.push(format!("{}{step}", name(range)?)),
        }
    }
    Ok(out.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    fn fires(expr: &str, tz: &str, after: &str, n: usize) -> Vec<String> {
        CronSpec::parse(expr, tz)
            .unwrap()
            .upcoming(utc(after), n)
            .into_iter()
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .collect()
    }

    #[test]
    fn fire_times_over_the_calendar_and_daylight_saving() {
        // (expression, zone, after, expected fire times in UTC)
        let table: &[(&str, &str, &str, &[&str])] = &[
            ("*/15 * * * *", "UTC", "2026-12-02T10:07:00Z", &["2026-12-02T10:15:00Z", "2026-12-02T10:30:00Z"]),
            ("0 9 * * 1-5", "UTC", "2026-12-04T12:00:00Z", &["2026-12-07T09:00:00Z", "2026-12-08T09:00:00Z"]),
            // POSIX weekdays: 0 and 7 are Sunday (2026-12-06 is a Sunday), 6 is Saturday.
            ("0 0 * * 0", "UTC", "2026-12-02T00:00:00Z", &["2026-12-06T00:00:00Z"]),
            ("0 0 * * 7", "UTC", "2026-12-02T00:00:00Z", &["2026-12-06T00:00:00Z"]),
            ("0 0 * * 6", "UTC", "2026-12-02T00:00:00Z", &["2026-12-05T00:00:00Z"]),
            (
                "0 0 * * 5-7",
                "UTC",
                "2026-12-02T00:00:00Z",
                &["2026-12-04T00:00:00Z", "2026-12-05T00:00:00Z", "2026-12-06T00:00:00Z", "2026-12-11T00:00:00Z"],
            ),
            // Month ends and leap days.
            ("0 12 31 * *", "UTC", "2026-01-31T13:00:00Z", &["2026-03-31T12:00:00Z", "2026-05-31T12:00:00Z"]),
            ("0 0 29 2 *", "UTC", "2026-12-02T00:00:00Z", &["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"]),
            ("@yearly", "UTC", "2026-12-02T00:00:00Z", &["2027-01-01T00:00:00Z", "2028-01-01T00:00:00Z"]),
            ("@hourly", "UTC", "2026-12-02T10:00:00Z", &["2026-12-02T11:00:00Z"]),
            // Seconds (6 fields).
            ("*/20 * * * * *", "UTC", "2026-12-02T10:00:05Z", &["2026-12-02T10:00:20Z", "2026-12-02T10:00:40Z"]),
            // A zone: 09:00 in New York is 14:00 UTC in winter, 13:00 in summer.
            (
                "0 9 * * *",
                "America/New_York",
                "2026-03-06T00:00:00Z",
                &["2026-03-06T14:00:00Z", "2026-03-07T14:00:00Z", "2026-03-08T13:00:00Z"],
            ),
            // Berlin springs forward on 2026-03-29 (02:00 CET -> 03:00 CEST): 02:30 does not
            // exist and fires once at 03:00 CEST (01:00 UTC); the next day is normal again.
            (
                "30 2 * * *",
                "Europe/Berlin",
                "2026-03-28T00:00:00Z",
                &["2026-03-28T01:30:00Z", "2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"],
            ),
            // Every 30 minutes across the gap: 01:30, then 02:00 and 02:30 (both missing) and
            // 03:00 CEST all mean 01:00 UTC, which fires once.
            (
                "*/30 * * * *",
                "Europe/Berlin",
                "2026-03-29T00:15:00Z",
                &["2026-03-29T00:30:00Z", "2026-03-29T01:00:00Z", "2026-03-29T01:30:00Z"],
            ),
            // Berlin falls back on 2026-10-25 (03:00 CEST -> 02:00 CET): 02:30 happens twice
            // and fires once, at its first occurrence (00:30 UTC).
            ("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00Z", &["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]),
            // Hourly across the repeated hour: 02:00 and 03:00 local each fire once; the repeated
            // 02:00 (01:00 UTC) does not fire again.
            (
                "0 * * * *",
                "Europe/Berlin",
                "2026-10-24T23:30:00Z",
                &["2026-10-25T00:00:00Z", "2026-10-25T02:00:00Z", "2026-10-25T03:00:00Z"],
            ),
            // New York springs forward on 2026-03-08 at 02:00 EST -> 03:00 EDT.
            (
                "30 2 * * *",
                "America/New_York",
                "2026-03-07T12:00:00Z",
                &["2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"],
            ),
            // ...and falls back on 2026-11-01 at 02:00 EDT -> 01:00 EST: 01:30 fires once (EDT).
            (
                "30 1 * * *",
                "America/New_York",
                "2026-10-31T12:00:00Z",
                &["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"],
            ),
        ];
        for (expr, tz, after, expected) in table {
            assert_eq!(fires(expr, tz, after, expected.len()), *expected, "{expr} in {tz} after {after}");
        }
    }

    #[test]
    fn a_fire_time_is_strictly_after_the_instant_given() {
        let spec = CronSpec::parse("0 * * * *", "UTC").unwrap();
        assert_eq!(spec.next_after(utc("2026-12-02T10:00:00Z")), Some(utc("2026-12-02T11:00:00Z")));
        assert_eq!(spec.next_after(utc("2026-12-02T09:59:59Z")), Some(utc("2026-12-02T10:00:00Z")));
    }

    #[test]
    fn bad_expressions_and_zones_name_their_field() {
        let cases = [
            ("* * * *", "UTC", "cron", "has 4 fields"),
            ("61 * * * *", "UTC", "cron", "61"),
            ("0 0 * * 8", "UTC", "cron", "out of range"),
            ("0 0 31 2 *", "UTC", "cron", "never fires"),
            ("@sometimes", "UTC", "cron", "@sometimes"),
            ("0 * * * *", "Mars/Olympus", "timezone", "Mars/Olympus"),
            ("*/0 * * * *", "UTC", "cron", "*/0"),
            ("59-0 * * * *", "UTC", "cron", "59-0"),
            ("0 0 0 0 0", "UTC", "cron", "0 0 0 0 0"),
            ("* * * * * * *", "UTC", "cron", "7 fields"),
            ("0 0 1/99999999999 * *", "UTC", "cron", "99999999999"),
            ("", "UTC", "cron", "0 fields"),
        ];
        for (expr, tz, field, needle) in cases {
            let err = CronSpec::parse(expr, tz).unwrap_err();
            assert_eq!(err.field(), field, "{expr} {tz}: {err}");
            assert!(err.to_string().contains(needle), "{expr} {tz}: {err}");
        }
    }
}
