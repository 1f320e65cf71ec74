//! Sparse base-2 exponential histogram (Prometheus native / OTLP exponential
//! bucket layout) that keeps exemplars where its window's emitted
//! aggregations need them (see `links`), used by tailfold to aggregate
//! latency-like streams and answer quantile queries.

mod buckets;
mod cells;
mod config;
mod links;
mod mapping;
mod parts;
mod reservoirs;
mod store;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use rand::Rng;

use crate::aggregate::exemplar::{Exemplar, ExemplarSlot};
pub use buckets::BucketCounts;
pub use config::{HistogramConfig, HistogramError, MAX_EXEMPLAR_SCALE_REDUCTION, MIN_MAX_EXEMPLARS};
use links::{pos_of, rank_of, Keys, Order};
pub use links::{LinkPlan, Links, Tightness, BAND_SIGMAS, OPEN_SLOTS};
pub use mapping::{bucket_bounds, bucket_index, relative_error, MAX_SCALE, MIN_SCALE};
pub use parts::{HistogramParts, PartsError};
use store::Side;

/// Identifies one bucket at a histogram's current scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BucketRef {
    /// The zero bucket, `|v| <= zero_threshold`.
    Zero,
    /// Positive bucket `i`: values in `(base^i, base^(i+1)]`.
    Positive(i32),
    /// Negative bucket `i`: values with `|v|` in `(base^i, base^(i+1)]`.
    Negative(i32),
}

/// Result of `ExpHistogram::quantile`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantileEstimate {
    /// Estimated value, within `relative_error(scale)` of the exact sample.
    pub value: f64,
    /// The bucket holding the exact sample.
    pub bucket: BucketRef,
    /// The exemplar kept by that bucket's reservoir, if it saw a traced
    /// sample: with an exemplar shift n > 0 (see
    /// [`ExpHistogram::exemplar_shift`]) the reservoir covers the `2^n`
    /// buckets `(i >> n) << n ..` around `bucket`'s index `i`. With a link
    /// plan: a kept exemplar in `bucket`, else the nearest kept one.
    pub exemplar: Option<Exemplar>,
    /// How tightly `exemplar` is linked to `bucket` (present with it).
    pub tightness: Option<Tightness>,
}

/// Base-2 exponential histogram with count/sum/min/max/stdev and per-bucket
/// exemplar reservoirs. See the module docs for the bucket layout.
#[derive(Clone, Debug)]
pub struct ExpHistogram {
    config: HistogramConfig,
    scale: i8,
    /// Reservoirs are keyed by bucket index `>> exemplar_shift`: the
    /// configured reduction, raised when `max_exemplars` forced coarsening.
    exemplar_shift: u8,
    positive: Side,
    /// Allocated on the first negative sample: most distributions are
    /// latencies and sizes, and a window's header stays small without it.
    negative: Option<Box<Side>>,
    zero_count: u64,
    /// Boxed for the same reason: few windows see a zero with a trace.
    zero_exemplar: Option<Box<ExemplarSlot>>,
    /// With a link plan: the exemplars and counts the plan asks for, kept
    /// instead of the per-bucket reservoirs above.
    links: Option<Box<Links>>,
    /// False for a window that emits nothing an exemplar could link to.
    keeps_exemplars: bool,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    /// Welford running mean and sum of squared deviations.
    mean: f64,
    m2: f64,
}

impl Default for ExpHistogram {
    fn default() -> Self {
        Self::new(HistogramConfig::default())
    }
}

/// The bucket a finite `value` falls in at `scale`.
fn bucket_ref_of(scale: i8, zero_threshold: f64, value: f64) -> BucketRef {
    if value.abs() <= zero_threshold {
        BucketRef::Zero
    } else if value < 0.0 {
        BucketRef::Negative(bucket_index(scale, value))
    } else {
        BucketRef::Positive(bucket_index(scale, value))
    }
}

