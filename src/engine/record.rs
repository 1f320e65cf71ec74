//! Aggregate records: what a flushed window emits, one per statistic, and how
//! each is named: per-window values recording-rule style (`<name>:count`,
//! `<name>:quantile{quantile=..}`), cumulative series as counters (`_total`, `_count`, `_sum`).
//! Sinks format these; they never see raw samples.

use std::sync::Arc;

use crate::aggregate::exemplar::Exemplar;
use crate::aggregate::histogram::{ExpHistogram, Tightness};
use crate::aggregate::Aggregation;
use crate::model::{Kind, Labels, StoragePolicy, METRIC_NAME_LABEL};

use super::shard::{ClosedWindow, WindowClass};
use super::window::WindowState;

/// Which number of a window a record carries. Per-window values are named
/// recording-rule style, `<name>:<operation>`; only cumulative series (a
/// running `total`, the native histogram downstream) keep the names Prometheus
/// reserves for counters (`_total`, `_count`, `_sum`), so `rate()` reads them right.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Statistic {
    /// Number of samples in the window: `<name>:count`.
    Count,
    /// Sum of the window's samples: `<name>:sum`.
    Sum,
    /// Counter increase per second over the window: `<name>:rate`.
    Rate,
    /// Running total of a counter: `<name>_total` (`<name>` when it already ends in `_total`).
    Total,
    /// Running count of a distribution's samples: `<name>_count`.
    TotalCount,
    /// Running sum of a distribution's samples: `<name>_sum`.
    TotalSum,
    /// Gauge last value: `<name>`.
    Last,
    /// `<name>:min`.
    Min,
    /// `<name>:max`.
    Max,
    /// `<name>:mean`.
    Mean,
    /// `<name>:stdev`.
    Stdev,
    /// `<name>:quantile{quantile="q"}`.
    Quantile(f64),
    /// Samples above the threshold: `<name>:above{threshold="t"}`.
    AboveCount(f64),
    /// Fraction above: `<name>:above_ratio{threshold="t"}`.
    AboveRatio(f64),
    /// Samples at or below: `<name>:below{threshold="t"}`.
    BelowCount(f64),
    /// Fraction at or below: `<name>:below_ratio{threshold="t"}`.
    BelowRatio(f64),
    /// The histogram itself, under `<name>`.
    Histogram,
}

impl Statistic {
    /// The name suffix and the extra label this statistic adds to the output series.
    pub fn naming(&self) -> (&'static str, Option<(&'static str, f64)>) {
        match *self {
            Statistic::Count => (":count", None),
            Statistic::Sum => (":sum", None),
            Statistic::Rate => (":rate", None),
            Statistic::Total => ("_total", None),
            Statistic::TotalCount => ("_count", None),
            Statistic::TotalSum => ("_sum", None),
            Statistic::Last | Statistic::Histogram => ("", None),
            Statistic::Min => (":min", None),
            Statistic::Max => (":max", None),
            Statistic::Mean => (":mean", None),
            Statistic::Stdev => (":stdev", None),
            Statistic::Quantile(q) => (":quantile", Some(("quantile", q))),
            Statistic::AboveCount(t) => (":above", Some(("threshold", t))),
            Statistic::AboveRatio(t) => (":above_ratio", Some(("threshold", t))),
            Statistic::BelowCount(t) => (":below", Some(("threshold", t))),
            Statistic::BelowRatio(t) => (":below_ratio", Some(("threshold", t))),
        }
    }

    /// Whether the output series is cumulative (a counter downstream): its
    /// first window starts from a zero sample at the window start.
    pub fn is_cumulative(&self) -> bool {
        matches!(self, Statistic::Total | Statistic::TotalCount | Statistic::TotalSum)
    }
}

/// The value of a record.
#[derive(Clone, Debug)]
pub enum RecordValue {
    /// A number.
    Scalar(f64),
    /// A whole histogram (for `histogram` aggregations).
    Histogram(Arc<ExpHistogram>),
}

