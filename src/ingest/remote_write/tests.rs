//! Unit tests of remote write decoding: bucket spans and deltas, histogram
//! refusals, kind classification, stale markers, exemplars, label rules and
//! the bounded decompression.

use std::sync::Arc;

use prost::Message;

use super::decode::*;
use super::histogram::*;
use crate::api::prometheus as wire;
use crate::config::IngestLimits;
use crate::model::{DropReason, Kind, TraceContext};

use wire::histogram::{Count, ResetHint, ZeroCount};
use wire::metric_metadata::MetricType;

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const SPAN: &str = "b7ad6b7169203331";

fn pair<'a>(name: &'a str, value: &'a str) -> LabelRef<'a> {
    (name, value)
}

fn label(name: &str, value: &str) -> wire::Label {
    wire::Label {
        name: name.into(),
        value: value.into(),
    }
}

fn span(offset: i32, length: u32) -> wire::BucketSpan {
    wire::BucketSpan { offset, length }
}

fn sample(value: f64, timestamp: i64) -> wire::Sample {
    wire::Sample { value, timestamp }
}

fn traced(timestamp: i64) -> wire::Exemplar {
    wire::Exemplar {
        labels: vec![label("span_id", SPAN), label("trace_id", TRACE)],
        value: 0.5,
        timestamp,
    }
}

fn histogram(timestamp: i64) -> wire::Histogram {
    wire::Histogram {
        count: Some(Count::CountInt(6)),
        sum: 10.0,
        schema: 0,
        zero_threshold: 1e-128,
        zero_count: Some(ZeroCount::ZeroCountInt(1)),
        positive_spans: vec![span(0, 2)],
        positive_deltas: vec![2, 1],
        negative_spans: vec![span(1, 1)],
        negative_deltas: vec![0],
        timestamp,
        ..wire::Histogram::default()
    }
}

fn series(labels: &[(&str, &str)], samples: Vec<wire::Sample>) -> wire::TimeSeries {
    wire::TimeSeries {
        labels: labels.iter().map(|(name, value)| label(name, value)).collect(),
        samples,
        ..wire::TimeSeries::default()
    }
}

fn decode(timeseries: Vec<wire::TimeSeries>, metadata: Vec<wire::MetricMetadata>) -> Decoded {
    let request = wire::WriteRequest { timeseries, metadata };
    decode_body(&request.encode_to_vec(), Arc::from("t"), &IngestLimits::default()).expect("decodes")
}

#[test]
fn spans_and_deltas_expand_to_absolute_model_buckets() {
    // Prometheus buckets 1, 2 (counts 2, 3), a gap of 3, then 6, 7, 8 (counts 3, 0, 4).
    let buckets = expand_buckets("positive", &[span(1, 2), span(3, 3)], &[2, 1, 0, -3, 4]).unwrap();
    assert_eq!(buckets, vec![(0, 2), (1, 3), (5, 3), (7, 4)]);
    // A negative first offset, and a zero-length span in the middle.
    let buckets = expand_buckets("negative", &[span(-3, 1), span(0, 0), span(1, 1)], &[5, -2]).unwrap();
    assert_eq!(buckets, vec![(-4, 5), (-2, 3)]);
    assert_eq!(expand_buckets("positive", &[], &[]).unwrap(), vec![]);
}

#[test]
fn broken_spans_are_refused_with_their_side() {
    assert_eq!(
        expand_buckets("positive", &[span(0, 4_000_000_000)], &[1]),
        Err(HistogramError::SpanMismatch {
            side: "positive",
            buckets: 4_000_000_000,
            deltas: 1
        })
    );
    let error = expand_buckets("negative", &[span(2, 2)], &[1, -2]).unwrap_err();
    assert_eq!(error.to_string(), "negative bucket 3 has a negative count");
    let error = expand_buckets("positive", &[span(i32::MIN, 1)], &[1]).unwrap_err();
    assert!(error.to_string().contains("out of range"), "{error}");
}

