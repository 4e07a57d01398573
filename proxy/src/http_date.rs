//! HTTP-dates (RFC 9110 §5.6.7) in all three formats a recipient must accept, before 1970 too.
//!
//! `httpdate` reads years from 1970 only, and its RFC 850 two-digit years are fixed to a
//! century; a cache has to read an `Expires` of 1960 as "already expired", and `06-Nov-94` as
//! 1994 for a few decades yet. Times are seconds since the Unix epoch, negative before it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The year `secs` (since the epoch) falls in.
fn year_of(secs: i64) -> i64 {
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    yoe + era * 400 + i64::from(m <= 2)
}

fn time_of_day(hms: &str) -> Option<i64> {
    let mut parts = hms.split(':').map(|p| p.parse::<i64>().ok().filter(|_| p.len() == 2));
    let (h, m, s) = (parts.next()??, parts.next()??, parts.next()??);
    (parts.next().is_none() && h < 24 && m < 60 && s <= 60).then_some(h * 3600 + m * 60 + s)
}

fn month(name: &str) -> Option<i64> {
    MONTHS.iter().position(|m| *m == name).map(|i| i as i64 + 1)
}

/// Seconds since the epoch of `value`: IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), RFC 850
/// (`Sunday, 06-Nov-94 08:49:37 GMT`, a two-digit year more than 50 years ahead of `now` being
/// the past century's) or asctime (`Sun Nov  6 08:49:37 1994`). `None` if it is none of them.
pub fn parse(value: &str, now: SystemTime) -> Option<i64> {
    let words: Vec<&str> = value.split_whitespace().collect();
    let (y, m, d, hms) = match words.as_slice() {
        [wd, d, mon, y, hms, "GMT"] if wd.ends_with(',') && d.len() == 2 && y.len() == 4 => (y.parse().ok()?, month(mon)?, d.parse().ok()?, *hms),
        [wd, dmy, hms, "GMT"] if wd.ends_with(',') => {
            let mut p = dmy.split('-');
            let (d, mon, yy) = (p.next()?, p.next()?, p.next()?);
            if p.next().is_some() || d.len() != 2 || yy.len() != 2 {
                return None;
            }
            let yy: i64 = yy.parse().ok()?;
            let this_year = year_of(seconds(now));
            let mut year = this_year - this_year % 100 + yy;
            if year > this_year + 50 {
                year -= 100;
            }
            (year, month(mon)?, d.parse().ok()?, *hms)
        }
        [_, mon, d, hms, y] if y.len() == 4 => (y.parse().ok()?, month(mon)?, d.parse().ok()?, *hms),
        _ => return None,
    };
    if !(1..=31).contains(&d) {
        return None;
    }
    Some(days_from_civil(y, m, d) * 86_400 + time_of_day(hms)?)
}

/// `t` as seconds since the epoch.
pub fn seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(before) => -(before.duration().as_secs() as i64),
    }
}

/// How long after `from` the time `to` (both seconds since the epoch) is; zero if not after.
pub fn after(to: i64, from: i64) -> Duration {
    Duration::from_secs(to.saturating_sub(from).max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_three_formats_and_years_before_1970() {
        let now = UNIX_EPOCH + Duration::from_secs(1_796_083_200); // 2026-12-01
        let t = 784_111_777; // 1994-11-06 08:49:37
        assert_eq!(parse("Sun, 06 Nov 1994 08:49:37 GMT", now), Some(t));
        assert_eq!(parse("Sunday, 06-Nov-94 08:49:37 GMT", now), Some(t));
        assert_eq!(parse("Sun Nov  6 08:49:37 1994", now), Some(t));
        assert_eq!(parse("Fri, 01 Jan 1960 00:00:00 GMT", now), Some(-315_619_200));
        assert_eq!(parse("Saturday, 01-Jan-77 00:00:00 GMT", now).map(year_of), Some(1977), "2077 is more than 50 years ahead");
        assert_eq!(parse("Sunday, 06-Nov-60 08:49:37 GMT", now).map(year_of), Some(2060), "2060 is not");
        for bad in ["", "yesterday", "Sun, 06 Nov 1994 08:49:37 CET", "Sun, 32 Nov 1994 08:49:37 GMT", "Sun, 06 Nov 1994 25:00:00 GMT", "06 Nov 1994"] {
            assert_eq!(parse(bad, now), None, "{bad:?}");
        }
        assert_eq!(year_of(seconds(now)), 2026);
        assert_eq!((after(10, 4), after(4, 10)), (Duration::from_secs(6), Duration::ZERO));
    }
}
