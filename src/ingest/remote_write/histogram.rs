//! Native histograms of remote write into the model's `NativeHistogram`:
//! spans and deltas expanded to absolute `(index, count)` buckets, indices
//! moved from Prometheus' upper-bound convention to the model's lower-bound one.

use std::ops::RangeInclusive;

use thiserror::Error;

use crate::api::prometheus as wire;
use crate::model::NativeHistogram;

use wire::histogram::{Count, ZeroCount};

/// Schemas remote write defines (base `2^(2^-schema)`); others are refused.
pub const SCHEMAS: RangeInclusive<i32> = -4..=8;

/// Why one native histogram was refused.
#[derive(Debug, Error, PartialEq)]
pub enum HistogramError {
    /// Float counts (`count_float`, `*_counts`): tailfold folds integer counts only.
    #[error("float histograms are not supported, only integer counts (count_int and bucket deltas)")]
    Float,
    /// A schema outside [`SCHEMAS`] (custom buckets are -53).
    #[error("schema {0} is outside -4..=8")]
    Schema(i32),
    /// A negative, infinite or NaN zero threshold.
    #[error("zero threshold {0} is negative or not finite")]
    ZeroThreshold(f64),
    /// Span lengths and deltas disagree.
    #[error("{side} spans cover {buckets} buckets but {deltas} deltas were sent")]
    SpanMismatch {
        /// `positive` or `negative`.
        side: &'static str,
        /// Sum of span lengths.
        buckets: u64,
        /// Deltas sent.
        deltas: usize,
    },
    /// Deltas that add up to a negative (or overflowing) count.
    #[error("{side} bucket {index} has a negative count")]
    NegativeCount {
        /// `positive` or `negative`.
        side: &'static str,
        /// The Prometheus bucket index.
        index: i64,
    },
    /// A bucket index past 32 bits.
    #[error("{side} bucket index {index} is out of range")]
    IndexOutOfRange {
        /// `positive` or `negative`.
        side: &'static str,
        /// The Prometheus bucket index.
        index: i64,
    },
    /// Fewer observations than the buckets hold.
    #[error("count {count} is less than the {buckets} observations in its buckets")]
    CountTooSmall {
        /// The histogram's count.
        count: u64,
        /// Zero bucket plus all buckets.
        buckets: u128,
    },
}

/// Expands spans and delta-encoded counts into absolute `(index, count)`
/// pairs of non-empty buckets, ascending, with model indices.
///
/// A span's offset is the index of its first bucket for the first span and
/// the gap after the previous span for the others; each delta is the change
/// from the previous bucket's count, across spans. Prometheus indexes a
/// bucket by its upper bound (bucket `i` covers `(base^(i-1), base^i]`), the
/// model like OTLP by its lower bound (`(base^i, base^(i+1)]`), so a model
/// index is the Prometheus index minus one.
pub fn expand_buckets(
    side: &'static str,
    spans: &[wire::BucketSpan],
    deltas: &[i64],
) -> Result<Vec<(i32, u64)>, HistogramError> {
    let buckets: u64 = spans.iter().map(|span| u64::from(span.length)).sum();
    // Checked first, so a span claiming billions of buckets costs no work.
    if buckets != deltas.len() as u64 {
        return Err(HistogramError::SpanMismatch {
            side,
            buckets,
            deltas: deltas.len(),
        });
    }
    let mut out = Vec::with_capacity(deltas.len());
    let mut deltas = deltas.iter();
    let mut index: i64 = 0;
    let mut count: i64 = 0;
    for span in spans {
        index += i64::from(span.offset);
        for delta in deltas.by_ref().take(span.length as usize) {
            count = count
                .checked_add(*delta)
                .filter(|count| *count >= 0)
                .ok_or(HistogramError::NegativeCount { side, index })?;
            if count > 0 {
                let model = i32::try_from(index - 1).map_err(|_| HistogramError::IndexOutOfRange { side, index })?;
                out.push((model, count as u64));
            }
            index += 1;
        }
    }
    Ok(out)
}

/// Reads one integer native histogram (not a stale marker: the caller skips those).
pub fn decode_histogram(histogram: &wire::Histogram) -> Result<NativeHistogram, HistogramError> {
    let float = matches!(histogram.count, Some(Count::CountFloat(_)))
        || matches!(histogram.zero_count, Some(ZeroCount::ZeroCountFloat(_)))
        || !histogram.positive_counts.is_empty()
        || !histogram.negative_counts.is_empty();
    if float {
        return Err(HistogramError::Float);
    }
    if !SCHEMAS.contains(&histogram.schema) {
        return Err(HistogramError::Schema(histogram.schema));
    }
    if !histogram.zero_threshold.is_finite() || histogram.zero_threshold < 0.0 {
        return Err(HistogramError::ZeroThreshold(histogram.zero_threshold));
    }
    let count = match histogram.count {
        Some(Count::CountInt(count)) => count,
        _ => 0,
    };
    let zero_count = match histogram.zero_count {
        Some(ZeroCount::ZeroCountInt(count)) => count,
        _ => 0,
    };
    let positive = expand_buckets("positive", &histogram.positive_spans, &histogram.positive_deltas)?;
    let negative = expand_buckets("negative", &histogram.negative_spans, &histogram.negative_deltas)?;
    let buckets = u128::from(zero_count)
        + positive
            .iter()
            .chain(&negative)
            .map(|(_, count)| u128::from(*count))
            .sum::<u128>();
    // More is fine: NaN observations are counted but land in no bucket.
    if u128::from(count) < buckets {
        return Err(HistogramError::CountTooSmall { count, buckets });
    }
    Ok(NativeHistogram {
        timestamp_ms: Some(histogram.timestamp),
        scale: histogram.schema as i8,
        zero_threshold: histogram.zero_threshold,
        zero_count,
        count,
        sum: histogram.sum,
        positive,
        negative,
        exemplars: Vec::new(),
    })
}