#[test]
fn integer_histograms_become_native_histograms() {
    let native = decode_histogram(&histogram(5_000)).unwrap();
    assert_eq!(native.timestamp_ms, Some(5_000));
    assert_eq!(
        (native.scale, native.count, native.zero_count, native.sum),
        (0, 6, 1, 10.0)
    );
    assert_eq!(native.positive, vec![(-1, 2), (0, 3)]);
    assert_eq!(native.negative, vec![]);
    let with_negative = wire::Histogram {
        negative_deltas: vec![0],
        negative_spans: vec![span(1, 0)],
        ..histogram(0)
    };
    assert_eq!(
        decode_histogram(&with_negative).unwrap_err().to_string(),
        "negative spans cover 0 buckets but 1 deltas were sent"
    );
}

#[test]
fn float_and_out_of_range_histograms_are_refused() {
    let cases = [
        (
            wire::Histogram {
                count: Some(Count::CountFloat(6.0)),
                ..histogram(0)
            },
            "float histograms are not supported",
        ),
        (
            wire::Histogram {
                positive_counts: vec![1.0],
                positive_deltas: vec![],
                ..histogram(0)
            },
            "float histograms are not supported",
        ),
        (
            wire::Histogram {
                schema: 9,
                ..histogram(0)
            },
            "schema 9 is outside -4..=8",
        ),
        (
            wire::Histogram {
                schema: -53,
                ..histogram(0)
            },
            "schema -53 is outside",
        ),
        (
            wire::Histogram {
                zero_threshold: f64::NAN,
                ..histogram(0)
            },
            "zero threshold NaN",
        ),
        (
            wire::Histogram {
                count: Some(Count::CountInt(5)),
                ..histogram(0)
            },
            "count 5 is less than the 6 observations",
        ),
    ];
    for (wire, needle) in cases {
        let error = decode_histogram(&wire).unwrap_err().to_string();
        assert!(error.contains(needle), "{error:?} lacks {needle:?}");
    }
    // In a request: refused alone and counted, the rest of the series kept.
    let mut timeseries = series(&[("__name__", "latency_seconds")], vec![]);
    timeseries.histograms = vec![
        histogram(1_000),
        wire::Histogram {
            count: Some(Count::CountFloat(6.0)),
            ..histogram(2_000)
        },
    ];
    let decoded = decode(vec![timeseries], vec![]);
    assert_eq!(decoded.batch.series[0].histograms.len(), 1);
    assert_eq!(decoded.outcome.rejected_for(DropReason::InvalidValue), 1);
    assert_eq!(decoded.error_count, 1);
    assert!(!decoded.nothing_valid());
    assert_eq!(
        decoded.error_text(),
        "series 0 (latency_seconds): histogram at 2000: float histograms are not supported, \
         only integer counts (count_int and bucket deltas)"
    );
}

#[test]
fn classifies_running_totals_by_metadata_then_name() {
    let metadata: Metadata = [
        ("http_requests", MetricType::Counter),
        ("latency", MetricType::Histogram),
        ("rpc", MetricType::Summary),
        ("queue_bytes_sum", MetricType::Gauge),
        ("sizes", MetricType::Gaugehistogram),
    ]
    .into_iter()
    .collect();
    for (name, expected) in [
        ("http_requests_total", true),
        ("http_requests", true),
        ("latency_bucket", true),
        ("latency_count", true),
        ("latency_sum", true),
        ("rpc", false),
        ("rpc_count", true),
        ("queue_bytes_sum", false),
        ("sizes_bucket", false),
        ("errors_total", true),
        ("other_bucket", true),
        ("memory_bytes", false),
        ("", false),
    ] {
        assert_eq!(is_running_total(name, &metadata), expected, "{name}");
    }

    let decoded = decode(
        vec![
            series(&[("__name__", "jobs")], vec![sample(1.0, 1)]),
            series(&[("__name__", "temperature")], vec![sample(1.0, 1)]),
            series(&[("__name__", "load_total")], vec![sample(1.0, 1)]),
        ],
        vec![
            wire::MetricMetadata {
                r#type: MetricType::Counter as i32,
                metric_family_name: "jobs".into(),
                ..wire::MetricMetadata::default()
            },
            wire::MetricMetadata {
                r#type: MetricType::Gauge as i32,
                metric_family_name: "load_total".into(),
                ..wire::MetricMetadata::default()
            },
        ],
    );
    let kinds: Vec<_> = decoded.batch.series.iter().map(|s| (s.kind, s.cumulative)).collect();
    assert_eq!(
        kinds,
        vec![(Kind::Counter, true), (Kind::Gauge, false), (Kind::Gauge, false)]
    );
}