/// One output series' value for one window.
#[derive(Clone, Debug)]
pub struct AggregateRecord {
    /// Owner.
    pub tenant: Arc<str>,
    /// Output labels before naming (the base `__name__`, no `quantile`).
    pub series: Arc<Labels>,
    /// Kind of the inputs.
    pub kind: Kind,
    /// Storage policy of the window.
    pub policy: StoragePolicy,
    /// Window start (inclusive).
    pub window_start_ms: i64,
    /// Window end (exclusive); the record's timestamp.
    pub window_end_ms: i64,
    /// The configured aggregation this record answers.
    pub aggregation: Aggregation,
    /// Which number of it.
    pub statistic: Statistic,
    /// The number (or histogram).
    pub value: RecordValue,
    /// For quantiles, a traced sample of the bucket holding the quantile
    /// (see `tightness`); for `above` (`below`) counts, the slowest (fastest)
    /// traced sample beyond the threshold.
    pub exemplar: Option<Exemplar>,
    /// How tightly `exemplar` is linked to the value (present with it).
    pub tightness: Option<Tightness>,
    /// For `above` counts: the slowest traced samples beyond the threshold,
    /// slowest first; for `below` counts: the fastest at or below it,
    /// fastest first. Exactly those, at most `selections.above_max_traces`
    /// (the first is `exemplar`). Empty for every other statistic.
    pub ranked: Vec<Exemplar>,
    /// Flushed before the window ended (at shutdown).
    pub partial: bool,
    /// The first window of a cumulative series (a running `total`): nothing
    /// of the series was sent before, so the sink starts it with a zero at
    /// the window start and `increase()` sees this window too.
    pub starts_series: bool,
}

impl AggregateRecord {
    /// The output metric name, e.g. `http_request_duration_seconds_count`.
    pub fn output_name(&self) -> String {
        let base = self.series.metric_name().unwrap_or_default();
        if self.statistic == Statistic::Total && base.ends_with("_total") {
            return base.to_string();
        }
        format!("{base}{}", self.statistic.naming().0)
    }

    /// The full output labels: `__name__` set to [`Self::output_name`], plus
    /// `quantile` or `threshold` where the statistic has one.
    pub fn output_labels(&self) -> Labels {
        let named = self.series.with(METRIC_NAME_LABEL, &self.output_name());
        match self.statistic.naming().1 {
            Some((label, value)) => named.with(label, &value.to_string()),
            None => named,
        }
    }
}

/// Reads the output (and its labels' reference count) of each of `windows`
/// without using it, so that the misses on them overlap; building records then
/// finds them in cache.
#[inline]
pub fn warm(windows: &[ClosedWindow]) {
    for window in windows {
        std::hint::black_box(Arc::strong_count(&window.target.labels));
    }
}

