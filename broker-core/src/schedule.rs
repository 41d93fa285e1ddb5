//! When scheduled messages fire: five-field cron expressions read in an IANA time zone, the next
//! occurrence after a time, and the message id of each occurrence. Pure: the broker's scheduler
//! and the clients (checking what a person typed, showing a late occurrence) share it.

use std::str::FromStr as _;

use chrono::{DateTime, TimeZone as _, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

/// An occurrence queued this long after its time is marked late (the broker was down, or
/// behind): the recipient is told when it was meant for.
pub const LATE_AFTER_MS: u64 = 10_000;

/// The farthest ahead a one-time message may be scheduled.
pub const MAX_AHEAD_MS: u64 = 366 * 86_400_000;

/// A recurring schedule's times: a cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct Recurrence {
    cron: Cron,
    tz: Tz,
}

impl Recurrence {
    /// Five fields (minute, hour, day of month, month, day of week), read in `tz` (an IANA name
    /// such as `Europe/Berlin`; `UTC` when absent).
    pub fn parse(expression: &str, tz: Option<&str>) -> Result<Recurrence, String> {
        let fields = expression.split_whitespace().count();
        if fields != 5 {
            return Err(format!(
                "cron {expression:?} has {fields} fields; use five: minute hour day-of-month month day-of-week (\"0 9 * * 1-5\")"
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .build()
            .parse(expression)
            .map_err(|error| format!("cron {expression:?} does not parse: {error}"))?;
        let tz = match tz.map(str::trim).filter(|t| !t.is_empty()) {
            Some(name) => Tz::from_str(name).map_err(|_| {
                format!("{name:?} is not an IANA time zone (such as Europe/Berlin or America/New_York)")
            })?,
            None => Tz::UTC,
        };
        Ok(Recurrence { cron, tz })
    }

    /// The first occurrence strictly after `after_ms` (milliseconds since the epoch), if any.
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        let after: DateTime<Tz> = self.tz.timestamp_millis_opt(i64::try_from(after_ms).ok()?).single()?;
        let next = self.cron.find_next_occurrence(&after, false).ok()?;
        u64::try_from(next.with_timezone(&Utc).timestamp_millis()).ok()
    }
}

/// An RFC 3339 time (`2026-12-01T09:00:00+01:00`, or `…Z`) in milliseconds since the epoch.
pub fn parse_at(text: &str) -> Result<u64, String> {
    let at = DateTime::parse_from_rfc3339(text.trim())
        .map_err(|_| format!("{text:?} is not an RFC 3339 time such as 2026-12-01T09:00:00+01:00"))?;
    u64::try_from(at.timestamp_millis()).map_err(|_| format!("{text:?} is before 1970"))
}

/// This machine's IANA time zone (what a person's cron expressions mean by default), when it
/// can tell.
pub fn local_time_zone() -> Option<String> {
    iana_time_zone::get_timezone().ok().filter(|name| Tz::from_str(name).is_ok())
}

/// The message id of a schedule's occurrence due at `due_at`: one id per occurrence, so a
/// recipient drops a second copy of one occurrence and keeps every other occurrence.
pub fn occurrence_id(schedule_id: &str, due_at: u64) -> String {
    format!("{schedule_id}@{due_at}")
}

/// The schedule and due time of an occurrence's message id; `None` for any other message.
pub fn occurrence_of(message_id: &str) -> Option<(&str, u64)> {
    let (schedule_id, due_at) = message_id.rsplit_once('@')?;
    if !schedule_id.starts_with("sch_") {
        return None;
    }
    Some((schedule_id, due_at.parse().ok()?))
}

/// How late an occurrence queued at `queued_at` is, when it is later than [`LATE_AFTER_MS`].
pub fn lateness(due_at: u64, queued_at: u64) -> Option<u64> {
    let late = queued_at.saturating_sub(due_at);
    (late > LATE_AFTER_MS).then_some(late)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> u64 {
        DateTime::parse_from_rfc3339(rfc3339).expect("a time").timestamp_millis() as u64
    }

    #[test]
    fn weekday_mornings_follow_the_time_zone_across_a_daylight_saving_change() {
        let mornings = Recurrence::parse("0 9 * * 1-5", Some("Europe/Berlin")).expect("parses");
        // Friday 2026-03-27 09:00 CET (UTC+1), then Monday 2026-03-30 09:00 CEST (UTC+2).
        let friday = mornings.next_after(ms("2026-03-26T12:00:00Z")).expect("next");
        assert_eq!(friday, ms("2026-03-27T08:00:00Z"));
        assert_eq!(mornings.next_after(friday), Some(ms("2026-03-30T07:00:00Z")), "after the clocks moved");
        let utc = Recurrence::parse("*/15 * * * *", None).expect("UTC by default");
        assert_eq!(utc.next_after(ms("2026-11-30T10:07:59Z")), Some(ms("2026-11-30T10:15:00Z")));
        assert_eq!(utc.next_after(ms("2026-11-30T10:15:00Z")), Some(ms("2026-11-30T10:30:00Z")), "strictly after");
    }

    #[test]
    fn bad_expressions_and_zones_say_what_is_wrong() {
        let error = Recurrence::parse("0 0 9 * * 1", None).expect_err("six fields");
        assert!(error.contains("five"), "{error}");
        assert!(Recurrence::parse("61 * * * *", None).expect_err("minute 61").contains("does not parse"));
        let error = Recurrence::parse("0 9 * * *", Some("Mars/Olympus")).expect_err("no such zone");
        assert!(error.contains("IANA"), "{error}");
    }

    #[test]
    fn times_are_rfc_3339_with_their_offset() {
        assert_eq!(parse_at("2026-12-01T09:00:00+01:00"), Ok(ms("2026-12-01T08:00:00Z")));
        assert!(parse_at("tomorrow at nine").expect_err("words").contains("RFC 3339"));
        assert!(local_time_zone().is_none_or(|zone| Tz::from_str(&zone).is_ok()));
    }

    #[test]
    fn occurrence_ids_name_their_schedule_and_time() {
        let id = occurrence_id("sch_abc", 1_790_000_000_000);
        assert_eq!(occurrence_of(&id), Some(("sch_abc", 1_790_000_000_000)));
        assert_eq!(occurrence_of("msg_abc"), None);
        assert_eq!(occurrence_of("msg_abc@12"), None, "only a schedule's occurrences");
        assert_eq!(lateness(1_000, 1_000 + LATE_AFTER_MS), None);
        assert_eq!(lateness(1_000, 2_000 + LATE_AFTER_MS), Some(1_000 + LATE_AFTER_MS));
    }
}
