//! A histogram as plain, serialisable parts (buckets, reservoirs, spread),
//! and the checked way back: what a cluster forwards between instances when
//! an input owner hands its share of a rollup window to the rollup's owner.

use serde::{Deserialize, Serialize};

use super::mapping::MIN_SCALE;
use super::store::Side;
use super::{ExpHistogram, HistogramConfig, Links, MAX_EXEMPLAR_SCALE_REDUCTION};
use crate::aggregate::exemplar::ExemplarSlot;

/// Largest bucket index magnitude accepted from parts: finite values map
/// within about ±2^19 at the finest scale (see the reservoir key width).
const MAX_INDEX: i32 = 1 << 22;

/// Everything an [`ExpHistogram`] holds, as plain data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistogramParts {
    /// Current scale.
    pub scale: i8,
    /// Reservoir keying shift (see [`ExpHistogram::exemplar_shift`]).
    pub exemplar_shift: u8,
    /// Samples in the zero bucket.
    pub zero_count: u64,
    /// Samples in all buckets.
    pub count: u64,
    /// Sum of the samples.
    pub sum: f64,
    /// Smallest sample (`+inf` when empty).
    pub min: f64,
    /// Largest sample (`-inf` when empty).
    pub max: f64,
    /// Running mean (Welford).
    pub mean: f64,
    /// Sum of squared deviations (Welford).
    pub m2: f64,
    /// Non-zero positive buckets `(index, count)`, ascending.
    pub positive: Vec<(i32, u64)>,
    /// Non-zero negative buckets `(index, count)` by magnitude, ascending.
    pub negative: Vec<(i32, u64)>,
    /// Positive-side reservoirs.
    pub positive_exemplars: Vec<ExemplarSlot>,
    /// Negative-side reservoirs.
    pub negative_exemplars: Vec<ExemplarSlot>,
    /// The zero bucket's reservoir.
    pub zero_exemplar: Option<ExemplarSlot>,
    /// With a link plan: its threshold counts, extremes and reservoirs
    /// (absent from parts of a histogram without one).
    #[serde(default)]
    pub links: Option<Box<Links>>,
}

/// Why parts cannot be a histogram (hostile or corrupt input).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PartsError {
    /// Scale outside what a histogram can have, or finer than the config allows.
    #[error("histogram parts: scale {scale} outside {MIN_SCALE}..={max}")]
    Scale {
        /// The scale given.
        scale: i8,
        /// The finest scale allowed here.
        max: i8,
    },
    /// Exemplar shift beyond the largest reduction.
    #[error("histogram parts: exemplar shift {0} above {MAX_EXEMPLAR_SCALE_REDUCTION}")]
    Shift(u8),
    /// A bucket index out of range, out of order or repeated.
    #[error("histogram parts: bucket index {0} out of range or out of order")]
    Bucket(i32),
    /// The populated range is wider than `max_buckets`.
    #[error("histogram parts: {span} buckets on one side exceed max_buckets {max}")]
    Span {
        /// Populated range.
        span: u64,
        /// The limit.
        max: usize,
    },
    /// The counts do not add up to `count`.
    #[error("histogram parts: bucket counts add up to {buckets}, count says {count}")]
    Count {
        /// Sum of the buckets and the zero count.
        buckets: u64,
        /// The declared count.
        count: u64,
    },
    /// A reservoir with no sample, a non-finite value, or a key outside the buckets.
    #[error("histogram parts: bad exemplar reservoir at key {0}")]
    Exemplar(i32),
    /// Links that break their own invariants (see the message).
    #[error("histogram parts: links {0}")]
    Links(String),
    /// A non-finite statistic, or min above max.
    #[error("histogram parts: statistics are not finite or min > max")]
    Statistics,
}

