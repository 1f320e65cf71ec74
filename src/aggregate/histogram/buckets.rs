//! Folding a histogram given as bucket lists (a Prometheus native or OTLP
//! exponential histogram, as a sender reports it) into an `ExpHistogram`:
//! exact bucket arithmetic, only the spread statistics are estimated.

use rand::Rng;

use super::mapping::{bucket_bounds, bucket_index, representative, MAX_SCALE, MIN_SCALE};
use super::store::Side;
use super::{links, shift_needed, BucketRef, ExpHistogram, HistogramError};
use crate::aggregate::exemplar::{Exemplar, ExemplarSlot};

/// A histogram as bucket lists, in [`ExpHistogram`]'s layout: bucket `i` at
/// `scale` covers `(base^i, base^(i+1)]`.
#[derive(Clone, Copy, Debug)]
pub struct BucketCounts<'a> {
    /// Scale of the indices, `MIN_SCALE..=MAX_SCALE`.
    pub scale: i8,
    /// Upper bound of the zero bucket's magnitudes (bounds `min`/`max` only).
    pub zero_threshold: f64,
    /// Samples in the zero bucket.
    pub zero_count: u64,
    /// `(index, count)` of positive buckets; zero counts are skipped.
    pub positive: &'a [(i32, u64)],
    /// `(index, count)` of negative buckets, by magnitude.
    pub negative: &'a [(i32, u64)],
    /// Sum of the samples; when not finite, it is estimated from the buckets.
    pub sum: f64,
}

/// Index range of the non-empty buckets of `buckets`.
fn span_of(buckets: &[(i32, u64)]) -> Option<(i32, i32)> {
    buckets
        .iter()
        .filter(|(_, count)| *count > 0)
        .fold(None, |span, &(index, _)| match span {
            None => Some((index, index)),
            Some((lo, hi)) => Some((index.min(lo), index.max(hi))),
        })
}

/// Union of two index ranges.
fn union(a: Option<(i32, i32)>, b: Option<(i32, i32)>) -> Option<(i32, i32)> {
    match (a, b) {
        (Some((a0, a1)), Some((b0, b1))) => Some((a0.min(b0), a1.max(b1))),
        (a, None) => a,
        (None, b) => b,
    }
}

impl BucketCounts<'_> {
    /// Samples in all buckets (the zero bucket included).
    pub fn count(&self) -> u64 {
        let buckets = self.positive.iter().chain(self.negative).map(|(_, count)| *count);
        buckets.fold(self.zero_count, u64::saturating_add)
    }

    /// Bounds of the lowest and highest non-empty buckets. The zero bucket
    /// spans `[0, zero_threshold]`, or `[-zero_threshold, 0]` when only
    /// negative buckets sit beside it (Prometheus' interpolation convention).
    fn value_bounds(&self) -> (f64, f64) {
        let (positive, negative) = (span_of(self.positive), span_of(self.negative));
        let lower = |index| bucket_bounds(self.scale, index).0;
        let upper = |index| bucket_bounds(self.scale, index).1;
        let min = match (negative, self.zero_count > 0, positive) {
            (Some((_, hi)), _, _) => -upper(hi),
            (None, true, _) => 0.0,
            (None, false, Some((lo, _))) => lower(lo),
            (None, false, None) => 0.0,
        };
        let max = match (positive, self.zero_count > 0, negative) {
            (Some((_, hi)), _, _) => upper(hi),
            (None, true, None) => self.zero_threshold,
            (None, true, Some(_)) => 0.0,
            (None, false, Some((lo, _))) => -lower(lo),
            (None, false, None) => 0.0,
        };
        (min, max)
    }

    /// `(c, v)` per non-empty bucket: its count and the representative value
    /// quantiles report for it (0 for the zero bucket).
    fn representatives(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        let scale = self.scale;
        let positive = self.positive.iter().map(move |&(i, c)| (i, c, 1.0));
        let negative = self.negative.iter().map(move |&(i, c)| (i, c, -1.0));
        positive
            .chain(negative)
            .filter(|(_, c, _)| *c > 0)
            .map(move |(i, c, sign)| {
                let (l, u) = bucket_bounds(scale, i);
                (c as f64, sign * representative(l, u))
            })
            .chain(std::iter::once((self.zero_count as f64, 0.0)))
    }
}