/// Smallest `k <= limit` with `(hi >> k) - (lo >> k) + 1 <= max`.
fn shift_needed(lo: i32, hi: i32, max: usize, limit: u32) -> u32 {
    let mut k = 0;
    while k < limit && ((hi >> k) - (lo >> k)) as usize + 1 > max {
        k += 1;
    }
    k
}

/// Fraction of the log-span `(a, b]` lying at or below `x` (clamped to [0, 1]).
fn log_share_below(a: f64, b: f64, x: f64) -> f64 {
    if !(a > 0.0 && b > a && b.is_finite()) {
        // Degenerate span: all samples sit at `b` as far as we can tell.
        return if x >= b { 1.0 } else { 0.0 };
    }
    ((x / a).ln() / (b / a).ln()).clamp(0.0, 1.0)
}

/// `round(count * share)`, never more than `count`.
fn portion(count: u64, share: f64) -> u64 {
    ((count as f64 * share).round() as u64).min(count)
}

impl ExpHistogram {
    /// An empty histogram. Invalid fields are clamped to the nearest valid
    /// value; use `try_new` (or `HistogramConfig::validate`) to reject them.
    pub fn new(config: HistogramConfig) -> Self {
        let config = config.sanitized();
        Self {
            config,
            scale: config.scale,
            exemplar_shift: config.exemplar_scale_reduction,
            positive: Side::default(),
            negative: None,
            zero_count: 0,
            zero_exemplar: None,
            links: None,
            keeps_exemplars: true,
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            mean: 0.0,
            m2: 0.0,
        }
    }

    /// An empty histogram for a window that emits what `plan` says: it
    /// keeps the exemplars and threshold counts the plan needs and no
    /// per-bucket reservoirs; without a plan it keeps no exemplars at all.
    pub fn with_plan(config: HistogramConfig, plan: Option<&Arc<LinkPlan>>) -> Self {
        Self {
            links: plan.map(|plan| Box::new(Links::new(Arc::clone(plan)))),
            keeps_exemplars: false,
            ..Self::new(config)
        }
    }

    /// How values map to bucket order keys at the current scale.
    fn keys(&self) -> Keys {
        Keys {
            scale: self.scale,
            zero_threshold: self.config.zero_threshold,
        }
    }

    /// The links, when the histogram follows a plan.
    pub fn links(&self) -> Option<&Links> {
        self.links.as_deref()
    }

    /// The links and the bucket order they walk, borrowed together.
    fn links_and_order(&mut self) -> Option<(&mut Links, Order<'_>)> {
        let links = self.links.as_deref_mut()?;
        let order = Order {
            positive: &self.positive,
            negative: self.negative.as_deref().unwrap_or(&store::NO_SAMPLES),
            zero: self.zero_count,
            keys: Keys {
                scale: self.scale,
                zero_threshold: self.config.zero_threshold,
            },
        };
        Some((links, order))
    }

    /// An empty histogram, or the configuration error.
    pub fn try_new(config: HistogramConfig) -> Result<Self, HistogramError> {
        config.validate().map(|()| Self::new(config))
    }

    /// The configuration in force.
    pub fn config(&self) -> &HistogramConfig {
        &self.config
    }

    /// Records one sample. `value` must be finite (checked in debug builds).
    ///
    /// With an exemplar, the bucket's reservoir is offered it (see
    /// `ExemplarSlot`); the exemplar's `value` is set to `value` so that a kept
    /// exemplar always lies in its bucket. Allocates only when the populated
    /// range grows or a bucket sees its first traced sample.
    pub fn record<R: Rng + ?Sized>(&mut self, value: f64, exemplar: Option<Exemplar>, rng: &mut R) {
        self.record_n(value, 1, exemplar, rng);
    }

