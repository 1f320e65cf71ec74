//! Exemplars kept where a window's emitted aggregations need them: reservoirs
//! on the buckets around each linked quantile, the exact k slowest and fastest
//! traced samples for `above`/`below`, and exact per-threshold counts.

mod bands;
mod extremes;
mod plan;

use std::sync::Arc;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::aggregate::exemplar::Exemplar;
use bands::Bands;
pub(super) use bands::{bucket_of, pos_of, rank_of, Keys, Order};
pub use bands::{BAND_SIGMAS, OPEN_SLOTS};
use extremes::Extremes;
pub use plan::LinkPlan;

/// How tightly an exemplar is linked to the statistic it stands for.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Tightness {
    /// The exemplar's value lies in the bucket holding the reported
    /// quantile, `(lower, upper]` at `scale` (the histogram's own scale).
    OwnBucket {
        /// Scale of the bucket.
        scale: i8,
        /// Lower bound (exclusive) of the bucket.
        lower: f64,
        /// Upper bound (inclusive).
        upper: f64,
    },
    /// No kept traced sample lies in the quantile's bucket: the exemplar is
    /// the nearest kept one, in bucket `(lower, upper]` at `scale`,
    /// `buckets_away` buckets from the quantile's.
    Nearest {
        /// Scale of the buckets.
        scale: i8,
        /// Lower bound (exclusive) of the exemplar's bucket.
        lower: f64,
        /// Upper bound (inclusive).
        upper: f64,
        /// Buckets between the exemplar's bucket and the quantile's.
        buckets_away: u32,
    },
    /// The exemplar lies in the bucket `(lower, upper]` at `scale` that
    /// holds the quantile's bucket (coarser than the histogram's own scale:
    /// a window without a link plan, whose reservoirs coarsened).
    CoarseBucket {
        /// Scale of the coarser bucket.
        scale: i8,
        /// Lower bound (exclusive).
        lower: f64,
        /// Upper bound (inclusive).
        upper: f64,
    },
    /// For `above(t)` / `below(t)`: the selections are exactly the slowest
    /// (fastest) traced samples beyond the threshold, in rank order.
    Ranked,
}

impl Tightness {
    /// The name used in selection records and stream messages.
    pub fn name(&self) -> &'static str {
        match self {
            Tightness::OwnBucket { .. } => "own_bucket",
            Tightness::Nearest { .. } => "nearest_bucket",
            Tightness::CoarseBucket { .. } => "coarse_bucket",
            Tightness::Ranked => "ranked",
        }
    }
}

/// A window's links, following its [`LinkPlan`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Links {
    plan: Arc<LinkPlan>,
    /// Per plan threshold: samples strictly above it.
    above: Box<[u64]>,
    /// False once samples came as bucket lists (a native histogram) or from
    /// a histogram that did not count a threshold: `above` then holds bucket
    /// estimates for those.
    above_exact: bool,
    /// The slowest and the fastest traced samples, boxed and only with an
    /// `above` or `below` in the plan: most windows emit neither.
    ranked: Option<Box<[Extremes; 2]>>,
    bands: Bands,
}

impl Links {
    /// Empty links following `plan`.
    pub fn new(plan: Arc<LinkPlan>) -> Self {
        Links {
            above: vec![0; plan.thresholds.len()].into(),
            ranked: (plan.slowest > 0 || plan.fastest > 0).then(Box::default),
            plan,
            above_exact: true,
            bands: Bands::default(),
        }
    }

    /// The plan followed.
    pub fn plan(&self) -> &Arc<LinkPlan> {
        &self.plan
    }

