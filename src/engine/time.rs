//! Times in workflow documents, as Conductor writes them: durations (`"1h 30m"`, a WAIT's `duration`), absolute
//! times (`"2024-01-31 10:00 UTC"`, a WAIT's `until`) and the delay before a task's next retry.
//!
//! Owns: parsing those into milliseconds, and the retry delay of each `retryLogic`. Must not touch: the clock
//! (there is none in the engine: "now" is the command's `at_ms`).

use super::definitions::TaskDef;

/// Parses Conductor's durations: a sequence of `<n><unit>` with units d, h, m, s (and the long forms).
pub fn parse_duration_ms(text: &str) -> Option<u64> {
    let mut total = 0u64;
    let mut number = String::new();
    let mut unit = String::new();
    let mut seen = false;
    let flush = |number: &mut String, unit: &mut String, total: &mut u64| -> Option<()> {
        if number.is_empty() {
            return if unit.is_empty() { Some(()) } else { None };
        }
        let n: u64 = number.parse().ok()?;
        let ms = match unit.trim().to_ascii_lowercase().as_str() {
            "d" | "day" | "days" => 86_400_000,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3_600_000,
            "m" | "min" | "mins" | "minute" | "minutes" => 60_000,
            "s" | "" | "sec" | "secs" | "second" | "seconds" => 1000,
            _ => return None,
        };
        // Saturating: a duration too long to count in ms is "forever", never a wrapped short one.
        *total = total.saturating_add(n.saturating_mul(ms));
        number.clear();
        unit.clear();
        Some(())
    };
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !unit.trim().is_empty() {
                flush(&mut number, &mut unit, &mut total)?;
            }
            number.push(c);
            seen = true;
        } else if c.is_alphabetic() {
            unit.push(c);
        } else if c.is_whitespace() {
            if !unit.is_empty() {
                flush(&mut number, &mut unit, &mut total)?;
            }
        } else {
            return None;
        }
    }
    flush(&mut number, &mut unit, &mut total)?;
    seen.then_some(total)
}

/// Parses an absolute time: `yyyy-MM-dd HH:mm`, `yyyy-MM-dd HH:mm z` (UTC only), `yyyy-MM-dd`, or RFC 3339.
pub fn parse_until_ms(text: &str) -> Option<u64> {
    let t = text.trim().trim_end_matches(" UTC").trim_end_matches(" GMT").trim_end_matches('Z');
    let (date, time) = match t.split_once(['T', ' ']) {
        Some((d, tm)) => (d, tm),
        None => (t, "00:00"),
    };
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, mo, day) = (d.next()??, d.next()??, d.next()??);
    let mut tm = time.split(':').map(|p| p.split('.').next().and_then(|s| s.parse::<i64>().ok()));
    let (h, mi) = (tm.next()??, tm.next()??);
    let s = tm.next().flatten().unwrap_or(0);
    // Checked: a year of a billion digits' worth is not a date, and must not wrap into one.
    if !(0..=9999).contains(&y) || !(0..24).contains(&h) || !(0..60).contains(&mi) || !(0..=60).contains(&s) {
        return None;
    }
    let days = days_from_civil(y, mo, day)?;
    let secs = days * 86_400 + h * 3600 + mi * 60 + s;
    u64::try_from(secs * 1000).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> Option<i64> {
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// The delay before retry number `retry_count + 1`, ms.
pub fn retry_delay_ms(def: &TaskDef, retry_count: u32) -> u64 {
    use super::definitions::RetryLogic;
    let base = u64::try_from(def.retry_delay_seconds.max(0)).unwrap_or(0);
    let factor = u64::try_from(def.backoff_scale_factor.max(1)).unwrap_or(1);
    let secs = match def.retry_logic {
        RetryLogic::Fixed => base,
        RetryLogic::ExponentialBackoff => base.saturating_mul(2u64.saturating_pow(retry_count)),
        RetryLogic::LinearBackoff => base.saturating_mul(factor).saturating_mul(u64::from(retry_count) + 1),
    };
    let capped = match def.max_retry_delay_seconds {
        Some(max) if max > 0 => secs.min(u64::try_from(max).unwrap_or(u64::MAX)),
        _ => secs,
    };
    capped.saturating_mul(1000)
}