    /// Records `n` samples of `value` at once: a sampled sender (statsd
    /// `@0.1`) stands one line for ten samples. The exemplar, if any, is
    /// offered to the reservoir once, as one traced sample. `n == 0` records nothing.
    pub fn record_n<R: Rng + ?Sized>(&mut self, value: f64, n: u64, exemplar: Option<Exemplar>, rng: &mut R) {
        debug_assert!(value.is_finite(), "recorded non-finite value {value}");
        if n == 0 {
            return;
        }
        self.count += n;
        self.sum += value * n as f64;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        // Welford for n equal values at once (West's weighted form).
        let delta = value - self.mean;
        self.mean += delta * n as f64 / self.count as f64;
        self.m2 += delta * (value - self.mean) * n as f64;

        let exemplar = exemplar.map(|e| Exemplar { value, ..e });
        let count = self.count;
        if value.abs() <= self.config.zero_threshold {
            self.zero_count += n;
            if let Some((links, order)) = self.links_and_order() {
                links.record(value, 0, n, exemplar, count, &order, rng);
                return;
            }
            if !self.keeps_exemplars {
                return;
            }
            if let Some(ex) = exemplar {
                match &mut self.zero_exemplar {
                    Some(slot) => slot.offer(ex, rng),
                    None => {
                        self.zero_exemplar = Some(Box::new(ExemplarSlot::new(0, ex)));
                    }
                }
            }
            return;
        }
        let mut index = bucket_index(self.scale, value);
        let negative = value < 0.0;
        let side = if negative { self.negative() } else { &self.positive };
        let (lo, hi) = side.span_with(index);
        if (hi - lo) as usize >= self.config.max_buckets {
            let k = shift_needed(lo, hi, self.config.max_buckets, self.downscale_limit());
            self.downscale(k, rng);
            index >>= k;
        }
        let side = if negative {
            self.negative.get_or_insert_default()
        } else {
            &mut self.positive
        };
        side.add(index, n);
        if self.links.is_some() {
            let bucket = if negative {
                BucketRef::Negative(index)
            } else {
                BucketRef::Positive(index)
            };
            if let Some((links, order)) = self.links_and_order() {
                links.record(value, pos_of(bucket), n, exemplar, count, &order, rng);
            }
            return;
        }
        if let Some(ex) = exemplar.filter(|_| self.keeps_exemplars) {
            let side = if negative {
                self.negative.get_or_insert_default()
            } else {
                &mut self.positive
            };
            if side.offer(index, self.exemplar_shift, ex, rng) {
                self.enforce_max_exemplars(rng);
            }
        }
    }

    /// The reduction reservoirs are keyed by now: bucket `i`'s exemplar is
    /// kept by the reservoir of the `2^n` buckets `(i >> n) << n ..`, i.e. the
    /// bucket at scale `scale() - n` holding it. Starts at
    /// `exemplar_scale_reduction` and grows while `max_exemplars` asks for it.
    pub fn exemplar_shift(&self) -> u8 {
        self.exemplar_shift
    }

    /// Re-keys every reservoir `by` steps coarser, merging those that meet.
    fn coarsen_exemplars<R: Rng + ?Sized>(&mut self, by: u8, rng: &mut R) {
        if by == 0 {
            return;
        }
        self.positive.coarsen_exemplars(u32::from(by), rng);
        if let Some(negative) = &mut self.negative {
            negative.coarsen_exemplars(u32::from(by), rng);
        }
        self.exemplar_shift += by;
    }

    /// Coarsens the reservoirs one step at a time until they fit
    /// `max_exemplars`, or their buckets are those of the coarsest scale.
    fn enforce_max_exemplars<R: Rng + ?Sized>(&mut self, rng: &mut R) {
        let max = self.config.max_exemplars as usize;
        while max > 0
            && self.positive.reservoirs() + self.negative().reservoirs() > max
            && i32::from(self.scale) - i32::from(self.exemplar_shift) > i32::from(MIN_SCALE)
        {
            self.coarsen_exemplars(1, rng);
        }
    }

