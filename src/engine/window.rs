//! The state of one open window of one output: a counter, gauge,
//! distribution or set accumulator, created empty on the first sample.

use std::sync::Arc;

use rand::Rng;

use crate::aggregate::exemplar::Exemplar;
use crate::aggregate::histogram::{bucket_index, BucketCounts, ExpHistogram, HistogramConfig, LinkPlan};
use crate::aggregate::{CounterState, GaugeState, SetState};
use crate::model::{DropReason, Kind, NativeHistogram, TraceContext};

/// Accumulated state of one window.
#[derive(Clone, Debug)]
pub enum WindowState {
    /// Delta counter: sum and count.
    Counter(CounterState),
    /// Gauge: last, min, max, sum, count. Boxed so that the far more
    /// numerous counter windows stay small (the enum is as large as its largest variant).
    Gauge(Box<GaugeState>),
    /// Distribution: the exponential histogram with the exemplars and
    /// threshold counts its link plan asks for.
    Distribution(Box<ExpHistogram>),
    /// Set: the distinct members, exact up to a bound, then a sketch.
    Set(Box<SetState>),
}

impl WindowState {
    /// Empty state for `kind`; a distribution keeps what `links` (its slot's
    /// plan) says the window will emit, a set counts exactly up to
    /// `set_max_exact` distinct members.
    pub fn new(
        kind: Kind,
        rollup: bool,
        histogram: &HistogramConfig,
        links: Option<&Arc<LinkPlan>>,
        set_max_exact: usize,
    ) -> Self {
        match kind {
            Kind::Counter => WindowState::Counter(CounterState::default()),
            Kind::Gauge if rollup => WindowState::Gauge(Box::new(GaugeState::for_rollup())),
            Kind::Gauge => WindowState::Gauge(Box::default()),
            Kind::Distribution => WindowState::Distribution(Box::new(ExpHistogram::with_plan(*histogram, links))),
            Kind::Set => WindowState::Set(Box::new(SetState::new(set_max_exact))),
        }
    }

    /// Asks for the memory of a state kept behind a pointer (see `crate::prefetch`).
    #[inline]
    pub fn prefetch(&self) {
        match self {
            WindowState::Counter(_) => {}
            WindowState::Gauge(state) => crate::prefetch::prefetch(&**state),
            WindowState::Distribution(histogram) => crate::prefetch::prefetch(&**histogram),
            WindowState::Set(state) => crate::prefetch::prefetch(&**state),
        }
    }

    /// Once the state is in cache: asks for the bucket count and reservoir
    /// index recording `value` will touch (distributions only).
    #[inline]
    pub fn prefetch_record(&self, value: f64, traced: bool) {
        if let WindowState::Distribution(histogram) = self {
            histogram.prefetch_record(value, traced);
        }
    }

    /// Once the reservoir index is in cache: asks for the reservoir itself.
    #[inline]
    pub fn prefetch_reservoir(&self, value: f64) {
        if let WindowState::Distribution(histogram) = self {
            histogram.prefetch_reservoir(value);
        }
    }

    /// Folds one point of input series `input`, standing for `weight` samples
    /// (a gauge takes it as one value: a sampled gauge is still one reading).
    #[inline]
    pub fn record(
        &mut self,
        input: u64,
        value: f64,
        timestamp_ms: i64,
        trace: Option<TraceContext>,
        weight: u32,
        rng: &mut impl Rng,
    ) {
        match self {
            WindowState::Counter(state) => state.record_n(value, weight),
            WindowState::Gauge(state) => state.record(input, value, timestamp_ms),
            // A member is in the set or not, however sampled.
            WindowState::Set(state) => state.record(value),
            WindowState::Distribution(histogram) => {
                let exemplar = trace.map(|trace| Exemplar {
                    trace_id: trace.trace_id,
                    span_id: trace.span_id,
                    value,
                    timestamp_ms,
                });
                histogram.record_n(value, u64::from(weight), exemplar, rng);
            }
        }
    }
    /// Folds a whole native histogram (one interval's worth) into a
    /// distribution window, bucket for bucket (see
    /// [`ExpHistogram::merge_buckets`] for what is approximate), and offers
    /// its exemplars to the buckets they fall in without counting them again.
    /// Observations counted beyond the buckets (NaN ones) are not folded.
    pub fn fold_histogram(&mut self, native: &NativeHistogram, rng: &mut impl Rng) -> Result<(), DropReason> {
        let WindowState::Distribution(histogram) = self else {
            return Err(DropReason::KindConflict);
        };
        let buckets = BucketCounts {
            scale: native.scale,
            zero_threshold: native.zero_threshold,
            zero_count: native.zero_count,
            positive: &native.positive,
            negative: &native.negative,
            sum: native.sum,
        };
        histogram
            .merge_buckets(&buckets, rng)
            .map_err(|_| DropReason::InvalidValue)?;
        for &(value, timestamp_ms, trace) in &native.exemplars {
            // Only an observation this very histogram counted may become its bucket's link.
            if counts_bucket_of(native, value) {
                let exemplar = Exemplar {
                    trace_id: trace.trace_id,
                    span_id: trace.span_id,
                    value,
                    timestamp_ms,
                };
                histogram.offer_exemplar(exemplar, rng);
            }
        }
        Ok(())
    }
}

/// Whether `native`'s bucket holding `value` is non-empty: an exemplar whose
/// bucket gained nothing in a delta belongs to an earlier interval.
fn counts_bucket_of(native: &NativeHistogram, value: f64) -> bool {
    if !value.is_finite() {
        return false;
    }
    if value.abs() <= native.zero_threshold {
        return native.zero_count > 0;
    }
    let buckets = if value < 0.0 {
        &native.negative
    } else {
        &native.positive
    };
    let index = bucket_index(native.scale, value);
    buckets
        .binary_search_by_key(&index, |(index, _)| *index)
        .is_ok_and(|position| buckets[position].1 > 0)
}