impl ExpHistogram {
    /// Adds a histogram given as bucket lists into `self`, exactly: each
    /// bucket lands whole in the bucket it maps to once both sides are at the
    /// coarser scale (and coarser still if the union would exceed
    /// `max_buckets`); values are never re-bucketed by a representative.
    ///
    /// Bucket lists carry no min, max or spread, so these are approximate for
    /// the part they contribute: min and max are the outer bounds of the
    /// lowest and highest non-empty buckets (so p0/p100 read bucket bounds),
    /// the mean is `sum / count`, and the spread is that of the buckets'
    /// representative values around it. Zero counts are added as they are:
    /// the zero thresholds are assumed to agree. Refuses a scale outside
    /// `MIN_SCALE..=MAX_SCALE` and leaves `self` untouched then.
    pub fn merge_buckets<R: Rng + ?Sized>(
        &mut self,
        other: &BucketCounts<'_>,
        rng: &mut R,
    ) -> Result<(), HistogramError> {
        if !(MIN_SCALE..=MAX_SCALE).contains(&other.scale) {
            return Err(HistogramError::ScaleOutOfRange(other.scale));
        }
        let count = other.count();
        if count == 0 {
            return Ok(());
        }
        // Bucket lists say nothing finer than their buckets: a counted
        // threshold gains the estimate of the lists' own histogram.
        if self
            .links
            .as_ref()
            .is_some_and(|links| !links.plan().thresholds.is_empty())
        {
            let mut part = ExpHistogram::new(self.config);
            part.merge_buckets(other, rng)?;
            if let Some(links) = &mut self.links {
                links.add_estimates(|t| part.count_above(t));
            }
        }
        // Settle the final scale first, so the dense ranges never grow past max_buckets.
        let mut target = self.scale.min(other.scale);
        let at_target =
            |span: Option<(i32, i32)>, from: i8| span.map(|(lo, hi)| (lo >> (from - target), hi >> (from - target)));
        let limit = (i32::from(target) - i32::from(MIN_SCALE)) as u32;
        let max = self.config.max_buckets;
        let need = |mine: &Side, theirs: &[(i32, u64)]| {
            union(
                at_target(mine.span(), self.scale),
                at_target(span_of(theirs), other.scale),
            )
            .map_or(0, |(lo, hi)| shift_needed(lo, hi, max, limit))
        };
        let k = need(&self.positive, other.positive).max(need(self.negative(), other.negative));
        target -= k as i8;
        self.downscale((self.scale - target) as u32, rng);
        let shift = (other.scale - target) as u32;
        for &(index, n) in other.positive.iter().filter(|(_, n)| *n > 0) {
            self.positive.add(index >> shift, n);
        }
        for &(index, n) in other.negative.iter().filter(|(_, n)| *n > 0) {
            self.negative.get_or_insert_default().add(index >> shift, n);
        }
        self.zero_count += other.zero_count;

        let n = count as f64;
        let sum = if other.sum.is_finite() {
            other.sum
        } else {
            other.representatives().map(|(c, v)| c * v).sum()
        };
        let mean = sum / n;
        let m2: f64 = other.representatives().map(|(c, v)| c * (v - mean) * (v - mean)).sum();
        let (min, max) = other.value_bounds();
        // Chan et al.'s parallel formula, as `merge` combines two histograms.
        let na = self.count as f64;
        let delta = mean - self.mean;
        self.mean += delta * (n / (na + n));
        self.m2 += m2 + delta * delta * (na / (na + n)) * n;
        self.count += count;
        self.sum += sum;
        self.min = self.min.min(min);
        self.max = self.max.max(max);
        let total = self.count;
        if let Some((links, order)) = self.links_and_order() {
            links.replace(total, &order);
        }
        Ok(())
    }

