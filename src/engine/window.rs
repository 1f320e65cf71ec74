//! The state of one open window of one output: a counter, gauge or
//! distribution accumulator, created empty on the first sample.

use rand::Rng;

use crate::aggregate::exemplar::Exemplar;
use crate::aggregate::histogram::{ExpHistogram, HistogramConfig};
use crate::aggregate::{CounterState, GaugeState};
use crate::model::{Kind, TraceContext};

/// Accumulated state of one window.
#[derive(Clone, Debug)]
pub enum WindowState {
    /// Delta counter: sum and count.
    Counter(CounterState),
    /// Gauge: last, min, max, sum, count.
    Gauge(GaugeState),
    /// Distribution: the exponential histogram with per-bucket exemplars.
    Distribution(Box<ExpHistogram>),
}

impl WindowState {
    /// Empty state for `kind`.
    pub fn new(kind: Kind, rollup: bool, histogram: &HistogramConfig) -> Self {
        match kind {
            Kind::Counter => WindowState::Counter(CounterState::default()),
            Kind::Gauge if rollup => WindowState::Gauge(GaugeState::for_rollup()),
            Kind::Gauge => WindowState::Gauge(GaugeState::new()),
            Kind::Distribution => WindowState::Distribution(Box::new(ExpHistogram::new(*histogram))),
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
}