#[test]
fn stale_markers_are_skipped_and_other_non_finite_values_counted() {
    let stale = f64::from_bits(STALE_NAN_BITS);
    assert!(stale.is_nan());
    let decoded = decode(
        vec![series(
            &[("__name__", "up")],
            vec![
                sample(1.0, 1),
                sample(stale, 2),
                sample(f64::NAN, 3),
                sample(f64::NEG_INFINITY, 4),
                sample(0.0, 5),
            ],
        )],
        vec![],
    );
    let values: Vec<_> = decoded.batch.series[0].points.iter().map(|p| p.value).collect();
    assert_eq!(values, vec![1.0, 0.0]);
    assert_eq!(decoded.stale_markers, 1);
    assert_eq!(decoded.outcome.rejected_for(DropReason::InvalidValue), 2);
    assert_eq!(decoded.error_count, 0, "non-finite values are counted, not a 400");

    // A stale native histogram (sum is the stale NaN, counts may be float) is skipped too.
    let mut timeseries = series(&[("__name__", "latency_seconds")], vec![]);
    timeseries.histograms = vec![wire::Histogram {
        sum: stale,
        count: Some(Count::CountFloat(0.0)),
        ..wire::Histogram::default()
    }];
    let decoded = decode(vec![timeseries], vec![]);
    assert_eq!((decoded.stale_markers, decoded.error_count), (1, 0));
    assert!(decoded.batch.series.is_empty());
}

#[test]
fn exemplar_labels_become_trace_contexts() {
    let (upper_hex, zeros, letters) = (TRACE.to_uppercase(), "0".repeat(32), "g".repeat(32));
    let trace = exemplar_trace(&[pair("trace_id", TRACE), pair("span_id", SPAN)]).unwrap();
    assert_eq!(hex::encode(trace.trace_id), TRACE);
    assert_eq!(hex::encode(trace.span_id), SPAN);
    let upper = exemplar_trace(&[pair("trace_id", &upper_hex)]).unwrap();
    assert_eq!((upper.trace_id, upper.span_id), (trace.trace_id, [0; 8]));
    for labels in [
        vec![],
        vec![pair("span_id", SPAN)],
        vec![pair("trace_id", &TRACE[..30])],
        vec![pair("trace_id", &zeros)],
        vec![pair("trace_id", &letters)],
        vec![pair("trace_id", TRACE), pair("span_id", "abc")],
        vec![pair("traceID", TRACE)],
    ] {
        assert_eq!(exemplar_trace(&labels), None, "{labels:?}");
    }
}

#[test]
fn exemplars_link_the_sample_or_histogram_they_belong_to() {
    let mut scalar = series(
        &[("__name__", "requests_total")],
        vec![sample(1.0, 1_000), sample(2.0, 2_000)],
    );
    scalar.exemplars = vec![traced(2_000), traced(1_500)];
    let mut native = series(&[("__name__", "latency_seconds")], vec![]);
    native.histograms = vec![histogram(1_000), histogram(2_000)];
    native.exemplars = vec![traced(500), traced(1_500), traced(2_000), traced(9_000)];
    let decoded = decode(vec![scalar, native], vec![]);

    let points = &decoded.batch.series[0].points;
    assert_eq!(points[0].trace, None, "no exemplar at 1000");
    assert_eq!(hex::encode(points[1].trace.unwrap().trace_id), TRACE);
    let histograms = &decoded.batch.series[1].histograms;
    let times = |index: usize| -> Vec<i64> { histograms[index].exemplars.iter().map(|e| e.1).collect() };
    assert_eq!(times(0), vec![500]);
    assert_eq!(times(1), vec![1_500, 2_000, 9_000]);
    let (value, _, trace): (f64, i64, TraceContext) = histograms[0].exemplars[0];
    assert_eq!((value, hex::encode(trace.span_id)), (0.5, SPAN.to_string()));
}

