//! Durations as operators write them in configs and policies: `500ms`, `10s`,
//! `1m`, `2h`, `40d`, `1w`, `1y` (365 days). Always whole milliseconds.

use thiserror::Error;

/// A duration string that could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DurationError {
    /// The string has no number, no unit, or an unknown unit.
    #[error("invalid duration {0:?}: expected a whole number and a unit (ms, s, m, h, d, w, y), e.g. \"10s\"")]
    Invalid(String),
    /// The duration is zero.
    #[error("invalid duration {0:?}: must be greater than zero")]
    Zero(String),
    /// The duration does not fit in 64-bit milliseconds.
    #[error("invalid duration {0:?}: too large")]
    Overflow(String),
}

const UNITS: [(&str, u64); 7] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
    ("w", 7 * 86_400_000),
    ("y", 365 * 86_400_000),
];

/// Parses `10s`, `1m`, `40d` ... into milliseconds. Zero is refused.
///
/// ```
/// assert_eq!(tailfold::model::parse_duration_ms("10s"), Ok(10_000));
/// assert!(tailfold::model::parse_duration_ms("10").is_err());
/// ```
pub fn parse_duration_ms(text: &str) -> Result<u64, DurationError> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| DurationError::Invalid(text.to_string()))?;
    let (digits, unit) = trimmed.split_at(split);
    if digits.is_empty() {
        return Err(DurationError::Invalid(text.to_string()));
    }
    let factor = UNITS
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|(_, factor)| *factor)
        .ok_or_else(|| DurationError::Invalid(text.to_string()))?;
    let number: u64 = digits.parse().map_err(|_| DurationError::Overflow(text.to_string()))?;
    let millis = number
        .checked_mul(factor)
        .ok_or_else(|| DurationError::Overflow(text.to_string()))?;
    if millis == 0 {
        return Err(DurationError::Zero(text.to_string()));
    }
    Ok(millis)
}

/// Writes milliseconds with the largest unit that divides them exactly (`60000` -> `1m`).
pub fn format_duration_ms(millis: u64) -> String {
    for (name, factor) in UNITS.iter().rev() {
        if millis >= *factor && millis % factor == 0 {
            return format!("{}{name}", millis / factor);
        }
    }
    format!("{millis}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_round_trips() {
        for (text, millis) in [
            ("250ms", 250),
            ("10s", 10_000),
            ("1m", 60_000),
            ("2h", 7_200_000),
            ("40d", 3_456_000_000),
            ("1w", 604_800_000),
            ("1y", 31_536_000_000),
        ] {
            assert_eq!(parse_duration_ms(text), Ok(millis), "{text}");
            assert_eq!(format_duration_ms(millis), text);
        }
        assert_eq!(format_duration_ms(90_000), "90s");
    }

    #[test]
    fn refuses_broken_durations() {
        for text in ["", "s", "10", "10x", "-1s", "1.5s", "0s", "99999999999999999999s"] {
            assert!(parse_duration_ms(text).is_err(), "{text:?} should be refused");
        }
        assert_eq!(
            parse_duration_ms("10x").unwrap_err().to_string(),
            "invalid duration \"10x\": expected a whole number and a unit (ms, s, m, h, d, w, y), e.g. \"10s\""
        );
    }
}
