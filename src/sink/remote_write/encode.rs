//! Aggregate records as remote-write time series: float samples at the window
//! end, quantile exemplars as `trace_id`/`span_id` exemplar labels, and
//! distributions as cumulative native histograms (running per output series,
//! because Prometheus reads histograms over time only through `increase()`).

use std::collections::HashMap;

use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::aggregate::exemplar::Exemplar;
use crate::aggregate::histogram::ExpHistogram;
use crate::api::prometheus as prompb;
use crate::engine::{AggregateRecord, RecordValue, Statistic};
use crate::model::{series_hash, Labels};

/// Prometheus accepts native histogram schemas -4..=8.
const PROMETHEUS_MIN_SCALE: i8 = -4;

/// Why a record could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unencodable {
    /// The histogram had to downscale below Prometheus' lowest schema (-4).
    Schema,
}

/// The running cumulative histogram of one output series.
struct Running {
    histogram: ExpHistogram,
    last_end_ms: i64,
    emitted: bool,
}

/// Encodes records for one sink; keeps the running native histograms.
pub struct Encoder {
    policy_label: Option<String>,
    native_histograms: bool,
    running: HashMap<u64, Running>,
    rng: SmallRng,
}

impl Encoder {
    /// An encoder adding `policy_label` (if set) and sending histograms natively when asked.
    pub fn new(policy_label: Option<String>, native_histograms: bool) -> Self {
        Encoder {
            policy_label,
            native_histograms,
            running: HashMap::new(),
            rng: SmallRng::seed_from_u64(17),
        }
    }

    /// The output labels of `record` as the sink writes them.
    pub fn labels_of(&self, record: &AggregateRecord) -> Labels {
        let labels = record.output_labels();
        match &self.policy_label {
            Some(name) => labels.with(name, &record.policy.to_string()),
            None => labels,
        }
    }

    /// One time series for `record`; `None` when this sink does not send it
    /// (histograms with native histograms off).
    pub fn encode(&mut self, record: &AggregateRecord) -> Option<Result<prompb::TimeSeries, Unencodable>> {
        let labels = self.labels_of(record);
        let wire_labels = labels
            .iter()
            .map(|label| prompb::Label {
                name: label.name.to_string(),
                value: label.value.to_string(),
            })
            .collect();
        match &record.value {
            RecordValue::Scalar(value) => Some(Ok(prompb::TimeSeries {
                labels: wire_labels,
                samples: series_start(record)
                    .map(|timestamp| prompb::Sample { value: 0.0, timestamp })
                    .into_iter()
                    .chain([prompb::Sample {
                        value: *value,
                        timestamp: record.window_end_ms,
                    }])
                    .collect(),
                exemplars: record.exemplar.iter().map(exemplar).collect(),
                histograms: Vec::new(),
            })),
            RecordValue::Histogram(window) if self.native_histograms && record.statistic == Statistic::Histogram => {
                let key = series_hash(&record.tenant, &labels);
                let running = self.running.entry(key).or_insert_with(|| Running {
                    histogram: ExpHistogram::new(*window.config()),
                    last_end_ms: record.window_end_ms,
                    emitted: false,
                });
                running.histogram.merge(window, &mut self.rng);
                running.last_end_ms = record.window_end_ms;
                if running.histogram.scale() < PROMETHEUS_MIN_SCALE {
                    return Some(Err(Unencodable::Schema));
                }
                // A series new since this process started begins with an empty
                // histogram just after its first window's start, marked as a reset
                // (Prometheus may hold larger counts from before a restart), so
                // `increase()` over a range holding that window counts all of it.
                let mut histograms = Vec::with_capacity(2);
                if !running.emitted {
                    let mut empty = native_histogram(
                        &ExpHistogram::new(*window.config()),
                        prompb::histogram::ResetHint::Yes,
                        zero_sample_ms(record),
                    );
                    // No buckets, so any schema fits: the running one's keeps the series on one schema.
                    empty.schema = i32::from(running.histogram.scale());
                    histograms.push(empty);
                }
                running.emitted = true;
                histograms.push(native_histogram(
                    &running.histogram,
                    prompb::histogram::ResetHint::No,
                    record.window_end_ms,
                ));
                Some(Ok(prompb::TimeSeries {
                    labels: wire_labels,
                    samples: Vec::new(),
                    exemplars: Vec::new(),
                    histograms,
                }))
            }
            RecordValue::Histogram(_) => None,
        }
    }

