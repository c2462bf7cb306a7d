//! Five-field cron schedules, as crontab(5) and Argo CD's sync windows write them
//! (`minute hour day-of-month month day-of-week`: `*`, `a`, `a-b`, `*/n`, `a-b/n`, `a/n`,
//! lists, month and weekday names, 0 or 7 for Sunday, and `@hourly`, `@daily`, `@weekly`,
//! `@monthly`, `@yearly`), evaluated in a time zone. As in cron, when both the day of the
//! month and the day of the week are restricted, a day matching either matches. Pure.

use jiff::Timestamp;
use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;

/// A parsed schedule: the minutes, hours, days, months and weekdays it matches, as bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// The day of the month, or the day of the week, is `*` (then the other decides alone).
    any_day: bool,
    any_weekday: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// How far [`Cron::next_start`] and [`Cron::last_start`] look, in days: every schedule
/// that matches at all matches within four years (a 29 February).
const HORIZON_DAYS: i32 = 4 * 366 + 1;

impl Cron {
    pub fn parse(text: &str) -> Result<Cron, String> {
        let expanded = match text.trim() {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(format!(
                "schedule {text:?} has {} fields; cron has five: minute hour day-of-month month day-of-week (e.g. \"0 22 * * 1-5\")",
                fields.len()
            ));
        };
        let weekdays = field(weekday, "day of the week", 0, 7, &WEEKDAYS, 0)?;
        Ok(Cron {
            minutes: field(minute, "minute", 0, 59, &[], 0)?,
            hours: field(hour, "hour", 0, 23, &[], 0)?,
            days: field(day, "day of the month", 1, 31, &[], 0)?,
            months: field(month, "month", 1, 12, &MONTHS, 1)?,
            // 7 is Sunday too.
            weekdays: (weekdays | (weekdays >> 7)) & 0x7f,
            any_day: day.starts_with('*'),
            any_weekday: weekday.starts_with('*'),
        })
    }

    fn matches_day(&self, date: Date) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let day = self.days & (1 << date.day()) != 0;
        let weekday = self.weekdays & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        match (self.any_day, self.any_weekday) {
            (false, false) => day || weekday,
            _ => day && weekday,
        }
    }

    /// The instants of `date`'s matching minutes in `tz`, in order (a minute a daylight
    /// saving gap skips is taken as the time after the gap, as cron's users expect).
    fn starts_on(&self, date: Date, tz: &TimeZone) -> Vec<Timestamp> {
        let mut starts = Vec::new();
        if !self.matches_day(date) {
            return starts;
        }
        for hour in (0..24).filter(|h| self.hours & (1 << h) != 0) {
            for minute in (0..60).filter(|m| self.minutes & (1 << m) != 0) {
                let civil: DateTime = date.at(hour as i8, minute as i8, 0, 0);
                if let Ok(zoned) = tz.to_ambiguous_zoned(civil).compatible() {
                    starts.push(zoned.timestamp());
                }
            }
        }
        starts
    }

    /// The first start after `after` (strictly), within the horizon.
    pub fn next_start(&self, tz: &TimeZone, after: Timestamp) -> Option<Timestamp> {
        // The day before too: a time zone's day may begin before `after`'s in another.
        let mut date = after.to_zoned(tz.clone()).date().yesterday().ok()?;
        for _ in 0..HORIZON_DAYS {
            if let Some(start) = self.starts_on(date, tz).into_iter().find(|s| *s > after) {
                return Some(start);
            }
            date = date.tomorrow().ok()?;
        }
        None
    }

    /// The last start at or before `at` and not before `earliest`.
    pub fn last_start(
        &self,
        tz: &TimeZone,
        at: Timestamp,
        earliest: Timestamp,
    ) -> Option<Timestamp> {
        let mut date = at.to_zoned(tz.clone()).date().tomorrow().ok()?;
        let first = earliest.to_zoned(tz.clone()).date().yesterday().ok()?;
        while date >= first {
            let found = self
                .starts_on(date, tz)
                .into_iter()
                .rev()
                .find(|s| *s <= at && *s >= earliest);
            if found.is_some() {
                return found;
            }
            date = date.yesterday().ok()?;
        }
        None
    }
}

