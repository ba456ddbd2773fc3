//! The duration syntax of `gateway.yaml`: `500ms`, `10s`, `15m`, `2h`, and combinations such as
//! `1h30m` or `1s500ms` (largest unit first, each unit at most once).
//!
//! [`format()`] writes a duration back in the same form, so the effective config printed by
//! `mqttsn-gateway check` loads again unchanged.
//!
//! A leaf: owns the syntax only, imports nothing of `config`, and must never know a key name
//! (each key's range check is its section's).

use std::fmt;
use std::time::Duration;

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration `{input}`: {reason}")]
pub struct DurationError {
    /// The text that was rejected.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Units, largest first; the order a combination must follow.
const UNITS: [(&str, u64); 4] = [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];

/// Parses `500ms`, `10s`, `15m`, `2h` or a combination like `1h30m` (largest unit first).
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let fail = |reason: &str| DurationError {
        input: input.to_owned(),
        reason: reason.to_owned(),
    };
    if input.is_empty() {
        return Err(fail("empty (write e.g. `10s`, `500ms`, `15m` or `1h30m`)"));
    }
    let mut rest = input;
    let mut total_ms: u64 = 0;
    // Index into UNITS of the last unit seen; the next one must be strictly smaller.
    let mut last_unit: Option<usize> = None;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(fail(
                "expected a number then a unit, e.g. `10s`, `500ms`, `15m` or `1h30m`",
            ));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| fail("number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        if unit_len == 0 {
            return Err(fail("missing unit after the number (use ms, s, m or h)"));
        }
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let index = UNITS
            .iter()
            .position(|(name, _)| *name == unit)
            .ok_or_else(|| fail(&format!("unknown unit `{unit}` (use ms, s, m or h)")))?;
        if last_unit.is_some_and(|last| index <= last) {
            return Err(fail(
                "units must go from largest to smallest, each at most once",
            ));
        }
        last_unit = Some(index);
        total_ms = number
            .checked_mul(UNITS[index].1)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| fail("too large"))?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Writes `duration` in the syntax [`parse`] reads: `0s`, `500ms`, `1m30s`, `1h`.
/// Sub-millisecond parts are dropped (the syntax has no unit for them).
pub fn format(duration: Duration) -> String {
    Display(duration).to_string()
}

/// A [`Duration`] that displays in the `gateway.yaml` syntax.
struct Display(Duration);

impl fmt::Display for Display {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX);
        if ms == 0 {
            return f.write_str("0s");
        }
        for (name, size) in UNITS {
            if ms >= size {
                write!(f, "{}{name}", ms / size)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

/// `serialize_with` helper: writes a duration as `1h30m`.
pub fn serialize<S: serde::Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&Display(*duration))
}

/// `deserialize_with` helper: reads `1h30m`; errors carry the YAML location.
pub fn deserialize<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Duration, D::Error> {
    deserialize_checked(deserializer, |_| Ok(()))
}

/// Like [`deserialize`], then `check`; the check runs inside the visitor so that its error, too,
/// carries the location of the value.
pub(crate) fn deserialize_checked<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
    check: fn(Duration) -> Result<(), String>,
) -> Result<Duration, D::Error> {
    deserializer.deserialize_str(Visitor { check })
}

struct Visitor {
    check: fn(Duration) -> Result<(), String>,
}

impl serde::de::Visitor<'_> for Visitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration like `500ms`, `10s`, `15m`, `2h` or `1h30m`")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
        let value = parse(v).map_err(E::custom)?;
        (self.check)(value).map_err(E::custom)?;
        Ok(value)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
        Err(E::custom(format_args!(
            "invalid duration `{v}`: missing unit (write e.g. `{v}s` or `{v}ms`)"
        )))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
        Err(E::custom(format_args!(
            "invalid duration `{v}`: missing unit (write e.g. `10s`)"
        )))
    }
}
