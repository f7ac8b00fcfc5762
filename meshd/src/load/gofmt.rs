//! Go-compatible number and duration formatting/parsing.
//!
//! fortio's output is produced by Go's `fmt` (`%g`, `%.6g`, `%v` of a
//! `time.Duration`), and users compare meshd's output to fortio's, so the
//! exact textual rules of Go matter more here than Rust's defaults.

use std::time::Duration;

/// Decimal digits (no leading/trailing zeros, except the single `0` of zero)
/// and the decimal point position `dp` (value = 0.d1d2d3... * 10^dp).
struct Digits {
    digits: Vec<u8>,
    dp: i32,
}

/// Splits a finite non-negative `v` into significant digits; `precision` is
/// `None` for the shortest round-trip representation.
fn digits_of(v: f64, precision: Option<usize>) -> Digits {
    // Rust's `{:e}` gives either the shortest round-trip digits or a
    // correctly rounded mantissa, which is exactly what Go's strconv needs.
    let s = match precision {
        None => format!("{v:e}"),
        Some(p) => format!("{:.*e}", p.saturating_sub(1), v),
    };
    let (mantissa, exp) = s.split_once('e').unwrap_or((s.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let mut digits: Vec<u8> = mantissa.bytes().filter(u8::is_ascii_digit).collect();
    while digits.len() > 1 && digits.last() == Some(&b'0') {
        digits.pop();
    }
    if digits.iter().all(|&d| d == b'0') {
        return Digits { digits: vec![b'0'], dp: 1 };
    }
    Digits { digits, dp: exp + 1 }
}

/// Go's `%g` (precision `None`) or `%.<p>g` for a float.
pub fn fmt_g(v: f64, precision: Option<usize>) -> String {
    if v.is_nan() {
        return "NaN".to_string();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.to_string();
    }
    let neg = v.is_sign_negative() && v != 0.0;
    let precision = precision.map(|p| p.max(1));
    let d = digits_of(v.abs(), precision);
    let nd = d.digits.len() as i32;
    // Same decision as Go's strconv: exponent form when the exponent is
    // < -4 or >= the (possibly shortened) precision; 6 for shortest.
    let eprec = match precision {
        None => 6,
        Some(p) => {
            let p = p as i32;
            if p > nd && nd >= d.dp {
                nd
            } else {
                p
            }
        }
    };
    let exp = d.dp - 1;
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if exp < -4 || exp >= eprec {
        out.push(d.digits[0] as char);
        if nd > 1 {
            out.push('.');
            out.extend(d.digits[1..].iter().map(|&b| b as char));
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        out.push_str(&format!("{:02}", exp.abs()));
        return out;
    }
    // Plain form: all significant digits, padded with zeros as needed.
    if d.dp <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-d.dp) as usize));
        out.extend(d.digits.iter().map(|&b| b as char));
    } else {
        let dp = d.dp as usize;
        for i in 0..dp {
            out.push(d.digits.get(i).map_or('0', |&b| b as char));
        }
        if d.digits.len() > dp {
            out.push('.');
            out.extend(d.digits[dp..].iter().map(|&b| b as char));
        }
    }
    out
}

/// Appends `.fraction` of `v` over `prec` decimal digits, trailing zeros
/// removed (nothing when the fraction is zero), like Go's `fmtFrac`.
fn push_frac(out: &mut String, v: u128, prec: u32) {
    let frac = v % 10u128.pow(prec);
    if frac == 0 {
        return;
    }
    let s = format!("{:0width$}", frac, width = prec as usize);
    out.push('.');
    out.push_str(s.trim_end_matches('0'));
}

/// Go's `time.Duration.String()`, e.g. `59.8524ms`, `1.5s`, `1m30s`, `0s`.
pub fn fmt_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    if ns < 1_000_000_000 {
        // Sub-second values use the largest unit that keeps an integer part.
        let (unit, prec) = if ns < 1_000 {
            ("ns", 0)
        } else if ns < 1_000_000 {
            ("\u{b5}s", 3)
        } else {
            ("ms", 6)
        };
        out.push_str(&(ns / 10u128.pow(prec)).to_string());
        push_frac(&mut out, ns, prec);
        out.push_str(unit);
        return out;
    }
    let secs = ns / 1_000_000_000;
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&s.to_string());
    push_frac(&mut out, ns, 9);
    out.push('s');
    out
}

/// Parses a Go duration (`300ms`, `1m30s`, `1.5h`, `100us`, `0`).
/// Negative durations are accepted and clamp to zero (fortio treats a
/// non-positive `-t` as "run until interrupted").
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let orig = s;
    let err = || format!("time: invalid duration \"{orig}\"");
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(err());
    }
    let mut total_ns: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let num = &rest[..num_len];
        if num.is_empty() || num == "." {
            return Err(err());
        }
        let value: f64 = num.parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale = match unit {
            "ns" => 1.0,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(format!("time: missing unit in duration \"{orig}\"")),
            _ => return Err(format!("time: unknown unit \"{unit}\" in duration \"{orig}\"")),
        };
        total_ns += value * scale;
    }
    if neg {
        return Ok(Duration::ZERO);
    }
    Ok(Duration::from_nanos(total_ns.round() as u64))
}

/// Current UTC wall-clock time as `HH:MM:SS`, the prefix of fortio's text
/// log lines (no timezone database is available without extra crates).
pub fn clock_hms() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let day = secs % 86_400;
    format!("{:02}:{:02}:{:02}", day / 3600, (day / 60) % 60, day % 60)
}