    /// Forgets running histograms not updated for `idle_ms`; a series that
    /// comes back starts from zero with a reset hint.
    pub fn evict_idle(&mut self, now_ms: i64, idle_ms: i64) {
        self.running.retain(|_, running| now_ms - running.last_end_ms < idle_ms);
    }
}

/// When `record` starts a cumulative series, the timestamp of the zero sample
/// that goes before it.
fn series_start(record: &AggregateRecord) -> Option<i64> {
    record.starts_series.then(|| zero_sample_ms(record))
}

/// Where a new cumulative series starts from zero: 1 ms after its first
/// window's start. Not at the start itself: after a restart, the previous
/// run may have written this series' last value exactly there (the end of the
/// window before), and Prometheus refuses a second, different value at one
/// timestamp, with the whole request.
fn zero_sample_ms(record: &AggregateRecord) -> i64 {
    (record.window_start_ms + 1).min(record.window_end_ms - 1)
}

fn exemplar(exemplar: &Exemplar) -> prompb::Exemplar {
    let mut labels = vec![prompb::Label {
        name: "trace_id".into(),
        value: hex::encode(exemplar.trace_id),
    }];
    if exemplar.span_id != [0; 8] {
        labels.push(prompb::Label {
            name: "span_id".into(),
            value: hex::encode(exemplar.span_id),
        });
    }
    prompb::Exemplar {
        labels,
        value: exemplar.value,
        timestamp: exemplar.timestamp_ms,
    }
}

/// Spans and deltas of `(index, count)` buckets, Prometheus numbering: our
/// bucket `i` covers `(base^i, base^(i+1)]`, Prometheus' `i + 1`.
fn spans_and_deltas(buckets: impl Iterator<Item = (i32, u64)>) -> (Vec<prompb::BucketSpan>, Vec<i64>) {
    let mut spans: Vec<prompb::BucketSpan> = Vec::new();
    let mut deltas = Vec::new();
    let mut previous_count = 0i64;
    let mut next_index: Option<i32> = None;
    for (index, count) in buckets {
        let index = index + 1;
        match (next_index, spans.last_mut()) {
            (Some(expected), Some(span)) if expected == index => span.length += 1,
            (Some(expected), _) => spans.push(prompb::BucketSpan {
                offset: index - expected,
                length: 1,
            }),
            (None, _) => spans.push(prompb::BucketSpan {
                offset: index,
                length: 1,
            }),
        }
        deltas.push(count as i64 - previous_count);
        previous_count = count as i64;
        next_index = Some(index + 1);
    }
    (spans, deltas)
}

/// `histogram` as a Prometheus native histogram with integer counts.
pub fn native_histogram(
    histogram: &ExpHistogram,
    reset: prompb::histogram::ResetHint,
    timestamp_ms: i64,
) -> prompb::Histogram {
    let (positive_spans, positive_deltas) = spans_and_deltas(histogram.positive_buckets());
    let (negative_spans, negative_deltas) = spans_and_deltas(histogram.negative_buckets());
    prompb::Histogram {
        count: Some(prompb::histogram::Count::CountInt(histogram.count())),
        sum: histogram.sum(),
        schema: i32::from(histogram.scale()),
        zero_threshold: histogram.config().zero_threshold,
        zero_count: Some(prompb::histogram::ZeroCount::ZeroCountInt(histogram.zero_count())),
        negative_spans,
        negative_deltas,
        negative_counts: Vec::new(),
        positive_spans,
        positive_deltas,
        positive_counts: Vec::new(),
        reset_hint: reset as i32,
        timestamp: timestamp_ms,
    }
}

