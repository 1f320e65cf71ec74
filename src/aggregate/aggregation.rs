//! The aggregations a rule can ask for (`count`, `p99`, `above(1.5)` ...), how
//! they are written in YAML, and which kinds of series each one applies to.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::model::Kind;

/// An aggregation name that could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AggregationError {
    /// Not a known aggregation.
    #[error("unknown aggregation {0:?}: expected one of count, sum, rate, total, last, min, max, mean, stdev, histogram, pNN (p50, p99, p999 ...), quantile(Q), above(T), below(T)")]
    Unknown(String),
    /// A quantile outside [0, 1] or not a number.
    #[error("invalid quantile in {0:?}: expected a number in [0, 1], e.g. p99 or quantile(0.975)")]
    Quantile(String),
    /// A threshold that is not a finite number.
    #[error("invalid threshold in {0:?}: expected a finite number, e.g. above(1.5)")]
    Threshold(String),
}

/// One output of a window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Aggregation {
    /// Number of samples (of a set: distinct members).
    Count,
    /// Sum of values (for counters: the increase over the window).
    Sum,
    /// Counter sum divided by the window length in seconds.
    Rate,
    /// A monotonic counter re-accumulated from the window sums, so that
    /// downstream `rate()` reads it as the counter it was; for a
    /// distribution, its running count and sum (a summary's `_count`, `_sum`).
    Total,
    /// Gauge value with the latest timestamp.
    Last,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Count-weighted mean.
    Mean,
    /// Population standard deviation of a distribution.
    Stdev,
    /// A quantile in [0, 1], read from the window's histogram.
    Quantile(f64),
    /// Count and fraction of samples strictly above the threshold.
    Above(f64),
    /// Count and fraction of samples at or below the threshold.
    Below(f64),
    /// The window's exponential histogram itself.
    Histogram,
}

impl Aggregation {
    /// Whether this aggregation can be computed for a series of `kind`.
    pub fn applies_to(&self, kind: Kind) -> bool {
        use Aggregation::*;
        match kind {
            Kind::Counter => matches!(self, Count | Sum | Rate | Total),
            Kind::Gauge => matches!(self, Count | Sum | Last | Min | Max | Mean),
            Kind::Distribution => !matches!(self, Rate | Last),
            // A set's count is its distinct members, as statsd's `count` of a set.
            Kind::Set => matches!(self, Count),
        }
    }
}

impl FromStr for Aggregation {
    type Err = AggregationError;

    /// Reads `count`, `p99`, `p999`, `quantile(0.975)`, `above(1.5)`, `below(0.25)` ...
    ///
    /// ```
    /// use tailfold::aggregate::Aggregation;
    /// assert_eq!("p999".parse(), Ok(Aggregation::Quantile(0.999)));
    /// assert_eq!("above(1.5)".parse(), Ok(Aggregation::Above(1.5)));
    /// assert!("p9".parse::<Aggregation>().is_err());
    /// ```
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        let simple = match trimmed {
            "count" => Some(Aggregation::Count),
            "sum" => Some(Aggregation::Sum),
            "rate" => Some(Aggregation::Rate),
            "total" => Some(Aggregation::Total),
            "last" => Some(Aggregation::Last),
            "min" => Some(Aggregation::Min),
            "max" => Some(Aggregation::Max),
            "mean" => Some(Aggregation::Mean),
            "stdev" => Some(Aggregation::Stdev),
            "histogram" => Some(Aggregation::Histogram),
            _ => None,
        };
        if let Some(aggregation) = simple {
            return Ok(aggregation);
        }
        if let Some(digits) = trimmed.strip_prefix('p') {
            return parse_percentile(digits)
                .map(Aggregation::Quantile)
                .ok_or_else(|| AggregationError::Unknown(text.to_string()));
        }
        if let Some(argument) = call_argument(trimmed, "quantile") {
            return match argument.parse::<f64>() {
                Ok(q) if (0.0..=1.0).contains(&q) => Ok(Aggregation::Quantile(q)),
                _ => Err(AggregationError::Quantile(text.to_string())),
            };
        }
        for (function, build) in [
            ("above", Aggregation::Above as fn(f64) -> Aggregation),
            ("below", Aggregation::Below),
        ] {
            if let Some(argument) = call_argument(trimmed, function) {
                return match argument.parse::<f64>() {
                    Ok(threshold) if threshold.is_finite() => Ok(build(threshold)),
                    _ => Err(AggregationError::Threshold(text.to_string())),
                };
            }
        }
        Err(AggregationError::Unknown(text.to_string()))
    }
}