    /// The side and bucket index `record_n` of `value` would use, unless it
    /// falls in the zero bucket or would first make the histogram downscale.
    #[inline]
    fn side_of(&self, value: f64) -> Option<(&Side, i32)> {
        if !value.is_finite() || value.abs() <= self.config.zero_threshold {
            return None;
        }
        let side = if value < 0.0 { self.negative() } else { &self.positive };
        Some((side, bucket_index(self.scale, value)))
    }

    /// Asks for the memory recording `value` will touch: its bucket's count
    /// and, when `traced`, its reservoir's index. A hint only (see
    /// `crate::prefetch`): the engine calls it for a whole shard's samples
    /// before recording any, so their misses overlap.
    #[inline]
    pub fn prefetch_record(&self, value: f64, traced: bool) {
        if let Some(links) = &self.links {
            crate::prefetch::prefetch(&**links);
        }
        if let Some((side, index)) = self.side_of(value) {
            side.prefetch_count(index);
            if traced {
                side.prefetch_reservoir_index(index, self.exemplar_shift);
            }
        }
    }

    /// The step after [`ExpHistogram::prefetch_record`]: asks for the
    /// reservoir a traced `value` will be offered to.
    #[inline]
    pub fn prefetch_reservoir(&self, value: f64) {
        // With links (in cache since `prefetch_record`), a traced sample
        // reads the band cursors first: per-bucket reservoirs are not used.
        if let Some(links) = &self.links {
            links.prefetch_bands();
            return;
        }
        if let Some((side, index)) = self.side_of(value) {
            side.prefetch_reservoir(index, self.exemplar_shift);
        }
    }

    /// How many more times the scale can still be halved.
    fn downscale_limit(&self) -> u32 {
        (i32::from(self.scale) - i32::from(MIN_SCALE)) as u32
    }

    /// Lowers the scale by `k`, merging each run of `2^k` buckets (and their
    /// exemplar reservoirs) into one.
    fn downscale<R: Rng + ?Sized>(&mut self, k: u32, rng: &mut R) {
        let k = k.min(self.downscale_limit());
        if k == 0 {
            return;
        }
        self.positive.downscale(k, rng);
        if let Some(negative) = &mut self.negative {
            negative.downscale(k, rng);
        }
        self.scale -= k as i8;
        let keys = self.keys();
        if let Some(links) = &mut self.links {
            links.downscale(keys, rng);
        }
    }

    /// Downscales until both signs fit `max_buckets` (or the scale bottoms out).
    fn enforce_max_buckets<R: Rng + ?Sized>(&mut self, rng: &mut R) {
        let limit = self.downscale_limit();
        let max = self.config.max_buckets;
        let need = |side: &Side| side.span().map_or(0, |(lo, hi)| shift_needed(lo, hi, max, limit));
        let k = need(&self.positive).max(need(self.negative()));
        self.downscale(k, rng);
    }