impl ExpHistogram {
    /// The histogram as plain parts ([`ExpHistogram::from_parts`] rebuilds it).
    pub fn to_parts(&self) -> HistogramParts {
        HistogramParts {
            scale: self.scale,
            exemplar_shift: self.exemplar_shift,
            zero_count: self.zero_count,
            count: self.count,
            sum: self.sum,
            min: self.min,
            max: self.max,
            mean: self.mean,
            m2: self.m2,
            positive: self.positive.buckets().collect(),
            negative: self.negative().buckets().collect(),
            positive_exemplars: self.positive.slots(),
            negative_exemplars: self.negative().slots(),
            zero_exemplar: self.zero_exemplar.as_deref().copied(),
            links: self.links.clone(),
        }
    }

    /// Rebuilds a histogram from parts under `config`, checking every
    /// invariant first: parts from another process are untrusted, and a
    /// refusal says what is wrong instead of a panic later.
    pub fn from_parts(config: HistogramConfig, parts: &HistogramParts) -> Result<Self, PartsError> {
        let config = config.sanitized();
        if !(MIN_SCALE..=config.scale).contains(&parts.scale) {
            return Err(PartsError::Scale {
                scale: parts.scale,
                max: config.scale,
            });
        }
        if parts.exemplar_shift > MAX_EXEMPLAR_SCALE_REDUCTION {
            return Err(PartsError::Shift(parts.exemplar_shift));
        }
        let mut total = parts.zero_count;
        for buckets in [&parts.positive, &parts.negative] {
            check_buckets(buckets, config.max_buckets)?;
            for (_, count) in buckets {
                total = total.checked_add(*count).ok_or(PartsError::Count {
                    buckets: u64::MAX,
                    count: parts.count,
                })?;
            }
        }
        if total != parts.count {
            return Err(PartsError::Count {
                buckets: total,
                count: parts.count,
            });
        }
        let statistics = [parts.sum, parts.mean, parts.m2];
        if parts.count > 0
            && (statistics.iter().any(|value| !value.is_finite())
                || !parts.min.is_finite()
                || !parts.max.is_finite()
                || parts.min > parts.max)
        {
            return Err(PartsError::Statistics);
        }
        let mut histogram = ExpHistogram::new(config);
        histogram.scale = parts.scale;
        histogram.exemplar_shift = parts.exemplar_shift;
        histogram.positive = side_of(&parts.positive, &parts.positive_exemplars, parts.exemplar_shift)?;
        if !parts.negative.is_empty() {
            histogram.negative = Some(Box::new(side_of(
                &parts.negative,
                &parts.negative_exemplars,
                parts.exemplar_shift,
            )?));
        } else if let Some(slot) = parts.negative_exemplars.first() {
            return Err(PartsError::Exemplar(slot.index));
        }
        if let Some(slot) = parts.zero_exemplar {
            if parts.zero_count == 0 || !valid_slot(&slot) {
                return Err(PartsError::Exemplar(0));
            }
            histogram.zero_exemplar = Some(Box::new(slot));
        }
        histogram.zero_count = parts.zero_count;
        histogram.count = parts.count;
        if parts.count > 0 {
            histogram.sum = parts.sum;
            histogram.min = parts.min;
            histogram.max = parts.max;
            histogram.mean = parts.mean;
            histogram.m2 = parts.m2;
        }
        if let Some(links) = &parts.links {
            let scale = histogram.scale;
            let zero_threshold = histogram.config.zero_threshold;
            let bucket_of = |value: f64| super::links::pos_of(super::bucket_ref_of(scale, zero_threshold, value));
            let mut links = links.clone();
            links.check(bucket_of).map_err(PartsError::Links)?;
            histogram.links = Some(links);
            histogram.keeps_exemplars = false;
            let count = histogram.count;
            if let Some((links, order)) = histogram.links_and_order() {
                links.replace(count, &order);
            }
        }
        Ok(histogram)
    }
}

