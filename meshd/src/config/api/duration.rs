//! Istio duration strings (`7s`, `0.5s`, Go style `1h30m`, `500ms`).

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative duration written as a string in Istio YAML.
///
/// Accepts protobuf JSON durations (`"7s"`, `"0.5s"`) and Go `time.Duration`
/// strings (`"3m"`, `"1h30m"`, `"500ms"`, `"10us"`, `"2.5s"`); the bare `"0"` is
/// accepted like Go does. Negative values, a number without a unit and
/// anything else are rejected. Serializes back as seconds, e.g. `"0.5s"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

/// The error returned when a duration string cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationParseError {
    input: String,
    reason: &'static str,
}

impl fmt::Display for DurationParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid duration `{}`: {} (expected e.g. `7s`, `0.5s`, `500ms`, `1h30m`)", self.input, self.reason)
    }
}

impl std::error::Error for DurationParseError {}

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Nanoseconds per unit, longest unit names first where prefixes overlap.
const UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("\u{b5}s", 1_000),
    ("\u{3bc}s", 1_000),
    ("ms", 1_000_000),
    ("s", NANOS_PER_SEC),
    ("m", 60 * NANOS_PER_SEC),
    ("h", 3_600 * NANOS_PER_SEC),
];

impl Duration {
    /// Parses an Istio / Go duration string.
    pub fn parse(input: &str) -> Result<Self, DurationParseError> {
        let err = |reason| DurationParseError { input: input.to_string(), reason };
        let s = input.trim();
        if s.is_empty() {
            return Err(err("empty string"));
        }
        if s.starts_with('-') {
            return Err(err("negative durations are not allowed"));
        }
        let s = s.strip_prefix('+').unwrap_or(s);
        if s == "0" {
            return Ok(Duration(std::time::Duration::ZERO));
        }
        let mut rest = s;
        let mut total: u128 = 0;
        while !rest.is_empty() {
            // Number: digits, optionally `.` and more digits.
            let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
            let int_part = &rest[..int_len];
            rest = &rest[int_len..];
            let mut frac_part = "";
            if let Some(after_dot) = rest.strip_prefix('.') {
                let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
                frac_part = &after_dot[..frac_len];
                rest = &after_dot[frac_len..];
            }
            if int_part.is_empty() && frac_part.is_empty() {
                return Err(err("expected a number"));
            }
            let unit_len =
                rest.char_indices().find(|(_, c)| c.is_ascii_digit() || *c == '.').map_or(rest.len(), |(i, _)| i);
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            if unit.is_empty() {
                return Err(err("missing unit (one of ns, us, ms, s, m, h)"));
            }
            let Some(&(_, scale)) = UNITS.iter().find(|(name, _)| *name == unit) else {
                return Err(err("unknown unit (expected one of ns, us, ms, s, m, h)"));
            };
            let int_value: u128 =
                if int_part.is_empty() { 0 } else { int_part.parse().map_err(|_| err("number too large"))? };
            let mut value = int_value.checked_mul(scale).ok_or_else(|| err("too large"))?;
            // Fraction: exact up to nanosecond precision, extra digits truncated.
            let mut place = scale;
            for digit in frac_part.bytes() {
                place /= 10;
                if place == 0 {
                    break;
                }
                value += u128::from(digit - b'0') * place;
            }
            total = total.checked_add(value).ok_or_else(|| err("too large"))?;
        }
        let secs = u64::try_from(total / NANOS_PER_SEC).map_err(|_| err("too large"))?;
        let nanos = u32::try_from(total % NANOS_PER_SEC).map_err(|_| err("too large"))?;
        Ok(Duration(std::time::Duration::new(secs, nanos)))
    }

    /// The wrapped [`std::time::Duration`].
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Duration(d)
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl std::str::FromStr for Duration {
    type Err = DurationParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Duration::parse(s)
    }
}

impl fmt::Display for Duration {
    /// Seconds with an optional fraction, as protobuf JSON writes them: `7s`, `0.5s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        let nanos = self.0.subsec_nanos();
        if nanos == 0 {
            write!(f, "{secs}s")
        } else {
            let frac = format!("{nanos:09}");
            write!(f, "{secs}.{}s", frac.trim_end_matches('0'))
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = Duration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as `7s`, `0.5s`, `500ms` or `1h30m`")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                Duration::parse(v).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(DurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::Duration;
    use std::time::Duration as Std;

    #[test]
    fn parses_istio_and_go_forms() {
        let ok = [
            ("7s", Std::from_secs(7)),
            ("0.5s", Std::from_millis(500)),
            ("2.5s", Std::from_millis(2500)),
            ("3m", Std::from_secs(180)),
            ("1h", Std::from_secs(3600)),
            ("1h30m", Std::from_secs(5400)),
            ("500ms", Std::from_millis(500)),
            ("10us", Std::from_micros(10)),
            ("10\u{b5}s", Std::from_micros(10)),
            ("15ns", Std::from_nanos(15)),
            (".25s", Std::from_millis(250)),
            ("1.000000001s", Std::new(1, 1)),
            ("0", Std::ZERO),
            ("0s", Std::ZERO),
        ];
        for (text, want) in ok {
            assert_eq!(Duration::parse(text).unwrap().0, want, "{text}");
        }
    }

    #[test]
    fn rejects_garbage() {
        for text in ["", "7", "-1s", "abc", "1x", "s", "1.s.", "1h-3m", ".s", "1e3s"] {
            assert!(Duration::parse(text).is_err(), "{text} should fail");
        }
    }

    #[test]
    fn displays_as_seconds() {
        assert_eq!(Duration(Std::from_millis(500)).to_string(), "0.5s");
        assert_eq!(Duration(Std::from_secs(90)).to_string(), "90s");
        assert_eq!(Duration(Std::new(1, 1)).to_string(), "1.000000001s");
    }
}