/// `p50` -> 0.5, `p999` -> 0.999, `p05` -> 0.05, `p100` -> 1.0; one digit is ambiguous and refused.
fn parse_percentile(digits: &str) -> Option<f64> {
    if digits.len() < 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if digits == "100" {
        return Some(1.0);
    }
    format!("0.{digits}").parse().ok()
}

/// The argument of `name(arg)`, trimmed.
fn call_argument<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.strip_prefix(name)?
        .trim_start()
        .strip_prefix('(')?
        .strip_suffix(')')
        .map(str::trim)
}

impl fmt::Display for Aggregation {
    /// The canonical spelling, which is also the `aggregation` field of records.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Aggregation::Count => f.write_str("count"),
            Aggregation::Sum => f.write_str("sum"),
            Aggregation::Rate => f.write_str("rate"),
            Aggregation::Total => f.write_str("total"),
            Aggregation::Last => f.write_str("last"),
            Aggregation::Min => f.write_str("min"),
            Aggregation::Max => f.write_str("max"),
            Aggregation::Mean => f.write_str("mean"),
            Aggregation::Stdev => f.write_str("stdev"),
            Aggregation::Histogram => f.write_str("histogram"),
            Aggregation::Quantile(q) => {
                let percent = format!("{q}");
                match percent.strip_prefix("0.") {
                    Some(digits) if digits.len() >= 2 => write!(f, "p{digits}"),
                    // 0.5 prints as "0.5": one digit is tenths, so p50.
                    Some(digit) if digit.len() == 1 => write!(f, "p{digit}0"),
                    _ if *q == 1.0 => f.write_str("p100"),
                    _ => write!(f, "quantile({q})"),
                }
            }
            Aggregation::Above(threshold) => write!(f, "above({threshold})"),
            Aggregation::Below(threshold) => write!(f, "below({threshold})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_canonical_names() {
        for text in [
            "count",
            "sum",
            "rate",
            "last",
            "min",
            "max",
            "mean",
            "stdev",
            "histogram",
            "p50",
            "p90",
            "p99",
            "p999",
            "p9999",
            "p05",
            "p100",
            "above(1.5)",
            "below(0.25)",
        ] {
            let aggregation: Aggregation = text.parse().unwrap();
            assert_eq!(aggregation.to_string(), text);
        }
        assert_eq!("quantile(0.5)".parse(), Ok(Aggregation::Quantile(0.5)));
        assert_eq!(Aggregation::Quantile(0.5).to_string(), "p50");
        assert_eq!(Aggregation::Quantile(0.975).to_string(), "p975");
        assert_eq!(Aggregation::Quantile(0.0).to_string(), "quantile(0)");
        assert_eq!(" above ( 2 ) ".parse(), Ok(Aggregation::Above(2.0)));
    }

    #[test]
    fn refuses_unknown_and_out_of_range() {
        for text in [
            "p9",
            "p",
            "pxx",
            "median",
            "quantile(1.5)",
            "quantile(x)",
            "above(inf)",
            "above()",
            "above(NaN)",
        ] {
            assert!(text.parse::<Aggregation>().is_err(), "{text:?}");
        }
    }

    #[test]
    fn kinds_take_only_meaningful_aggregations() {
        assert!(Aggregation::Rate.applies_to(Kind::Counter));
        assert!(!Aggregation::Quantile(0.5).applies_to(Kind::Counter));
        assert!(Aggregation::Last.applies_to(Kind::Gauge));
        assert!(!Aggregation::Last.applies_to(Kind::Distribution));
        assert!(Aggregation::Above(1.0).applies_to(Kind::Distribution));
        assert!(Aggregation::Count.applies_to(Kind::Set));
        assert!(!Aggregation::Sum.applies_to(Kind::Set));
    }
}