    /// Adds `other` into `self`.
    ///
    /// Exact when the scales match; otherwise the finer histogram is first
    /// downscaled (a copy, for `other`) to the coarser scale, and the
    /// reservoirs of both are keyed by the larger exemplar shift. `self`'s
    /// config wins: zero counts are summed as they are (the zero thresholds
    /// are assumed equal), and `max_buckets` and `max_exemplars` are enforced
    /// afterwards. Spread is combined with Chan et al.'s parallel formula.
    ///
    /// Links (see [`Links::merge`]): threshold counts add exactly where both
    /// sides count the threshold; the slowest and fastest lists are those of
    /// the union; reservoirs of both are pooled and the bands re-placed on
    /// the merged counts. A histogram without links does not gain them.
    pub fn merge<R: Rng + ?Sized>(&mut self, other: &ExpHistogram, rng: &mut R) {
        if other.count == 0 {
            return;
        }
        let target = self.scale.min(other.scale);
        self.downscale((self.scale - target) as u32, rng);
        // Reservoirs meet on the coarser of the two keyings: shifting keys
        // further right is exact, so every kept exemplar stays a uniform pick.
        let shift = self.exemplar_shift.max(other.exemplar_shift);
        self.coarsen_exemplars(shift - self.exemplar_shift, rng);
        let coarsened;
        let other = if other.scale > target || other.exemplar_shift < shift {
            let mut copy = other.clone();
            copy.downscale((other.scale - target) as u32, rng);
            copy.coarsen_exemplars(shift - other.exemplar_shift, rng);
            coarsened = copy;
            &coarsened
        } else {
            other
        };
        self.positive.merge_from(&other.positive, rng);
        if let Some(theirs) = &other.negative {
            self.negative.get_or_insert_default().merge_from(theirs, rng);
        }
        self.zero_count += other.zero_count;
        match (&mut self.zero_exemplar, &other.zero_exemplar) {
            (Some(mine), Some(theirs)) => mine.absorb(theirs, rng),
            (mine @ None, Some(theirs)) => *mine = Some(theirs.clone()),
            _ => {}
        }

        let (na, nb) = (self.count as f64, other.count as f64);
        let n = na + nb;
        let delta = other.mean - self.mean;
        self.mean += delta * (nb / n);
        self.m2 += other.m2 + delta * delta * (na / n) * nb;
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        let keys = self.keys();
        if let Some(links) = &mut self.links {
            links.merge(other.links.as_deref(), |t| other.count_above(t), keys, rng);
        }
        self.enforce_max_buckets(rng);
        self.enforce_max_exemplars(rng);
        let count = self.count;
        if let Some((links, order)) = self.links_and_order() {
            links.replace(count, &order);
        }
    }

    /// Number of recorded samples.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Plain floating-point sum of the recorded samples.
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// Smallest recorded sample.
    pub fn min(&self) -> Option<f64> {
        (self.count > 0).then_some(self.min)
    }

    /// Largest recorded sample.
    pub fn max(&self) -> Option<f64> {
        (self.count > 0).then_some(self.max)
    }