/// Indices strictly ascending, in range, counts non-zero, span within `max`.
fn check_buckets(buckets: &[(i32, u64)], max: usize) -> Result<(), PartsError> {
    let mut previous: Option<i32> = None;
    for &(index, count) in buckets {
        if !(-MAX_INDEX..=MAX_INDEX).contains(&index) || count == 0 || previous.is_some_and(|p| p >= index) {
            return Err(PartsError::Bucket(index));
        }
        previous = Some(index);
    }
    if let (Some(first), Some(last)) = (buckets.first(), buckets.last()) {
        let span = (i64::from(last.0) - i64::from(first.0) + 1) as u64;
        if span > max as u64 {
            return Err(PartsError::Span { span, max });
        }
    }
    Ok(())
}

fn valid_slot(slot: &ExemplarSlot) -> bool {
    slot.seen > 0 && slot.exemplar.value.is_finite()
}

/// One side from checked buckets and its reservoirs, each keyed inside the buckets' range.
fn side_of(buckets: &[(i32, u64)], slots: &[ExemplarSlot], shift: u8) -> Result<Side, PartsError> {
    let mut side = Side::default();
    for &(index, count) in buckets {
        side.add(index, count);
    }
    let span = side.span();
    let mut previous: Option<i32> = None;
    for slot in slots {
        let inside = span.is_some_and(|(lo, hi)| (lo >> shift..=hi >> shift).contains(&slot.index));
        if !inside || !valid_slot(slot) || previous.is_some_and(|p| p >= slot.index) {
            return Err(PartsError::Exemplar(slot.index));
        }
        previous = Some(slot.index);
        side.insert_slot(slot);
    }
    Ok(side)
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    use super::*;
    use crate::aggregate::exemplar::Exemplar;

    fn traced(value: f64, n: u8) -> Exemplar {
        Exemplar {
            trace_id: [n; 16],
            span_id: [n; 8],
            value,
            timestamp_ms: i64::from(n),
        }
    }

    #[test]
    fn parts_round_trip_every_bucket_reservoir_and_statistic() {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut histogram = ExpHistogram::default();
        for (n, value) in [0.0, 0.012, 0.5, 0.51, 3.0, -2.0, 1e3].into_iter().enumerate() {
            histogram.record(value, Some(traced(value, n as u8 + 1)), &mut rng);
        }
        let parts = histogram.to_parts();
        let back = ExpHistogram::from_parts(*histogram.config(), &parts).expect("valid parts");
        assert_eq!(back.to_parts(), parts);
        assert_eq!(back.quantile(0.99), histogram.quantile(0.99));
        assert_eq!((back.count(), back.min(), back.max()), (7, Some(-2.0), Some(1e3)));
        assert_eq!(back.stdev(), histogram.stdev());
    }

    #[test]
    fn hostile_parts_are_refused_with_the_reason() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut histogram = ExpHistogram::default();
        histogram.record(2.0, Some(traced(2.0, 1)), &mut rng);
        histogram.record(4.0, None, &mut rng);
        let good = histogram.to_parts();
        let config = *histogram.config();
        let refused = |edit: &dyn Fn(&mut HistogramParts)| {
            let mut parts = good.clone();
            edit(&mut parts);
            ExpHistogram::from_parts(config, &parts).expect_err("refused")
        };
        assert!(matches!(
            refused(&|p| p.count = 3),
            PartsError::Count { buckets: 2, count: 3 }
        ));
        assert!(matches!(refused(&|p| p.scale = 9), PartsError::Scale { scale: 9, .. }));
        assert!(matches!(refused(&|p| p.positive.reverse()), PartsError::Bucket(_)));
        assert!(matches!(
            refused(&|p| p.positive = vec![(0, 1), (100_000, 1)]),
            PartsError::Span { .. }
        ));
        assert!(matches!(
            refused(&|p| p.positive_exemplars[0].index = 9_999),
            PartsError::Exemplar(9_999)
        ));
        assert!(matches!(
            refused(&|p| p.positive_exemplars[0].seen = 0),
            PartsError::Exemplar(_)
        ));
        assert!(matches!(refused(&|p| p.max = f64::NAN), PartsError::Statistics));
        assert!(matches!(
            refused(&|p| p.positive[0].0 = i32::MAX),
            PartsError::Bucket(_)
        ));
    }
}
