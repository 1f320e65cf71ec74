//! Decoding of OTLP requests: spans into labelled duration samples, every
//! metric type into the model, and broken input refused item by item.

use crate::aggregate::histogram::bucket_index;
use crate::api::otlp::collector::metrics::v1::ExportMetricsServiceRequest;
use crate::api::otlp::collector::trace::v1::ExportTraceServiceRequest;
use crate::api::otlp::common::v1::{any_value, AnyValue, KeyValue};
use crate::api::otlp::metrics::v1 as wire;
use crate::api::otlp::resource::v1::Resource;
use crate::api::otlp::trace::v1::{span, status, ResourceSpans, ScopeSpans, Span, Status};
use crate::config::{IngestLimits, OtlpSettings};
use crate::model::{DropReason, Kind};

use super::*;

fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..KeyValue::default()
    }
}

fn traces(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![attribute("service.name", "checkout"), attribute("region", "eu")],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

fn a_span(id: u8, start_ns: u64, end_ns: u64) -> Span {
    Span {
        trace_id: vec![id; 16],
        span_id: vec![id; 8],
        name: "GET /cart".into(),
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: start_ns,
        end_time_unix_nano: end_ns,
        status: Some(Status {
            code: status::StatusCode::Error as i32,
            ..Status::default()
        }),
        attributes: vec![attribute("http.route", "/cart"), attribute("user.id", "u-123")],
        ..Span::default()
    }
}

#[test]
fn a_span_becomes_its_duration_with_its_trace_and_bounded_labels() {
    let t = 1_800_000_000_000_000_000u64;
    let request = traces(vec![a_span(1, t, t + 250_000_000), a_span(2, t, t + 1_000)]);
    let decoded = decode_spans(&request, &OtlpSettings::default(), &IngestLimits::default());
    assert_eq!(decoded.rejected(), 0);
    assert_eq!(decoded.series.len(), 1, "same labels, one series");
    let series = &decoded.series[0];
    assert_eq!(series.kind, Kind::Distribution);
    let labels: Vec<(String, String)> = series
        .labels
        .iter()
        .map(|l| (l.name.to_string(), l.value.to_string()))
        .collect();
    let expected = [
        ("__name__", "span_duration_seconds"),
        ("service_name", "checkout"),
        ("span_kind", "server"),
        ("span_name", "GET /cart"),
        ("status_code", "error"),
    ];
    assert_eq!(
        labels,
        expected.map(|(n, v)| (n.to_string(), v.to_string())).to_vec(),
        "no attribute by default"
    );
    let mut values: Vec<f64> = series.points.iter().map(|p| p.value).collect();
    values.sort_by(f64::total_cmp);
    assert_eq!(values, vec![1e-6, 0.25]);
    let first = series.points.iter().find(|p| p.value == 0.25).unwrap();
    assert_eq!(first.timestamp_ms, Some(1_800_000_000_000 + 250), "stamped at its end");
    assert_eq!(first.trace.unwrap().trace_id, [1; 16]);
    assert_eq!(first.trace.unwrap().span_id, [1; 8]);

    // Mapped attributes: span attribute first, then the resource's.
    let settings = OtlpSettings {
        span_attributes: vec![
            ("http.route".into(), "route".into()),
            ("region".into(), "region".into()),
        ],
        ..OtlpSettings::default()
    };
    let decoded = decode_spans(&request, &settings, &IngestLimits::default());
    let labels = &decoded.series[0].labels;
    assert_eq!(labels.get("route"), Some("/cart"));
    assert_eq!(labels.get("region"), Some("eu"));
    assert_eq!(labels.get("user_id"), None);
}

#[test]
fn spans_whose_labels_coincide_share_one_series() {
    let t = 1_800_000_000_000_000_000u64;
    let mut client = a_span(2, t, t + 2_000);
    client.kind = span::SpanKind::Client as i32;
    let request = traces(vec![a_span(1, t, t + 1_000), client, a_span(3, t, t + 3_000)]);
    let settings = OtlpSettings {
        span_labels: vec![
            crate::config::SpanLabel::ServiceName,
            crate::config::SpanLabel::SpanName,
        ],
        ..OtlpSettings::default()
    };
    let decoded = decode_spans(&request, &settings, &IngestLimits::default());
    assert_eq!(decoded.series.len(), 1, "span_kind is not a label here");
    assert_eq!(decoded.series[0].points.len(), 3);
    let decoded = decode_spans(&request, &OtlpSettings::default(), &IngestLimits::default());
    let mut sizes: Vec<usize> = decoded.series.iter().map(|s| s.points.len()).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, vec![1, 2], "server and client apart");
}

