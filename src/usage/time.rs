//! Time as the usage rollups count it: whole UTC hours since the Unix epoch. Parses the instants a query names
//! (RFC 3339, a date, or Unix seconds) and the events' `ts`, and writes hours and days back as text. Pure.

/// Seconds in an hour: the rollups' granularity.
pub const HOUR: i64 = 3600;
/// Seconds in a day.
pub const DAY: i64 = 86_400;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let (m, d) = (i64::from(m), i64::from(d));
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Reads `n` ASCII digits at `at`.
fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let s = b.get(at..at + n)?;
    s.iter().try_fold(0u32, |acc, c| {
        c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
    })
}

/// `YYYY-MM-DD` at the start of `b`: days since the epoch.
fn date(b: &[u8]) -> Option<i64> {
    let (y, m, d) = (digits(b, 0, 4)?, digits(b, 5, 2)?, digits(b, 8, 2)?);
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let y = i64::from(y);
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

/// An RFC 3339 instant (`2026-11-03T14:05:00Z`, `…T14:05:00.123+02:00`; `T` or a space between date and
/// time): Unix seconds, the fraction dropped. The time zone is required.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let days = date(b)?;
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) || b.get(13) != Some(&b':') {
        return None;
    }
    let (h, mi) = (digits(b, 11, 2)?, digits(b, 14, 2)?);
    let (sec, mut at) = match b.get(16) {
        Some(b':') => (digits(b, 17, 2)?, 19),
        _ => (0, 16),
    };
    if h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        if at == start {
            return None;
        }
    }
    let offset = match b.get(at..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), rest @ ..] if rest.len() == 5 && rest[2] == b':' => {
            let (oh, om) = (digits(rest, 0, 2)?, digits(rest, 3, 2)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = i64::from(oh * 3600 + om * 60);
            if *sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    // A leap second counts as the last second of its minute.
    let secs = days * DAY + i64::from(h * 3600 + mi * 60 + sec.min(59));
    Some(secs - offset)
}

/// Which end of a range a bound is: a date as `to` means the end of that day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    From,
    To,
}

/// A query's bound: RFC 3339, a date `YYYY-MM-DD` (UTC; its start as `from`, its end as `to`), or Unix seconds.
pub fn parse_bound(s: &str, end: End) -> Result<i64, String> {
    let s = s.trim();
    if !s.is_empty() && s.len() <= 12 && s.bytes().all(|c| c.is_ascii_digit()) {
        return s.parse::<i64>().map_err(|e| e.to_string());
    }
    if s.len() == 10 {
        if let Some(days) = date(s.as_bytes()) {
            return Ok(match end {
                End::From => days * DAY,
                End::To => (days + 1) * DAY,
            });
        }
    }
    parse_rfc3339(s).ok_or_else(|| {
        format!(
            "{s:?}: expected RFC 3339 (2026-11-03T14:00:00Z), a date (2026-11-03) or Unix seconds"
        )
    })
}

/// The start of an hour as RFC 3339 (`2026-11-03T14:00:00Z`).
pub fn hour_text(hour: i64) -> String {
    let (y, m, d) = civil_from_days(hour.div_euclid(24));
    format!("{y:04}-{m:02}-{d:02}T{:02}:00:00Z", hour.rem_euclid(24))
}

/// A day as `YYYY-MM-DD`.
pub fn day_text(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_round_trip() {
        for days in [-800_000, -1, 0, 1, 10_956, 11_016, 20_788, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(day_text(0), "1970-01-01");
        assert_eq!(hour_text(24 * 11_017 + 5), "2000-03-01T05:00:00Z");
    }

    #[test]
    fn bounds_parse_as_documented() {
        let day = days_from_civil(2026, 11, 3) * DAY;
        let table: &[(&str, End, Result<i64, ()>)] = &[
            ("2026-11-03", End::From, Ok(day)),
            ("2026-11-03", End::To, Ok(day + DAY)),
            ("2026-11-03T14:05:09Z", End::From, Ok(day + 14 * 3600 + 309)),
            (
                "2026-11-03t14:05:09.123456z",
                End::To,
                Ok(day + 14 * 3600 + 309),
            ),
            (
                "2026-11-03 14:05:09+02:00",
                End::From,
                Ok(day + 12 * 3600 + 309),
            ),
            (
                "2026-11-03T14:05-01:30",
                End::From,
                Ok(day + 15 * 3600 + 35 * 60),
            ),
            ("1700000000", End::From, Ok(1_700_000_000)),
            (" 0 ", End::To, Ok(0)),
            ("2026-02-29", End::From, Err(())),
            (
                "2028-02-29",
                End::From,
                Ok(days_from_civil(2028, 2, 29) * DAY),
            ),
            ("2026-13-01", End::From, Err(())),
            ("2026-11-03T24:00:00Z", End::From, Err(())),
            ("2026-11-03T14:05:09", End::From, Err(())),
            ("2026-11-03T14:05:09.Z", End::From, Err(())),
            ("2026-11-03T14:05:09+2:00", End::From, Err(())),
            ("yesterday", End::From, Err(())),
            ("", End::From, Err(())),
            ("-5", End::From, Err(())),
            ("99999999999999999999", End::From, Err(())),
        ];
        for (text, end, want) in table {
            assert_eq!(parse_bound(text, *end).map_err(|_| ()), *want, "{text:?}");
        }
    }
}
