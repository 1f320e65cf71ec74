//! What ingest hands the engine: series batches of points, each point with an
//! optional trace context. Plain data; nothing here knows the wire protocol.

use std::sync::Arc;

use super::Labels;

/// How a series' points are folded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    /// A counter delta: the increase since the last report.
    Counter,
    /// A gauge: the current value.
    Gauge,
    /// One observation of a distribution (a latency, a size).
    Distribution,
    /// A member of a set (statsd `|s`): the value is a 52-bit hash of the
    /// member as sent, an integral f64; a window counts distinct members.
    Set,
}

impl Kind {
    /// The lowercase name used in configs and outputs.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Distribution => "distribution",
            Kind::Set => "set",
        }
    }
}

/// W3C trace context of a traced sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// 16-byte trace ID, never all zero.
    pub trace_id: [u8; 16],
    /// 8-byte span ID; all zero when the sender had none.
    pub span_id: [u8; 8],
}

/// One raw sample of a series.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// The value; finite (ingest refuses NaN and infinities).
    pub value: f64,
    /// Event time in ms since the epoch; `None` means arrival time.
    pub timestamp_ms: Option<i64>,
    /// The trace this sample belongs to, if any.
    pub trace: Option<TraceContext>,
    /// How many samples this point stands for (1 unless the sender sampled,
    /// e.g. statsd `@0.1` makes a point stand for 10): counts and histogram
    /// buckets grow by it, a counter delta is multiplied by it.
    pub weight: u32,
}

impl Point {
    /// A point standing for one sample.
    pub fn new(value: f64, timestamp_ms: Option<i64>, trace: Option<TraceContext>) -> Self {
        Point {
            value,
            timestamp_ms,
            trace,
            weight: 1,
        }
    }
}

/// Points of one series, validated by ingest.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesBatch {
    /// Sorted, validated labels (with `__name__`).
    pub labels: Labels,
    /// How to fold the points.
    pub kind: Kind,
    /// For counters: the points are running totals (a Prometheus counter),
    /// turned into deltas per series, with reset detection, before any rule.
    pub cumulative: bool,
    /// The points, in any time order.
    pub points: Vec<Point>,
    /// Whole histograms (Prometheus native histograms) of a distribution
    /// series; cumulative when `cumulative` is set, else each is one interval's.
    pub histograms: Vec<NativeHistogram>,
}

impl SeriesBatch {
    /// A batch of scalar points.
    pub fn new(labels: Labels, kind: Kind, points: Vec<Point>) -> Self {
        SeriesBatch {
            labels,
            kind,
            cumulative: false,
            points,
            histograms: Vec::new(),
        }
    }
}

/// A histogram in the exponential layout of Prometheus native histograms and
/// OTLP exponential histograms, as a sender reports it. Plain data.
#[derive(Clone, Debug, PartialEq)]
pub struct NativeHistogram {
    /// Event time in ms; `None` means arrival time.
    pub timestamp_ms: Option<i64>,
    /// Scale (Prometheus "schema"): bucket `i` covers `(base^i, base^(i+1)]`, `base = 2^(2^-scale)`.
    pub scale: i8,
    /// Values with `|v| <= zero_threshold` are in the zero bucket.
    pub zero_threshold: f64,
    /// Samples in the zero bucket.
    pub zero_count: u64,
    /// Samples in all buckets.
    pub count: u64,
    /// Sum of samples.
    pub sum: f64,
    /// `(index, count)` of positive buckets with a non-zero count, ascending.
    pub positive: Vec<(i32, u64)>,
    /// `(index, count)` of negative buckets (by absolute value), ascending.
    pub negative: Vec<(i32, u64)>,
    /// Traced samples the sender attached: value, timestamp, trace.
    pub exemplars: Vec<(f64, i64, TraceContext)>,
}

/// A tenant's batch, as one ingest request delivers it.
#[derive(Clone, Debug, PartialEq)]
pub struct IngestBatch {
    /// Whose samples these are.
    pub tenant: Arc<str>,
    /// The series.
    pub series: Vec<SeriesBatch>,
}
