//! The engine's timestamps: RFC 3339 with up to nine fraction digits and a `Z` or
//! `+hh:mm` offset (`2026-11-28T18:05:53.362009318Z`), as Unix nanoseconds.
//! tend-proto's parser takes only `Z` and microseconds; log lines need the
//! nanoseconds to tell two lines of one microsecond apart.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Parse an engine timestamp into Unix nanoseconds. None for anything else,
/// and for the engine's zero time (`0001-01-01T00:00:00Z`, "never").
pub fn parse_nanos(s: &str) -> Option<i64> {
    let (date, rest) = s.split_once('T')?;
    let mut dp = date.splitn(3, '-');
    let y: i64 = dp.next()?.parse().ok()?;
    let m: u32 = dp.next()?.parse().ok()?;
    let d: u32 = dp.next()?.parse().ok()?;
    if y < 1970 || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Split off the offset: `Z`, or the last `+` / `-` of the time part.
    let (time, offset_secs) = if let Some(t) = rest.strip_suffix('Z') {
        (t, 0i64)
    } else {
        let at = rest.rfind(['+', '-'])?;
        let (t, off) = rest.split_at(at);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':')?;
        let oh: i64 = oh.parse().ok()?;
        let om: i64 = om.parse().ok()?;
        (t, sign * (oh * 3600 + om * 60))
    };
    let (hms, frac) = match time.split_once('.') {
        Some((a, b)) => (a, b),
        None => (time, ""),
    };
    let mut tp = hms.splitn(3, ':');
    let hh: i64 = tp.next()?.parse().ok()?;
    let mm: i64 = tp.next()?.parse().ok()?;
    let ss: i64 = tp.next()?.parse().ok()?;
    if hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    let secs = days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss - offset_secs;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// An engine timestamp as tend writes times (tend-proto's RFC 3339, UTC, µs).
pub fn to_rfc3339(s: &str) -> Option<String> {
    let n = u64::try_from(parse_nanos(s)?).ok()?;
    Some(tend_proto::time::rfc3339(
        UNIX_EPOCH + Duration::from_nanos(n),
    ))
}

/// Unix nanoseconds of a system time (0 before the epoch).
pub fn nanos_of(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Unix nanoseconds as the engine's query parameters take a time
/// (`since`, `until`): seconds, a dot, nine digits. Older engines take no
/// RFC 3339 there.
pub fn query(nanos: i64) -> String {
    format!(
        "{}.{:09}",
        nanos.div_euclid(1_000_000_000),
        nanos.rem_euclid(1_000_000_000)
    )
}

// Howard Hinnant's days-from-civil.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let d = i64::from(d);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_engine_writes() {
        assert_eq!(parse_nanos("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_nanos("2026-11-28T18:05:53.362009318Z"),
            Some(1_795_889_153_362_009_318)
        );
        assert_eq!(
            parse_nanos("2026-11-28T19:05:53.5+01:00"),
            Some(1_795_889_153_500_000_000)
        );
        assert_eq!(parse_nanos("0001-01-01T00:00:00Z"), None);
        assert_eq!(parse_nanos("yesterday"), None);
        assert_eq!(parse_nanos("2026-11-28T18:05:53.1234567890Z"), None);
    }

    #[test]
    fn query_times_are_seconds_and_nine_digits() {
        assert_eq!(query(1_795_889_153_362_009_318), "1795889153.362009318");
        assert_eq!(query(5), "0.000000005");
        assert_eq!(query(0), "0.000000000");
    }

    #[test]
    fn converts_to_tend_times() {
        assert_eq!(
            to_rfc3339("2026-11-28T18:05:53.362009318Z").as_deref(),
            Some("2026-11-28T18:05:53.362009Z")
        );
        let now = tend_proto::time::now();
        assert_eq!(to_rfc3339(&now).as_deref(), Some(now.as_str()));
    }
}