#[test]
fn broken_spans_are_refused_alone_with_a_reason() {
    let t = 1_800_000_000_000_000_000u64;
    let mut short_trace = a_span(1, t, t + 5);
    short_trace.trace_id = vec![1; 3];
    let mut no_span_id = a_span(2, t, t + 5);
    no_span_id.span_id.clear();
    let zero_trace = Span {
        trace_id: vec![0; 16],
        ..a_span(3, t, t + 5)
    };
    let backwards = a_span(4, t + 10, t);
    let unstarted = a_span(5, 0, t);
    let huge_name = Span {
        name: "x".repeat(5000),
        ..a_span(6, t, t + 5)
    };
    let good = a_span(7, t, t + 5);
    let request = traces(vec![
        short_trace,
        no_span_id,
        zero_trace,
        backwards,
        unstarted,
        huge_name,
        good,
    ]);
    let decoded = decode_spans(&request, &OtlpSettings::default(), &IngestLimits::default());
    assert_eq!(decoded.rejected(), 6);
    assert_eq!(decoded.outcome.rejected_for(DropReason::InvalidTraceId), 3);
    assert_eq!(decoded.outcome.rejected_for(DropReason::InvalidValue), 2);
    assert_eq!(decoded.outcome.rejected_for(DropReason::InvalidSeries), 1);
    let text = decoded.errors.join("\n");
    for needle in [
        "trace_id has 3 bytes",
        "span_id has 0 bytes",
        "all zero",
        "before start time",
        "limit is 4096",
    ] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
    assert!(text.len() < 2000, "long names are cut in messages: {text}");
    assert_eq!(decoded.series.iter().map(|s| s.points.len()).sum::<usize>(), 1);
}

fn metrics(metric: wire::Metric) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![wire::ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![attribute("service.name", "checkout")],
                ..Resource::default()
            }),
            scope_metrics: vec![wire::ScopeMetrics {
                metrics: vec![metric],
                ..wire::ScopeMetrics::default()
            }],
            ..wire::ResourceMetrics::default()
        }],
    }
}

fn metric(name: &str, data: wire::metric::Data) -> wire::Metric {
    wire::Metric {
        name: name.into(),
        data: Some(data),
        ..wire::Metric::default()
    }
}

fn number(value: f64, time_ms: u64) -> wire::NumberDataPoint {
    wire::NumberDataPoint {
        attributes: vec![attribute("http.method", "GET")],
        time_unix_nano: time_ms * 1_000_000,
        value: Some(wire::number_data_point::Value::AsDouble(value)),
        exemplars: vec![wire::Exemplar {
            trace_id: vec![9; 16],
            span_id: vec![8; 8],
            value: Some(wire::exemplar::Value::AsDouble(value)),
            ..wire::Exemplar::default()
        }],
        ..wire::NumberDataPoint::default()
    }
}

fn decode(metric: wire::Metric) -> Decoded {
    decode_metrics(&metrics(metric), 6, &IngestLimits::default())
}

#[test]
fn sums_and_gauges_map_to_counters_running_totals_and_gauges() {
    let sum = |monotonic, temporality: wire::AggregationTemporality| {
        decode(metric(
            "http.requests",
            wire::metric::Data::Sum(wire::Sum {
                data_points: vec![number(5.0, 1000), number(7.0, 2000)],
                aggregation_temporality: temporality as i32,
                is_monotonic: monotonic,
            }),
        ))
    };
    let cases = [
        (true, wire::AggregationTemporality::Cumulative, Kind::Counter, true),
        (true, wire::AggregationTemporality::Delta, Kind::Counter, false),
        (false, wire::AggregationTemporality::Cumulative, Kind::Gauge, false),
        (false, wire::AggregationTemporality::Delta, Kind::Counter, false),
    ];
    for (monotonic, temporality, kind, cumulative) in cases {
        let decoded = sum(monotonic, temporality);
        assert_eq!(decoded.rejected(), 0);
        let series = &decoded.series[0];
        assert_eq!(
            (series.kind, series.cumulative),
            (kind, cumulative),
            "{monotonic} {temporality:?}"
        );
        assert_eq!(series.labels.metric_name(), Some("http_requests"));
        assert_eq!(series.labels.get("http_method"), Some("GET"));
        assert_eq!(series.labels.get("service_name"), Some("checkout"));
        assert_eq!(series.points.len(), 2);
        assert_eq!(
            series.points[0].trace.unwrap().trace_id,
            [9; 16],
            "exemplar's trace kept"
        );
    }
    let gauge = decode(metric(
        "temperature",
        wire::metric::Data::Gauge(wire::Gauge {
            data_points: vec![number(21.5, 1000), number(f64::NAN, 2000)],
        }),
    ));
    assert_eq!(gauge.series[0].kind, Kind::Gauge);
    assert_eq!(gauge.series[0].points.len(), 1);
    assert_eq!(gauge.rejected(), 1, "NaN refused alone");
    assert!(gauge.errors[0].contains("no finite value"), "{:?}", gauge.errors);
}

