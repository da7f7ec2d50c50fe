//! Sizes and times as people read and write them: `1.5 GiB`, `10G`, `2024-05-01 12:00:00 UTC`.
//! Shared by the CLI and the web console, so both print and accept the same forms.

/// `1023 B`, `1 KiB`, `1.5 GiB` (powers of 1024; one decimal unless whole).
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut unit = 0;
    while unit + 1 < UNITS.len() && bytes >> (10 * (unit + 2)) > 0 {
        unit += 1;
    }
    let shift = 10 * (unit + 1);
    if bytes & ((1u64 << shift) - 1) == 0 {
        format!("{} {}", bytes >> shift, UNITS[unit])
    } else {
        format!("{:.1} {}", bytes as f64 / (1u64 << shift) as f64, UNITS[unit])
    }
}

/// Parses `10G`, `512M`, `1.5T`, `4096`, `2GiB`: a number and an optional unit among B, K, M, G,
/// T, P (powers of 1024; `KB`/`KiB` and lower case accepted too). Fractions of a byte are dropped.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let shift: u32 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        "P" | "PB" | "PIB" => 50,
        _ => return Err(format!("{text:?}: unknown unit {unit:?}; use B, K, M, G, T or P (powers of 1024)")),
    };
    let not_a_size = || format!("{text:?} is not a size (like 4096, 512M, 10G, 1.5T)");
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') || fraction.len() > 9 {
        return Err(not_a_size());
    }
    let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| not_a_size())? };
    let mut bytes = whole.checked_shl(shift).filter(|b| b >> shift == whole).ok_or_else(not_a_size)?;
    if !fraction.is_empty() {
        let digits: u128 = fraction.parse().map_err(|_| not_a_size())?;
        let scale = 10u128.pow(fraction.len() as u32);
        if shift == 0 && digits != 0 {
            return Err(format!("{text:?} is not a whole number of bytes"));
        }
        // Rounded down to a byte.
        bytes += (digits << shift) / scale;
    }
    u64::try_from(bytes).map_err(|_| format!("{text:?} is too large"))
}

/// `2024-05-01 12:00:00 UTC` (proleptic Gregorian calendar; H. Hinnant's days-to-civil).
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let z = i64::try_from(secs / 86_400).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let rem = secs % 86_400;
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1024), "1 KiB");
        assert_eq!(size(10 << 30), "10 GiB");
        assert_eq!(size(1536 << 20), "1.5 GiB");
        assert_eq!(size(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn times_print() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000_123), "2023-11-14 22:13:20 UTC");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("500MiB"), Ok(500 << 20));
        assert_eq!(parse_size("1.5T"), Ok(3 << 39));
        assert!(parse_size("1.5").is_err());
        assert!(parse_size("10X").is_err());
        assert!(parse_size("").is_err());
    }
}