#[test]
fn native_histogram_series_are_distributions_cumulative_unless_gauge() {
    let mut counter = series(&[("__name__", "latency_seconds")], vec![]);
    counter.histograms = vec![histogram(1_000)];
    let mut gauge = series(&[("__name__", "sizes")], vec![]);
    gauge.histograms = vec![wire::Histogram {
        reset_hint: ResetHint::Gauge as i32,
        ..histogram(1_000)
    }];
    let decoded = decode(vec![counter, gauge], vec![]);
    let kinds: Vec<_> = decoded.batch.series.iter().map(|s| (s.kind, s.cumulative)).collect();
    assert_eq!(kinds, vec![(Kind::Distribution, true), (Kind::Distribution, false)]);
}

#[test]
fn label_rule_violations_refuse_the_series_alone() {
    let cases: Vec<(&[(&str, &str)], &str)> = vec![
        (
            &[("__name__", "m"), ("b", "1"), ("a", "1")],
            "series 0: labels are not sorted by name: \"a\" comes after \"b\"",
        ),
        (&[("", "x"), ("__name__", "m")], "series 0: label 0 has an empty name"),
        (
            &[("__name__", "m"), ("a", "1"), ("a", "2")],
            "series 0: duplicate label name \"a\"",
        ),
        (&[("a", "1")], "series 0: no metric name"),
        (&[("__name__", "9m")], "invalid metric name \"9m\""),
        (&[("__name__", "m"), ("__x", "1")], "invalid label name \"__x\""),
    ];
    for (labels, needle) in cases {
        let good = series(&[("__name__", "ok")], vec![sample(1.0, 1)]);
        let decoded = decode(vec![series(labels, vec![sample(1.0, 1), sample(2.0, 2)]), good], vec![]);
        assert_eq!((decoded.refused_series, decoded.error_count), (1, 1), "{labels:?}");
        assert!(
            decoded.error_text().contains(needle),
            "{:?} lacks {needle:?}",
            decoded.error_text()
        );
        assert_eq!(decoded.outcome.rejected_for(DropReason::InvalidSeries), 2);
        assert_eq!(decoded.batch.series.len(), 1, "the good series stays");
    }
    let mut mixed = series(&[("__name__", "m")], vec![sample(1.0, 1)]);
    mixed.histograms = vec![histogram(1)];
    let decoded = decode(vec![mixed], vec![]);
    assert!(decoded.nothing_valid());
    assert!(decoded.error_text().contains("both samples and histograms"));
}

#[test]
fn decompression_is_bounded_before_allocating() {
    let request = wire::WriteRequest {
        timeseries: vec![series(&[("__name__", "up")], vec![sample(1.0, 1)])],
        metadata: vec![],
    };
    let bytes = request.encode_to_vec();
    let block = snap::raw::Encoder::new().compress_vec(&bytes).unwrap();
    assert_eq!(decompress(&block, 1_000).unwrap(), bytes);
    // A 6-byte block whose header claims 1 GiB.
    let mut bomb = Vec::new();
    let mut length: u64 = 1 << 30;
    while length >= 0x80 {
        bomb.push((length as u8) | 0x80);
        length >>= 7;
    }
    bomb.push(length as u8);
    bomb.extend_from_slice(&[0, 0]);
    assert_eq!(
        decompress(&bomb, 1_000),
        Err(RemoteWriteError::TooLarge {
            length: 1 << 30,
            limit: 1_000
        })
    );
    assert!(matches!(
        decompress(b"\xff\xff\xff\xff\xff\xff", 1_000),
        Err(RemoteWriteError::Snappy(_))
    ));
    assert!(matches!(
        decode_body(b"\xff\xff\xff", Arc::from("t"), &IngestLimits::default()),
        Err(RemoteWriteError::Protobuf(_))
    ));
}