/// Turns a closed window of class `slot` (its policy slot, as the shard keeps
/// it) into its records, appending to `out`; an `above` (`below`) count carries up to
/// `above_max_traces` of the slowest (fastest) traces beyond it.
pub fn window_records(
    window: ClosedWindow,
    slot: &WindowClass,
    above_max_traces: usize,
    out: &mut Vec<AggregateRecord>,
) {
    let window_end_ms = slot.end_ms(window.start_ms);
    let target = &*window.target;
    let starts_series = window.running_total.is_some_and(|totals| totals.first);
    let mut emit = |aggregation: Aggregation, statistic, value, link: Option<(Exemplar, Tightness)>, ranked| {
        out.push(AggregateRecord {
            tenant: Arc::clone(&target.tenant),
            series: Arc::clone(&target.labels),
            kind: target.kind,
            policy: slot.policy,
            window_start_ms: window.start_ms,
            window_end_ms,
            aggregation,
            statistic,
            value,
            exemplar: link.map(|(exemplar, _)| exemplar),
            tightness: link.map(|(_, tightness)| tightness),
            ranked,
            partial: window.partial,
            starts_series: starts_series && statistic.is_cumulative(),
        })
    };
    let scalar = RecordValue::Scalar;
    match window.state {
        WindowState::Counter(state) => {
            for &aggregation in slot.aggregations.iter() {
                let (statistic, value) = match aggregation {
                    Aggregation::Count => (Statistic::Count, state.count as f64),
                    Aggregation::Sum => (Statistic::Sum, state.sum),
                    Aggregation::Rate => (Statistic::Rate, state.rate(slot.policy.resolution_ms)),
                    Aggregation::Total => match window.running_total {
                        Some(totals) => (Statistic::Total, totals.sum),
                        None => continue,
                    },
                    _ => continue,
                };
                emit(aggregation, statistic, scalar(value), None, Vec::new());
            }
        }
        WindowState::Gauge(state) => {
            for &aggregation in slot.aggregations.iter() {
                let (statistic, value) = match aggregation {
                    Aggregation::Count => (Statistic::Count, state.count() as f64),
                    Aggregation::Sum => (Statistic::Sum, state.sum()),
                    Aggregation::Last => (Statistic::Last, state.last()),
                    Aggregation::Min => (Statistic::Min, state.min()),
                    Aggregation::Max => (Statistic::Max, state.max()),
                    Aggregation::Mean => (Statistic::Mean, state.mean()),
                    _ => continue,
                };
                emit(aggregation, statistic, scalar(value), None, Vec::new());
            }
        }
        WindowState::Set(state) => {
            if slot.aggregations.contains(&Aggregation::Count) {
                emit(
                    Aggregation::Count,
                    Statistic::Count,
                    scalar(state.distinct()),
                    None,
                    Vec::new(),
                );
            }
        }
        WindowState::Distribution(histogram) => {
            let mut wants_histogram = false;
            for &aggregation in slot.aggregations.iter() {
                let h = &histogram;
                match aggregation {
                    Aggregation::Count => emit(
                        aggregation,
                        Statistic::Count,
                        scalar(h.count() as f64),
                        None,
                        Vec::new(),
                    ),
                    Aggregation::Sum => emit(aggregation, Statistic::Sum, scalar(h.sum()), None, Vec::new()),
                    Aggregation::Min | Aggregation::Max | Aggregation::Mean | Aggregation::Stdev => {
                        let (statistic, value) = match aggregation {
                            Aggregation::Min => (Statistic::Min, h.min()),
                            Aggregation::Max => (Statistic::Max, h.max()),
                            Aggregation::Mean => (Statistic::Mean, h.mean()),
                            _ => (Statistic::Stdev, h.stdev()),
                        };
                        if let Some(value) = value {
                            emit(aggregation, statistic, scalar(value), None, Vec::new());
                        }
                    }
                    Aggregation::Quantile(q) => {
                        if let Some(estimate) = h.quantile(q) {
                            emit(
                                aggregation,
                                Statistic::Quantile(q),
                                scalar(estimate.value),
                                estimate.exemplar.zip(estimate.tightness),
                                Vec::new(),
                            );
                        }
                    }
                    Aggregation::Above(t) | Aggregation::Below(t) => {
                        let total = h.count() as f64;
                        let above = h.count_above(t) as f64;
                        let limit = above_max_traces.max(1);
                        let (count_stat, ratio_stat, count, ranked) = if let Aggregation::Above(_) = aggregation {
                            (
                                Statistic::AboveCount(t),
                                Statistic::AboveRatio(t),
                                above,
                                h.exemplars_above(t, limit),
                            )
                        } else {
                            (
                                Statistic::BelowCount(t),
                                Statistic::BelowRatio(t),
                                total - above,
                                h.exemplars_at_or_below(t, limit),
                            )
                        };
                        // A ranked list is exact by construction (with a link plan).
                        let link = ranked.first().map(|first| (*first, Tightness::Ranked));
                        emit(aggregation, count_stat, scalar(count), link, ranked);
                        // A native histogram's baseline leaves a window empty: 0/0 is no ratio.
                        if total > 0.0 {
                            emit(aggregation, ratio_stat, scalar(count / total), None, Vec::new());
                        }
                    }
                    Aggregation::Histogram => wants_histogram = true,
                    Aggregation::Total => {
                        if let Some(totals) = window.running_total {
                            for (statistic, value) in
                                [(Statistic::TotalCount, totals.count), (Statistic::TotalSum, totals.sum)]
                            {
                                emit(aggregation, statistic, scalar(value), None, Vec::new());
                            }
                        }
                    }
                    Aggregation::Rate | Aggregation::Last => {}
                }
            }
            if wants_histogram {
                emit(
                    Aggregation::Histogram,
                    Statistic::Histogram,
                    RecordValue::Histogram(Arc::from(histogram)),
                    None,
                    Vec::new(),
                );
            }
        }
    }
}