#[test]
fn exponential_histograms_keep_their_buckets_and_finer_scales_are_downscaled() {
    let point = wire::ExponentialHistogramDataPoint {
        scale: 10,
        count: 7,
        zero_count: 1,
        sum: Some(3.5),
        positive: Some(wire::exponential_histogram_data_point::Buckets {
            offset: 1020,
            bucket_counts: vec![1, 0, 0, 0, 2, 3],
        }),
        time_unix_nano: 5_000_000,
        ..wire::ExponentialHistogramDataPoint::default()
    };
    let native = exponential_histogram(&point).unwrap();
    assert_eq!(native.scale, 8);
    // Indices 1020, 1024, 1025 at scale 10 are 255, 256, 256 at scale 8.
    assert_eq!(native.positive, vec![(255, 1), (256, 5)]);
    assert_eq!((native.count, native.zero_count, native.timestamp_ms), (7, 1, Some(5)));

    let too_small = wire::ExponentialHistogramDataPoint {
        count: 2,
        ..point.clone()
    };
    assert!(exponential_histogram(&too_small)
        .unwrap_err()
        .contains("count 2 is less than"));
    let coarse = wire::ExponentialHistogramDataPoint {
        scale: -11,
        ..point.clone()
    };
    assert!(exponential_histogram(&coarse).unwrap_err().contains("scale -11"));
    let bad_zero = wire::ExponentialHistogramDataPoint {
        zero_threshold: -1.0,
        ..point
    };
    assert!(exponential_histogram(&bad_zero).unwrap_err().contains("zero threshold"));
}

#[test]
fn explicit_histograms_fold_at_representatives_or_at_their_exemplars() {
    let point = wire::HistogramDataPoint {
        count: 6,
        sum: Some(1.0),
        bucket_counts: vec![1, 2, 3],
        explicit_bounds: vec![0.1, 0.2],
        max: Some(0.4),
        exemplars: vec![wire::Exemplar {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            value: Some(wire::exemplar::Value::AsDouble(0.19)),
            ..wire::Exemplar::default()
        }],
        ..wire::HistogramDataPoint::default()
    };
    let native = explicit_histogram(&point, 6).unwrap();
    let mut expected = vec![
        (bucket_index(6, 0.1), 1),  // (-inf, 0.1]: its bound
        (bucket_index(6, 0.19), 2), // (0.1, 0.2]: at its exemplar's value
        (bucket_index(6, 0.3), 3),  // (0.2, inf): between the bound and max
    ];
    expected.sort_unstable();
    assert_eq!(native.positive, expected);
    assert_eq!(native.exemplars.len(), 1);

    for (bounds, counts, needle) in [
        (vec![0.2, 0.1], vec![1, 1, 1], "strictly increasing"),
        (vec![0.1], vec![1, 1, 1], "3 bucket counts for 1 bounds"),
        (vec![f64::INFINITY], vec![1, 1], "strictly increasing"),
        (vec![], vec![], "no bucket counts"),
    ] {
        let broken = wire::HistogramDataPoint {
            bucket_counts: counts,
            explicit_bounds: bounds,
            ..point.clone()
        };
        assert!(explicit_histogram(&broken, 6).unwrap_err().contains(needle), "{needle}");
    }
}

#[test]
fn summaries_nameless_and_badly_labelled_metrics_are_refused_and_counted() {
    let summary = decode(metric(
        "rpc",
        wire::metric::Data::Summary(wire::Summary {
            data_points: vec![wire::SummaryDataPoint::default(), wire::SummaryDataPoint::default()],
        }),
    ));
    assert_eq!(summary.rejected(), 2);
    assert!(summary.errors[0].contains("summaries are not supported"));
    let nameless = decode(metric(
        "",
        wire::metric::Data::Gauge(wire::Gauge {
            data_points: vec![number(1.0, 1)],
        }),
    ));
    assert_eq!(nameless.rejected(), 1);
    let mut reserved = number(1.0, 1);
    reserved.attributes.push(attribute("quantile", "0.5"));
    let histogram = decode(metric(
        "latency",
        wire::metric::Data::Histogram(wire::Histogram {
            data_points: vec![wire::HistogramDataPoint {
                attributes: reserved.attributes,
                count: 1,
                bucket_counts: vec![1],
                ..wire::HistogramDataPoint::default()
            }],
            aggregation_temporality: wire::AggregationTemporality::Delta as i32,
        }),
    ));
    assert_eq!(histogram.rejected(), 1);
    assert!(histogram.errors[0].contains("quantile"), "{:?}", histogram.errors);
    assert_eq!(sanitize_name("http.server.duration", true), "http_server_duration");
    assert_eq!(sanitize_name("2xx", false), "_2xx");
}