/// One field's values as bits: `min..=max`, names (`names[i]` is `i + offset`) allowed.
fn field(
    text: &str,
    what: &str,
    min: u32,
    max: u32,
    names: &[&str],
    offset: u32,
) -> Result<u64, String> {
    let bad = |why: &str| format!("{what} {text:?}: {why}");
    let value = |part: &str| -> Result<u32, String> {
        let lower = part.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            return Ok(i as u32 + offset);
        }
        let n: u32 = part.parse().map_err(|_| {
            bad(&format!(
                "{part:?} is not a number{}",
                if names.is_empty() { "" } else { " or a name" }
            ))
        })?;
        if n < min || n > max {
            return Err(bad(&format!("{n} is outside {min}-{max}")));
        }
        Ok(n)
    };
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .map_err(|_| bad(&format!("step {step:?} is not a number")))?;
                if step == 0 {
                    return Err(bad("a step of 0"));
                }
                (range, step)
            }
            None => (part, 1),
        };
        let (low, high) = match range {
            "*" => (min, max),
            _ => match range.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                // `a/n`: from a to the end.
                None if part.contains('/') => (value(range)?, max),
                None => {
                    let v = value(range)?;
                    (v, v)
                }
            },
        };
        if low > high {
            return Err(bad(&format!("the range {range} runs backwards")));
        }
        for v in (low..=high).step_by(step as usize) {
            bits |= 1 << v;
        }
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("a timestamp")
    }

    fn utc() -> TimeZone {
        TimeZone::UTC
    }

    #[test]
    fn fields_lists_ranges_steps_and_names() {
        let cron = Cron::parse("*/15 9-17 * * mon-fri").expect("parses");
        // Friday 2026-12-04 16:50 UTC → 17:00; Friday 17:50 → Monday 09:00.
        assert_eq!(
            cron.next_start(&utc(), at("2026-12-04T16:50:00Z")),
            Some(at("2026-12-04T17:00:00Z"))
        );
        assert_eq!(
            cron.next_start(&utc(), at("2026-12-04T17:50:00Z")),
            Some(at("2026-12-07T09:00:00Z"))
        );
        let sundays = Cron::parse("0 0 * * 7").expect("7 is Sunday");
        assert_eq!(sundays, Cron::parse("0 0 * * 0").expect("0 is Sunday"));
        assert_eq!(Cron::parse("@weekly"), Cron::parse("0 0 * * sun"));
        assert_eq!(
            Cron::parse("5/20 * * * *").expect("a/n").minutes,
            (1 << 5) | (1 << 25) | (1 << 45)
        );
        for (bad, says) in [
            ("* * * *", "five"),
            ("60 * * * *", "outside 0-59"),
            ("* * * foo *", "not a number or a name"),
            ("*/0 * * * *", "step of 0"),
            ("5-1 * * * *", "backwards"),
        ] {
            let err = Cron::parse(bad).expect_err(bad);
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn a_restricted_day_and_weekday_match_either_as_in_cron() {
        // The 1st of the month, or any Monday.
        let cron = Cron::parse("0 12 1 * mon").expect("parses");
        // Tuesday 2026-12-01 is the 1st; the next is Monday the 7th.
        assert_eq!(
            cron.next_start(&utc(), at("2026-11-30T13:00:00Z")),
            Some(at("2026-12-01T12:00:00Z"))
        );
        assert_eq!(
            cron.next_start(&utc(), at("2026-12-01T13:00:00Z")),
            Some(at("2026-12-07T12:00:00Z"))
        );
        // Only the 29th of February: found within the horizon.
        let leap = Cron::parse("0 0 29 2 *").expect("parses");
        assert_eq!(
            leap.next_start(&utc(), at("2026-03-01T00:00:00Z")),
            Some(at("2028-02-29T00:00:00Z"))
        );
        assert_eq!(
            Cron::parse("0 0 31 2 *")
                .expect("parses")
                .next_start(&utc(), at("2026-01-01T00:00:00Z")),
            None
        );
    }

    #[test]
    fn schedules_follow_their_time_zone_and_its_daylight_saving() {
        let berlin = TimeZone::get("Europe/Berlin").expect("the built-in database");
        let cron = Cron::parse("0 22 * * *").expect("parses");
        // 22:00 in Berlin is 21:00 UTC in winter, 20:00 UTC in summer.
        assert_eq!(
            cron.next_start(&berlin, at("2026-12-05T12:00:00Z")),
            Some(at("2026-12-05T21:00:00Z"))
        );
        assert_eq!(
            cron.next_start(&berlin, at("2026-07-05T12:00:00Z")),
            Some(at("2026-07-05T20:00:00Z"))
        );
        // 02:30 does not exist on 2026-03-29 in Berlin: taken as 03:30 CEST (01:30 UTC).
        let gap = Cron::parse("30 2 * * *").expect("parses");
        assert_eq!(
            gap.next_start(&berlin, at("2026-03-29T00:00:00Z")),
            Some(at("2026-03-29T01:30:00Z"))
        );
        // The last start: at most as old as asked.
        let now = at("2026-12-05T23:00:00Z");
        assert_eq!(
            cron.last_start(&berlin, now, at("2026-12-05T20:00:00Z")),
            Some(at("2026-12-05T21:00:00Z"))
        );
        assert_eq!(
            cron.last_start(&berlin, now, at("2026-12-05T21:30:00Z")),
            None
        );
    }
}