    /// Counts `w` samples of `value` in bucket `pos` (already counted in
    /// `order`, which now holds `n`) and offers its exemplar, if traced.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub(in crate::aggregate::histogram) fn record<R: Rng + ?Sized>(
        &mut self,
        value: f64,
        pos: i32,
        w: u64,
        exemplar: Option<Exemplar>,
        n: u64,
        order: &Order<'_>,
        rng: &mut R,
    ) {
        for (count, threshold) in self.above.iter_mut().zip(self.plan.thresholds.iter()) {
            if value > *threshold {
                *count += w;
            }
        }
        self.bands.count(pos, w, &self.plan.quantiles, n, order);
        if let Some(exemplar) = exemplar {
            self.offer(pos, exemplar, n, order, rng);
        }
    }

    /// Asks for the band cursors a traced sample reads (see `crate::prefetch`).
    #[inline]
    pub(in crate::aggregate::histogram) fn prefetch_bands(&self) {
        self.bands.prefetch();
    }

    /// Offers a traced sample of bucket `pos` without counting it.
    #[inline]
    pub(in crate::aggregate::histogram) fn offer<R: Rng + ?Sized>(
        &mut self,
        pos: i32,
        exemplar: Exemplar,
        n: u64,
        order: &Order<'_>,
        rng: &mut R,
    ) {
        if let Some([slowest, fastest]) = self.ranked.as_deref_mut() {
            slowest.offer(exemplar, usize::from(self.plan.slowest), true);
            fastest.offer(exemplar, usize::from(self.plan.fastest), false);
        }
        if !self.plan.quantiles.is_empty() {
            self.bands.offer(pos, exemplar, &self.plan.quantiles, n, order, rng);
        }
    }

    /// Adds bucket-estimated counts above each threshold (samples that came
    /// as bucket lists), and notes the counts are no longer all exact.
    pub fn add_estimates(&mut self, above: impl Fn(f64) -> u64) {
        for (count, threshold) in self.above.iter_mut().zip(self.plan.thresholds.iter()) {
            *count += above(*threshold);
        }
        self.above_exact = false;
    }

    /// Samples strictly above `threshold`, if the plan counts it, and
    /// whether that count is exact.
    pub fn count_above(&self, threshold: f64) -> Option<(u64, bool)> {
        let index = self.plan.threshold_index(threshold)?;
        Some((self.above[index], self.above_exact))
    }

    /// Merges `other`'s links (same scale): exact threshold counts where
    /// both count a threshold (else `estimate` of the other side, inexact),
    /// the union of both extremes, the reservoirs of both. Call
    /// [`Links::replace`] on the merged counts after.
    pub(in crate::aggregate::histogram) fn merge<R: Rng + ?Sized>(
        &mut self,
        other: Option<&Links>,
        estimate: impl Fn(f64) -> u64,
        keys: Keys,
        rng: &mut R,
    ) {
        for (count, threshold) in self.above.iter_mut().zip(self.plan.thresholds.iter()) {
            match other.and_then(|o| o.count_above(*threshold)) {
                Some((theirs, exact)) => {
                    *count += theirs;
                    self.above_exact &= exact;
                }
                None => {
                    *count += estimate(*threshold);
                    self.above_exact = false;
                }
            }
        }
        if let Some(other) = other {
            if let (Some([slowest, fastest]), Some([their_slowest, their_fastest])) =
                (self.ranked.as_deref_mut(), other.ranked.as_deref())
            {
                slowest.merge(their_slowest, usize::from(self.plan.slowest), true);
                fastest.merge(their_fastest, usize::from(self.plan.fastest), false);
            }
            self.bands.merge(&other.bands, keys, rng);
        }
    }

    /// Re-places the bands after counts changed outside `record`.
    pub(in crate::aggregate::histogram) fn replace(&mut self, n: u64, order: &Order<'_>) {
        self.bands.replace(&self.plan.quantiles, n, order);
    }

    /// Merges the reservoirs that share a bucket at the coarser scale of
    /// `keys`; call [`Links::replace`] after.
    pub(in crate::aggregate::histogram) fn downscale<R: Rng + ?Sized>(&mut self, keys: Keys, rng: &mut R) {
        self.bands.downscale(keys, rng);
    }

    /// A kept exemplar in bucket `pos` (`in_bucket` says whether a value
    /// lies in it), or else the nearest kept one and how many buckets away.
    pub(in crate::aggregate::histogram) fn link(
        &self,
        pos: i32,
        keys: Keys,
        in_bucket: impl Fn(f64) -> bool,
    ) -> Option<(Exemplar, i32, u32)> {
        if let Some(exemplar) = self.bands.get(pos, keys) {
            return Some((exemplar, pos, 0));
        }
        let extremes = self.slowest().iter().chain(self.fastest());
        if let Some(exemplar) = extremes.clone().find(|e| in_bucket(e.value)) {
            return Some((*exemplar, pos, 0));
        }
        self.bands
            .iter(keys)
            .map(|(key, exemplar)| (exemplar, key, key.abs_diff(pos)))
            .min_by_key(|(_, _, distance)| *distance)
    }

    /// The slowest traced samples, slowest first (at most `plan().slowest`).
    pub fn slowest(&self) -> &[Exemplar] {
        self.ranked.as_deref().map_or(&[], |[slowest, _]| slowest.kept())
    }

    /// The fastest traced samples, fastest first (at most `plan().fastest`).
    pub fn fastest(&self) -> &[Exemplar] {
        self.ranked.as_deref().map_or(&[], |[_, fastest]| fastest.kept())
    }

    /// For tests: each band cursor's kept counts (below and in its bucket,
    /// below its band, through its band) and the histogram's.
    #[cfg(test)]
    pub(in crate::aggregate::histogram) fn cursor_counts(&self, order: &Order<'_>) -> Vec<([u64; 4], [u64; 4])> {
        self.bands.cursor_counts(order)
    }

    /// Whether bands decide which reservoirs are kept.
    pub fn banded(&self) -> bool {
        self.bands.banded()
    }

    /// Kept reservoirs' exemplars with their bucket keys, ascending.
    pub(in crate::aggregate::histogram) fn reservoirs(&self, keys: Keys) -> impl Iterator<Item = (i32, Exemplar)> + '_ {
        self.bands.iter(keys)
    }

    /// Checks links read from another process (cluster parts): counts per
    /// threshold, extremes within their caps and in order, reservoirs in
    /// order and each in the bucket its key names (`bucket_of` a value).
    /// Bands are dropped; [`Links::replace`] places them again.
    pub(in crate::aggregate::histogram) fn check(&mut self, bucket_of: impl Fn(f64) -> i32) -> Result<(), String> {
        let plan = &self.plan;
        if plan.quantiles.iter().any(|q| !(0.0..=1.0).contains(q))
            || plan.thresholds.iter().any(|t| !t.is_finite())
            || plan.quantiles.windows(2).any(|w| w[0] >= w[1])
            || plan.thresholds.windows(2).any(|w| w[0] >= w[1])
        {
            return Err("plan with unsorted, repeated or out-of-range quantiles or thresholds".into());
        }
        if self.above.len() != plan.thresholds.len() {
            return Err(format!(
                "{} threshold counts for {} thresholds",
                self.above.len(),
                plan.thresholds.len()
            ));
        }
        for (kept, cap, slowest) in [
            (self.slowest(), plan.slowest, true),
            (self.fastest(), plan.fastest, false),
        ] {
            let ordered = kept.windows(2).all(|w| {
                if slowest {
                    w[0].value >= w[1].value
                } else {
                    w[0].value <= w[1].value
                }
            });
            if kept.len() > usize::from(cap) || !ordered || kept.iter().any(|e| !e.value.is_finite()) {
                return Err("extremes over their cap, out of order or not finite".into());
            }
        }
        self.bands.check(bucket_of)
    }

    /// Empties the links, keeping the plan and the capacity.
    pub fn clear(&mut self) {
        self.above.iter_mut().for_each(|count| *count = 0);
        self.above_exact = true;
        if let Some([slowest, fastest]) = self.ranked.as_deref_mut() {
            slowest.clear();
            fastest.clear();
        }
        self.bands.clear();
    }

    /// Heap bytes held (the plan is shared and not counted).
    pub fn heap_bytes(&self) -> usize {
        self.above.len() * size_of::<u64>()
            + self.ranked.as_deref().map_or(0, |[slowest, fastest]| {
                size_of::<[Extremes; 2]>() + slowest.heap_bytes() + fastest.heap_bytes()
            })
            + self.bands.heap_bytes()
    }
}