/// Shares one shard of a sink's series: records whose output series hashes to `index` of `count`.
pub fn belongs_to_shard(record: &AggregateRecord, index: usize, count: usize) -> bool {
    count <= 1 || (series_hash(&record.tenant, &record.series) % count as u64) as usize == index
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn spans_follow_prometheus_numbering_and_gaps() {
        let (spans, deltas) = spans_and_deltas([(-3, 2), (-2, 5), (1, 1), (2, 1), (10, 4)].into_iter());
        let spans: Vec<(i32, u32)> = spans.iter().map(|s| (s.offset, s.length)).collect();
        // Prometheus indices -2,-1 | 2,3 | 11: the first offset is absolute, then gaps (0,1 and 4..=10 skipped).
        assert_eq!(spans, [(-2, 2), (2, 2), (7, 1)]);
        assert_eq!(deltas, [2, 3, -4, 0, 3]);
    }

    #[test]
    fn running_histograms_accumulate_windows_and_mark_the_first() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut first = ExpHistogram::default();
        let mut second = ExpHistogram::default();
        for value in [0.1, 0.2, 0.2] {
            first.record(value, None, &mut rng);
        }
        second.record(0.4, None, &mut rng);
        let mut encoder = Encoder::new(None, true);
        let record = |histogram: ExpHistogram, end| AggregateRecord {
            tenant: Arc::from("t"),
            series: Arc::new(Labels::from_pairs([("__name__", "lat")])),
            kind: crate::model::Kind::Distribution,
            policy: "1m:1h".parse().unwrap(),
            window_start_ms: end - 60_000,
            window_end_ms: end,
            aggregation: crate::aggregate::Aggregation::Histogram,
            statistic: Statistic::Histogram,
            value: RecordValue::Histogram(Arc::new(histogram)),
            exemplar: None,
            tightness: None,
            ranked: Vec::new(),
            partial: false,
            starts_series: false,
        };
        let one = encoder.encode(&record(first, 60_000)).unwrap().unwrap();
        let two = encoder.encode(&record(second, 120_000)).unwrap().unwrap();
        let count = |series: &prompb::TimeSeries, index: usize| match series.histograms[index].count {
            Some(prompb::histogram::Count::CountInt(n)) => n,
            _ => u64::MAX,
        };
        // The first window comes after an empty reset histogram just past its start.
        assert_eq!(one.histograms.len(), 2);
        assert_eq!((count(&one, 0), count(&one, 1), count(&two, 0)), (0, 3, 4));
        assert_eq!(one.histograms[0].reset_hint, prompb::histogram::ResetHint::Yes as i32);
        assert_eq!(one.histograms[0].timestamp, 1);
        assert_eq!(one.histograms[0].schema, one.histograms[1].schema);
        assert_eq!(one.histograms[1].reset_hint, prompb::histogram::ResetHint::No as i32);
        assert_eq!(two.histograms.len(), 1);
        assert_eq!(two.histograms[0].reset_hint, prompb::histogram::ResetHint::No as i32);
        assert_eq!(two.histograms[0].timestamp, 120_000);
        assert!(Encoder::new(None, false)
            .encode(&record(ExpHistogram::default(), 1))
            .is_none());
    }

    #[test]
    fn a_new_cumulative_series_starts_from_zero_after_its_window_start() {
        let mut encoder = Encoder::new(None, true);
        let record = |statistic, value, starts_series| AggregateRecord {
            tenant: Arc::from("t"),
            series: Arc::new(Labels::from_pairs([("__name__", "requests")])),
            kind: crate::model::Kind::Counter,
            policy: "10s:1h".parse().unwrap(),
            window_start_ms: 10_000,
            window_end_ms: 20_000,
            aggregation: crate::aggregate::Aggregation::Total,
            statistic,
            value: RecordValue::Scalar(value),
            exemplar: None,
            tightness: None,
            ranked: Vec::new(),
            partial: false,
            starts_series,
        };
        let samples = |series: prompb::TimeSeries| {
            series
                .samples
                .iter()
                .map(|sample| (sample.timestamp, sample.value))
                .collect::<Vec<_>>()
        };
        let first = encoder.encode(&record(Statistic::Total, 7.0, true)).unwrap().unwrap();
        assert_eq!(samples(first), [(10_001, 0.0), (20_000, 7.0)]);
        let later = encoder.encode(&record(Statistic::Total, 9.0, false)).unwrap().unwrap();
        assert_eq!(samples(later), [(20_000, 9.0)]);
    }
}