    /// Offers a traced sample to the reservoir of the bucket holding
    /// `exemplar.value`, without counting a sample: for exemplars that come
    /// apart from their samples, as a scraped native histogram's do. Only a
    /// non-empty bucket takes it (a kept exemplar always has samples beside
    /// it); returns whether it was offered.
    pub fn offer_exemplar<R: Rng + ?Sized>(&mut self, exemplar: Exemplar, rng: &mut R) -> bool {
        let value = exemplar.value;
        if !value.is_finite() {
            return false;
        }
        if value.abs() <= self.config.zero_threshold {
            if self.zero_count == 0 {
                return false;
            }
            let count = self.count;
            if let Some((links, order)) = self.links_and_order() {
                links.offer(0, exemplar, count, &order, rng);
                return true;
            }
            if !self.keeps_exemplars {
                return false;
            }
            match &mut self.zero_exemplar {
                Some(slot) => slot.offer(exemplar, rng),
                None => self.zero_exemplar = Some(Box::new(ExemplarSlot::new(0, exemplar))),
            }
            return true;
        }
        let index = bucket_index(self.scale, value);
        if self.links.is_some() {
            let bucket = if value < 0.0 {
                BucketRef::Negative(index)
            } else {
                BucketRef::Positive(index)
            };
            let side = if value < 0.0 { self.negative() } else { &self.positive };
            if side.count_at(index) == 0 {
                return false;
            }
            let count = self.count;
            if let Some((links, order)) = self.links_and_order() {
                links.offer(links::pos_of(bucket), exemplar, count, &order, rng);
            }
            return true;
        }
        if !self.keeps_exemplars {
            return false;
        }
        let side = if value < 0.0 {
            match &mut self.negative {
                Some(side) => side,
                None => return false,
            }
        } else {
            &mut self.positive
        };
        if side.count_at(index) == 0 {
            return false;
        }
        if side.offer(index, self.exemplar_shift, exemplar, rng) {
            self.enforce_max_exemplars(rng);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    use super::*;
    use crate::aggregate::histogram::HistogramConfig;

    fn config(scale: i8) -> HistogramConfig {
        HistogramConfig {
            scale,
            ..HistogramConfig::default()
        }
    }

    fn raw(values: &[f64], scale: i8) -> ExpHistogram {
        let mut histogram = ExpHistogram::new(config(scale));
        let mut rng = SmallRng::seed_from_u64(1);
        for &value in values {
            histogram.record(value, None, &mut rng);
        }
        histogram
    }

    fn values() -> Vec<f64> {
        (0..200)
            .map(|i| 0.001 * 1.05f64.powi(i) - 0.02 * f64::from(i % 7 == 0))
            .collect()
    }

    type Layout = (Vec<(i32, u64)>, Vec<(i32, u64)>, u64);

    fn buckets(h: &ExpHistogram) -> Layout {
        (
            h.positive_buckets().collect(),
            h.negative_buckets().collect(),
            h.zero_count(),
        )
    }

    #[test]
    fn bucket_lists_fold_exactly_into_a_finer_histogram() {
        let data = values();
        let expected = raw(&data, 3);
        let (positive, negative, zero_count) = buckets(&expected);
        let mut folded = ExpHistogram::new(config(6));
        let mut rng = SmallRng::seed_from_u64(2);
        let counts = BucketCounts {
            scale: 3,
            zero_threshold: 0.0,
            zero_count,
            positive: &positive,
            negative: &negative,
            sum: expected.sum(),
        };
        folded.merge_buckets(&counts, &mut rng).unwrap();
        assert_eq!(folded.scale(), 3);
        assert_eq!(buckets(&folded), buckets(&expected));
        assert_eq!((folded.count(), folded.sum()), (expected.count(), expected.sum()));
        assert!((folded.mean().unwrap() - expected.mean().unwrap()).abs() < 1e-12);
        // Every quantile lands in the same bucket; its value differs only in the
        // lowest and highest buckets, where exact min/max clamp the raw one.
        for q in [0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0] {
            let (got, want) = (folded.quantile(q).unwrap(), expected.quantile(q).unwrap());
            assert_eq!(got.bucket, want.bucket, "q={q}");
            if (0.1..=0.9).contains(&q) {
                assert_eq!(got, want, "q={q}");
            }
        }
        // Extremes are the outer bounds of the outer buckets.
        assert_eq!(folded.min(), Some(-bucket_bounds(3, negative.last().unwrap().0).1));
        assert!(folded.min().unwrap() <= expected.min().unwrap());
        assert_eq!(folded.max(), Some(bucket_bounds(3, positive.last().unwrap().0).1));
        let (stdev, exact) = (folded.stdev().unwrap(), expected.stdev().unwrap());
        assert!((stdev - exact).abs() < 0.1 * exact, "{stdev} vs {exact}");
    }

    #[test]
    fn finer_lists_are_downscaled_and_max_buckets_holds() {
        let data = values();
        let fine = raw(&data, 6);
        let (positive, negative, zero_count) = buckets(&fine);
        let mut coarse = raw(&data, 2);
        let mut rng = SmallRng::seed_from_u64(3);
        let counts = BucketCounts {
            scale: 6,
            zero_threshold: 0.0,
            zero_count,
            positive: &positive,
            negative: &negative,
            sum: fine.sum(),
        };
        coarse.merge_buckets(&counts, &mut rng).unwrap();
        let mut twice = raw(&data, 2);
        twice.merge(&raw(&data, 2), &mut rng);
        assert_eq!(buckets(&coarse), buckets(&twice));

        let mut narrow = ExpHistogram::new(HistogramConfig {
            max_buckets: 8,
            ..config(6)
        });
        narrow.merge_buckets(&counts, &mut rng).unwrap();
        let span: Vec<i32> = narrow.positive_buckets().map(|(i, _)| i).collect();
        let (lo, hi) = (span[0], span[span.len() - 1]);
        assert!(hi - lo < 8, "{lo}..{hi} at scale {}", narrow.scale());
        assert_eq!(narrow.count(), fine.count());
    }

    #[test]
    fn an_unsupported_scale_or_an_empty_list_changes_nothing() {
        let mut histogram = raw(&[1.0, 2.0], 6);
        let mut rng = SmallRng::seed_from_u64(4);
        let mut counts = BucketCounts {
            scale: 9,
            zero_threshold: 0.0,
            zero_count: 1,
            positive: &[],
            negative: &[],
            sum: 0.0,
        };
        assert_eq!(
            histogram.merge_buckets(&counts, &mut rng),
            Err(HistogramError::ScaleOutOfRange(9))
        );
        counts.scale = 0;
        counts.zero_count = 0;
        histogram.merge_buckets(&counts, &mut rng).unwrap();
        assert_eq!((histogram.count(), histogram.scale()), (2, 6));
    }

    #[test]
    fn exemplars_are_offered_to_populated_buckets_without_counting() {
        let mut histogram = raw(&[0.0, 1.5, 1.5, 3.0], 3);
        let mut rng = SmallRng::seed_from_u64(5);
        let exemplar = |value: f64| Exemplar {
            trace_id: [7; 16],
            span_id: [1; 8],
            value,
            timestamp_ms: 9,
        };
        assert!(histogram.offer_exemplar(exemplar(1.51), &mut rng));
        assert!(histogram.offer_exemplar(exemplar(0.0), &mut rng));
        assert!(!histogram.offer_exemplar(exemplar(100.0), &mut rng), "empty bucket");
        assert!(!histogram.offer_exemplar(exemplar(f64::NAN), &mut rng));
        assert_eq!(histogram.count(), 4);
        let p50 = histogram.quantile(0.5).unwrap();
        assert_eq!(p50.bucket, BucketRef::Positive(bucket_index(3, 1.5)));
        assert_eq!(p50.exemplar.map(|e| e.value), Some(1.51));
        assert_eq!(histogram.quantile(0.0).unwrap().exemplar.map(|e| e.value), Some(0.0));
    }
}