    /// Arithmetic mean (Welford running mean).
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then_some(self.mean)
    }

    /// Population standard deviation.
    pub fn stdev(&self) -> Option<f64> {
        (self.count > 0).then(|| (self.m2.max(0.0) / self.count as f64).sqrt())
    }

    /// Current scale (starts at `config.scale`, only decreases).
    pub fn scale(&self) -> i8 {
        self.scale
    }

    /// Number of samples in the zero bucket.
    pub fn zero_count(&self) -> u64 {
        self.zero_count
    }

    /// Whether nothing has been recorded.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Estimated `q`-quantile, `q` in `[0, 1]` (else, or when empty, `None`).
    ///
    /// The exact quantile is the nearest-rank sample: rank
    /// `r = max(1, ceil(q * n))` of the samples in ascending order. Buckets are
    /// walked in ascending value order to find the one holding rank `r`; the
    /// reported value is its harmonic-mean point `2lu / (l + u)` (mirrored for
    /// negative buckets, `0.0` for the zero bucket), clamped into `[min, max]`.
    /// That is within `relative_error(scale())` of the exact sample (outside
    /// the zero bucket). Ranks 1 and n report the tracked min and max, so
    /// p0 and p100 are exact. The exemplar is the one kept
    /// by that very bucket; a neighbour's is never substituted (with
    /// an exemplar shift n > 0 (see [`ExpHistogram::exemplar_shift`]): by
    /// the reservoir of the `2^n` buckets around it, so it lies in the bucket
    /// at scale `scale() - n` holding the quantile's).
    ///
    /// With a link plan, the exemplar is a kept traced sample of the
    /// quantile's bucket (`Tightness::OwnBucket`); when none was kept, the
    /// nearest kept one, and `tightness` names how far it is.
    pub fn quantile(&self, q: f64) -> Option<QuantileEstimate> {
        if self.count == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = rank_of(q, self.count);
        let (bucket, value, slot) = self.bucket_of_rank(rank)?;
        let (exemplar, tightness) = match &self.links {
            Some(links) => match links.link(pos_of(bucket), self.keys(), |v| self.bucket_of_value(v) == Some(bucket)) {
                Some((exemplar, _, 0)) => (Some(exemplar), Some(self.own_bucket(bucket))),
                Some((exemplar, key, buckets_away)) => {
                    let (lower, upper) = self.bounds_of(links::bucket_of(key));
                    let nearest = Tightness::Nearest {
                        scale: self.scale,
                        lower,
                        upper,
                        buckets_away,
                    };
                    (Some(exemplar), Some(nearest))
                }
                None => (None, None),
            },
            None => {
                let exemplar = slot.map(|s| s.exemplar);
                (exemplar, exemplar.map(|_| self.reservoir_tightness(bucket)))
            }
        };
        // The extreme ranks are the tracked min and max themselves.
        let value = if rank == 1 {
            self.min
        } else if rank == self.count {
            self.max
        } else {
            value.clamp(self.min, self.max)
        };
        Some(QuantileEstimate {
            value,
            bucket,
            exemplar,
            tightness,
        })
    }

    /// The bucket `value` falls in at the current scale (`None` for NaN).
    fn bucket_of_value(&self, value: f64) -> Option<BucketRef> {
        (!value.is_nan()).then(|| bucket_ref_of(self.scale, self.config.zero_threshold, value))
    }

    /// Value bounds of `bucket` at the current scale (lower exclusive for
    /// positive buckets, upper exclusive for negative ones).
    fn bounds_of(&self, bucket: BucketRef) -> (f64, f64) {
        match bucket {
            BucketRef::Zero => (-self.config.zero_threshold, self.config.zero_threshold),
            BucketRef::Positive(i) => bucket_bounds(self.scale, i),
            BucketRef::Negative(i) => {
                let (l, u) = bucket_bounds(self.scale, i);
                (-u, -l)
            }
        }
    }

    fn own_bucket(&self, bucket: BucketRef) -> Tightness {
        let (lower, upper) = self.bounds_of(bucket);
        Tightness::OwnBucket {
            scale: self.scale,
            lower,
            upper,
        }
    }

    /// How tight the per-bucket reservoir of `bucket` is (no link plan).
    fn reservoir_tightness(&self, bucket: BucketRef) -> Tightness {
        let shift = self.exemplar_shift;
        let coarse = |i: i32| ((i >> shift) << shift, ((i >> shift) << shift) + (1 << shift) - 1);
        match bucket {
            BucketRef::Positive(i) if shift > 0 => {
                let (first, last) = coarse(i);
                Tightness::CoarseBucket {
                    scale: self.scale - shift as i8,
                    lower: bucket_bounds(self.scale, first).0,
                    upper: bucket_bounds(self.scale, last).1,
                }
            }
            BucketRef::Negative(i) if shift > 0 => {
                let (first, last) = coarse(i);
                Tightness::CoarseBucket {
                    scale: self.scale - shift as i8,
                    lower: -bucket_bounds(self.scale, last).1,
                    upper: -bucket_bounds(self.scale, first).0,
                }
            }
            _ => self.own_bucket(bucket),
        }
    }

    /// The bucket holding the `rank`-th smallest sample, its representative
    /// value and its exemplar slot.
    fn bucket_of_rank(&self, rank: u64) -> Option<(BucketRef, f64, Option<ExemplarSlot>)> {
        let reduction = self.exemplar_shift;
        // Most negative first: highest |index| of the negative side.
        let mut seen = match self.negative().find_rank(rank, true) {
            Ok(i) => {
                let (l, u) = bucket_bounds(self.scale, i);
                let value = -mapping::representative(l, u);
                return Some((BucketRef::Negative(i), value, self.negative().slot(i, reduction)));
            }
            Err(total) => total,
        };
        seen += self.zero_count;
        if seen >= rank {
            return Some((BucketRef::Zero, 0.0, self.zero_exemplar.as_deref().copied()));
        }
        let i = self.positive.find_rank(rank - seen, false).ok()?;
        let (l, u) = bucket_bounds(self.scale, i);
        let value = mapping::representative(l, u);
        Some((BucketRef::Positive(i), value, self.positive.slot(i, reduction)))
    }

    /// Number of samples `> threshold`.
    ///
    /// Exact when `threshold` is outside `[min, max)` or a positive bucket
    /// boundary (or any boundary, for samples not equal to it). Otherwise the
    /// one bucket straddling `threshold` contributes its count times the share
    /// of its log-span (narrowed to `[min, max]`; linear for the zero bucket)
    /// above `threshold`, rounded: the error is at most that bucket's count.
    /// With a link plan that counts `threshold` (an `above` or `below` of the
    /// window), the count kept at ingest, exact for every sample recorded
    /// one by one (see [`ExpHistogram::count_above_is_exact`]).
    pub fn count_above(&self, threshold: f64) -> u64 {
        if let Some((count, _)) = self.links.as_ref().and_then(|links| links.count_above(threshold)) {
            return count;
        }
        if self.count == 0 || threshold.is_nan() || threshold >= self.max {
            return 0;
        }
        if threshold < self.min {
            return self.count;
        }
        let zt = self.config.zero_threshold;
        let (lo, hi) = (self.min, self.max);
        if threshold > zt {
            let i = bucket_index(self.scale, threshold);
            let (l, u) = bucket_bounds(self.scale, i);
            let c = self.positive.count_at(i);
            let below = portion(c, log_share_below(l.max(lo), u.min(hi), threshold));
            self.positive.total_above(i) + (c - below)
        } else if threshold >= -zt {
            let (a, b) = ((-zt).max(lo), zt.min(hi));
            let share_above = if b > a {
                ((b - threshold) / (b - a)).clamp(0.0, 1.0)
            } else if threshold < b {
                1.0
            } else {
                0.0
            };
            self.positive.total() + portion(self.zero_count, share_above)
        } else {
            // Above `threshold` on the negative side means smaller magnitude.
            let i = bucket_index(self.scale, threshold);
            let (l, u) = bucket_bounds(self.scale, i);
            let c = self.negative().count_at(i);
            let smaller = log_share_below(l.max(-hi), u.min(-lo), -threshold);
            self.positive.total() + self.zero_count + self.negative().total_below(i) + portion(c, smaller)
        }
    }

    /// Whether [`ExpHistogram::count_above`] of `threshold` is exact: a
    /// threshold the link plan counts, over samples recorded one by one; or
    /// one outside `[min, max)`.
    pub fn count_above_is_exact(&self, threshold: f64) -> bool {
        match self.links.as_ref().and_then(|links| links.count_above(threshold)) {
            Some((_, exact)) => exact,
            None => self.count == 0 || threshold >= self.max || threshold < self.min,
        }
    }

    /// Number of samples `<= threshold`: `count() - count_above(threshold)`.
    pub fn count_at_or_below(&self, threshold: f64) -> u64 {
        self.count - self.count_above(threshold)
    }

    /// Share of samples `> threshold`, `None` when empty.
    pub fn fraction_above(&self, threshold: f64) -> Option<f64> {
        (self.count > 0).then(|| self.count_above(threshold) as f64 / self.count as f64)
    }

    /// Exemplar of the highest bucket whose kept exemplar's value is
    /// `> threshold`: links a "slow" output to one concrete trace.
    pub fn exemplar_above(&self, threshold: f64) -> Option<Exemplar> {
        self.exemplars_above(threshold, 1).into_iter().next()
    }

    /// Kept exemplars whose value is `> threshold`, slowest bucket first, at
    /// most `limit`: the slowest traced samples beyond an SLO, one per bucket
    /// (a bucket keeps one exemplar, so two slow traces in one bucket yield one).
    /// With a link plan that keeps the slowest traced samples: exactly the
    /// slowest traced samples `> threshold`, slowest first, several per bucket.
    pub fn exemplars_above(&self, threshold: f64, limit: usize) -> Vec<Exemplar> {
        if let Some(links) = self.links.as_ref().filter(|links| links.plan().slowest > 0) {
            let beyond = links.slowest().iter().filter(|e| e.value > threshold);
            return beyond.take(limit).copied().collect();
        }
        let positive = self.positive.slots();
        let negative = self.negative().slots();
        positive
            .iter()
            .rev()
            .chain(self.zero_exemplar.as_deref())
            .chain(negative.iter())
            .map(|s| s.exemplar)
            .filter(|e| e.value > threshold)
            .take(limit)
            .collect()
    }

    /// With a link plan that keeps the fastest traced samples: exactly the
    /// fastest traced samples `<= threshold`, fastest first (else none).
    pub fn exemplars_at_or_below(&self, threshold: f64, limit: usize) -> Vec<Exemplar> {
        let Some(links) = &self.links else {
            return Vec::new();
        };
        let within = links.fastest().iter().filter(|e| e.value <= threshold);
        within.take(limit).copied().collect()
    }

    /// Non-empty positive buckets as `(index, count)`, ascending index.
    pub fn positive_buckets(&self) -> impl Iterator<Item = (i32, u64)> + '_ {
        self.positive.buckets()
    }

    /// Non-empty negative buckets as `(index, count)`, ascending index
    /// (ascending magnitude).
    pub fn negative_buckets(&self) -> impl Iterator<Item = (i32, u64)> + '_ {
        self.negative().buckets()
    }

    /// Kept exemplars, each with the bucket its value lies in: negative
    /// buckets by ascending index, then the zero bucket, then positive buckets
    /// by ascending index (one per reservoir, see [`ExpHistogram::exemplar_shift`]).
    pub fn exemplars(&self) -> Vec<(BucketRef, Exemplar)> {
        if let Some(links) = &self.links {
            return links
                .reservoirs(self.keys())
                .map(|(key, e)| (links::bucket_of(key), e))
                .collect();
        }
        let negative = self.negative().slots();
        let positive = self.positive.slots();
        // A reservoir's exemplar lies in its own bucket; its key names that
        // bucket itself only without reduction.
        let own = |s: &ExemplarSlot| match self.exemplar_shift {
            0 => s.index,
            _ => bucket_index(self.scale, s.exemplar.value),
        };
        let neg = negative.iter().map(|s| (BucketRef::Negative(own(s)), s.exemplar));
        let zero = self.zero_exemplar.iter().map(|s| (BucketRef::Zero, s.exemplar));
        let pos = positive.iter().map(|s| (BucketRef::Positive(own(s)), s.exemplar));
        neg.chain(zero).chain(pos).collect()
    }

    /// Capacity-based estimate of the heap memory owned.
    pub fn heap_bytes(&self) -> usize {
        self.positive.heap_bytes()
            + self
                .negative
                .as_ref()
                .map_or(0, |side| size_of::<Side>() + side.heap_bytes())
            + self.zero_exemplar.as_ref().map_or(0, |_| size_of::<ExemplarSlot>())
            + self
                .links
                .as_ref()
                .map_or(0, |links| size_of::<Links>() + links.heap_bytes())
    }

    /// The negative side, empty until a negative sample arrived.
    fn negative(&self) -> &Side {
        self.negative.as_deref().unwrap_or(&store::NO_SAMPLES)
    }

    /// Empties the histogram, restoring the configured scale and keeping the
    /// allocated capacity.
    pub fn clear(&mut self) {
        let (positive, negative) = (std::mem::take(&mut self.positive), std::mem::take(&mut self.negative));
        let mut links = self.links.take();
        if let Some(links) = &mut links {
            links.clear();
        }
        *self = Self {
            positive,
            negative,
            links,
            keeps_exemplars: self.keeps_exemplars,
            ..Self::new(self.config)
        };
        self.positive.clear();
        if let Some(negative) = &mut self.negative {
            negative.clear();
        }
    }
}
