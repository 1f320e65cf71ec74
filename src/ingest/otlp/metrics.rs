//! OTLP metrics into series batches: sums (delta and cumulative, monotonic or
//! not), gauges, exponential histograms (exact when the scale fits, downscaled
//! past scale 8) and explicit-bucket histograms (approximated: see
//! [`explicit_histogram`]), each with its exemplars. Cumulative sums and
//! histograms are left to the engine's cumulative paths.

use std::collections::HashMap;

use crate::aggregate::histogram::{bucket_index, MAX_SCALE, MIN_SCALE};
use crate::api::otlp::collector::metrics::v1::ExportMetricsServiceRequest;
use crate::api::otlp::common::v1::KeyValue;
use crate::api::otlp::metrics::v1::{
    self as wire, exemplar, exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
    AggregationTemporality,
};
use crate::config::IngestLimits;
use crate::ingest::validate::{check_labels, trace_context};
use crate::model::{
    DropReason, Kind, Label, Labels, NativeHistogram, Point, SeriesBatch, TraceContext, METRIC_NAME_LABEL,
};

use super::{attribute_text, Decoded};

/// A Prometheus-style name: characters outside `[a-zA-Z0-9_:]` become `_`, and
/// a leading digit gets a `_` before it (`http.server.duration` -> `http_server_duration`).
pub fn sanitize_name(name: &str, colons: bool) -> String {
    let mut out = String::with_capacity(name.len() + 1);
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        out.push('_');
    }
    out.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' || (colons && c == ':') {
            c
        } else {
            '_'
        }
    }));
    out
}

fn nanos_to_ms(nanos: u64) -> Option<i64> {
    (nanos > 0).then_some((nanos / 1_000_000) as i64)
}

/// The traced exemplars of a point: `(value, timestamp, trace)`; untraced or broken ones are skipped
/// (an exemplar is an optional link, not data).
fn exemplars(exemplars: &[wire::Exemplar]) -> Vec<(f64, i64, TraceContext)> {
    exemplars
        .iter()
        .filter_map(|e| {
            let value = match e.value? {
                exemplar::Value::AsDouble(value) => value,
                exemplar::Value::AsInt(value) => value as f64,
            };
            let trace = trace_context(&e.trace_id, &e.span_id).ok()??;
            value
                .is_finite()
                .then(|| (value, nanos_to_ms(e.time_unix_nano).unwrap_or(0), trace))
        })
        .collect()
}

/// Moves `(index, count)` buckets from `from` to a coarser `to` scale, merging neighbours.
fn downscale(buckets: Vec<(i32, u64)>, from: i32, to: i32) -> Vec<(i32, u64)> {
    let shift = (from - to) as u32;
    let mut out: Vec<(i32, u64)> = Vec::with_capacity(buckets.len());
    for (index, count) in buckets {
        let index = index >> shift;
        match out.last_mut() {
            Some((last, total)) if *last == index => *total = total.saturating_add(count),
            _ => out.push((index, count)),
        }
    }
    out
}

fn expand(buckets: &Option<Buckets>) -> Result<Vec<(i32, u64)>, String> {
    let Some(buckets) = buckets else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (i, &count) in buckets.bucket_counts.iter().enumerate() {
        if count > 0 {
            let index = i64::from(buckets.offset) + i as i64;
            let index = i32::try_from(index).map_err(|_| format!("bucket index {index} is out of range"))?;
            out.push((index, count));
        }
    }
    Ok(out)
}

/// An OTLP exponential histogram point as the model's native histogram; a
/// scale finer than tailfold keeps (8) is downscaled here, exactly.
pub fn exponential_histogram(point: &wire::ExponentialHistogramDataPoint) -> Result<NativeHistogram, String> {
    if point.scale < i32::from(MIN_SCALE) {
        return Err(format!("scale {} is below {MIN_SCALE}", point.scale));
    }
    if !point.zero_threshold.is_finite() || point.zero_threshold < 0.0 {
        return Err(format!(
            "zero threshold {} is negative or not finite",
            point.zero_threshold
        ));
    }
    let mut positive = expand(&point.positive)?;
    let mut negative = expand(&point.negative)?;
    let mut scale = point.scale;
    if scale > i32::from(MAX_SCALE) {
        positive = downscale(positive, scale, i32::from(MAX_SCALE));
        negative = downscale(negative, scale, i32::from(MAX_SCALE));
        scale = i32::from(MAX_SCALE);
    }
    let in_buckets: u128 = u128::from(point.zero_count)
        + positive
            .iter()
            .chain(&negative)
            .map(|(_, count)| u128::from(*count))
            .sum::<u128>();
    if u128::from(point.count) < in_buckets {
        return Err(format!(
            "count {} is less than the {in_buckets} observations in its buckets",
            point.count
        ));
    }
    Ok(NativeHistogram {
        timestamp_ms: nanos_to_ms(point.time_unix_nano),
        scale: scale as i8,
        zero_threshold: point.zero_threshold,
        zero_count: point.zero_count,
        count: point.count,
        sum: point.sum.unwrap_or(f64::NAN),
        positive,
        negative,
        exemplars: exemplars(&point.exemplars),
    })
}

/// An explicit-bucket histogram point as a native histogram at `scale`: an
/// approximation. Each bucket's count goes to the exponential bucket of one
/// representative value: the middle of a finite bucket `(lower, upper]`, the
/// first bound (or the middle between `min` and it) for `(-inf, first]`, the
/// last bound (or the middle between it and `max`) for `(last, +inf)`. A
/// bucket holding exemplars uses them instead: each is a real observation of
/// the bucket and takes one count at its own value, the rest go with the
/// first, so a quantile falling in the bucket links to that exemplar's trace.
/// A quantile is exact to the explicit bucket it falls in, not better.
pub fn explicit_histogram(point: &wire::HistogramDataPoint, scale: i8) -> Result<NativeHistogram, String> {
    let bounds = &point.explicit_bounds;
    if point.bucket_counts.is_empty() {
        return Err("no bucket counts".to_string());
    }
    if point.bucket_counts.len() != bounds.len() + 1 {
        return Err(format!(
            "{} bucket counts for {} bounds (must be one more)",
            point.bucket_counts.len(),
            bounds.len()
        ));
    }
    if bounds.iter().any(|b| !b.is_finite()) || bounds.windows(2).any(|pair| pair[0] >= pair[1]) {
        return Err("explicit bounds are not finite and strictly increasing".to_string());
    }
    let mut positive: HashMap<i32, u64> = HashMap::new();
    let mut negative: HashMap<i32, u64> = HashMap::new();
    let mut zero_count = 0u64;
    let mut place = |value: f64, count: u64| {
        if value > 0.0 {
            *positive.entry(bucket_index(scale, value)).or_default() += count;
        } else if value < 0.0 {
            *negative.entry(bucket_index(scale, value)).or_default() += count;
        } else {
            zero_count += count;
        }
    };
    let traced = exemplars(&point.exemplars);
    let mut in_buckets = 0u128;
    let last = point.bucket_counts.len() - 1;
    for (i, &count) in point.bucket_counts.iter().enumerate() {
        if count == 0 {
            continue;
        }
        in_buckets += u128::from(count);
        let lower = if i == 0 { f64::NEG_INFINITY } else { bounds[i - 1] };
        let upper = if i == last { f64::INFINITY } else { bounds[i] };
        // Exemplars of this bucket are real observations in it: each takes one
        // count at its own value, and the rest go with the first of them, so
        // a quantile in this bucket lands where an exemplar can link it.
        let mut left = count;
        let mut first_traced = None;
        for (value, _, _) in traced.iter().filter(|(value, _, _)| *value > lower && *value <= upper) {
            if left == 0 {
                break;
            }
            first_traced.get_or_insert(*value);
            place(*value, 1);
            left -= 1;
        }
        if left == 0 {
            continue;
        }
        let value = if let Some(traced) = first_traced {
            traced
        } else if bounds.is_empty() {
            point.sum.map_or(0.0, |sum| sum / point.count.max(1) as f64)
        } else if i == 0 {
            match point.min {
                Some(min) if min.is_finite() && min <= bounds[0] => (min + bounds[0]) / 2.0,
                _ => bounds[0],
            }
        } else if i == last {
            match point.max {
                Some(max) if max.is_finite() && max > bounds[last - 1] => (bounds[last - 1] + max) / 2.0,
                _ => bounds[last - 1],
            }
        } else {
            (bounds[i - 1] + bounds[i]) / 2.0
        };
        place(value, left);
    }
    if u128::from(point.count) < in_buckets {
        return Err(format!(
            "count {} is less than the {in_buckets} observations in its buckets",
            point.count
        ));
    }
    let sorted = |map: HashMap<i32, u64>| {
        let mut buckets: Vec<(i32, u64)> = map.into_iter().collect();
        buckets.sort_unstable();
        buckets
    };
    Ok(NativeHistogram {
        timestamp_ms: nanos_to_ms(point.time_unix_nano),
        scale,
        zero_threshold: 0.0,
        zero_count,
        count: point.count,
        sum: point.sum.unwrap_or(f64::NAN),
        positive: sorted(positive),
        negative: sorted(negative),
        exemplars: traced,
    })
}

fn number(point: &wire::NumberDataPoint) -> Option<Point> {
    let value = match point.value? {
        number_data_point::Value::AsDouble(value) => value,
        number_data_point::Value::AsInt(value) => value as f64,
    };
    let trace = exemplars(&point.exemplars).first().map(|(_, _, trace)| *trace);
    Some(Point::new(value, nanos_to_ms(point.time_unix_nano), trace))
}

/// One series' worth of data points, keyed by label set while decoding.
#[derive(Default)]
struct Pending {
    kind: Option<(Kind, bool)>,
    points: Vec<Point>,
    histograms: Vec<NativeHistogram>,
}

/// The labels of a data point: the metric name, `service_name` of the
/// resource (when set), and the point's attributes with Prometheus-safe names.
fn point_labels(name: &str, service: Option<&str>, attributes: &[KeyValue]) -> Vec<Label> {
    let mut labels = Vec::with_capacity(attributes.len() + 2);
    labels.push(Label {
        name: METRIC_NAME_LABEL.into(),
        value: name.into(),
    });
    for attribute in attributes {
        if let Some(value) = attribute_text(attribute) {
            labels.push(Label {
                name: sanitize_name(&attribute.key, false).into(),
                value: value.into(),
            });
        }
    }
    if let Some(service) = service {
        if !labels.iter().any(|label| &*label.name == "service_name") {
            labels.push(Label {
                name: "service_name".into(),
                value: service.into(),
            });
        }
    }
    labels
}

/// Turns a metrics export request into series batches. Refused data points
/// (bad values, labels or buckets; summaries, which carry no distribution)
/// are counted and reported; the rest are kept.
pub fn decode_metrics(request: &ExportMetricsServiceRequest, histogram_scale: i8, limits: &IngestLimits) -> Decoded {
    let mut decoded = Decoded::default();
    let mut series: HashMap<Labels, Pending> = HashMap::new();
    let mut index = 0usize;
    for resource_metrics in &request.resource_metrics {
        let resource = resource_metrics
            .resource
            .as_ref()
            .map(|resource| resource.attributes.as_slice())
            .unwrap_or(&[]);
        let service = resource
            .iter()
            .find(|attribute| attribute.key == "service.name")
            .and_then(attribute_text);
        for scope_metrics in &resource_metrics.scope_metrics {
            for metric in &scope_metrics.metrics {
                let name = sanitize_name(&metric.name, true);
                // A name can be long: messages quote its start only.
                let quoted: String = metric.name.chars().take(64).collect();
                let refuse = |decoded: &mut Decoded, reason: DropReason, points: usize, problem: String| {
                    decoded.refuse(reason, points as u64, || format!("metric {quoted:?}: {problem}"));
                };
                if name.is_empty() {
                    refuse(
                        &mut decoded,
                        DropReason::InvalidSeries,
                        data_points(metric),
                        "has no name".to_string(),
                    );
                    continue;
                }
                let mut add = |decoded: &mut Decoded,
                               attributes: &[KeyValue],
                               kind: Kind,
                               cumulative: bool,
                               point: Result<Option<Point>, NativeHistogram>| {
                    index += 1;
                    let labels = point_labels(&name, service.as_deref(), attributes);
                    let labels = match check_labels(index - 1, labels, kind, limits) {
                        Ok(labels) => labels,
                        Err(error) => {
                            decoded.refuse(DropReason::InvalidSeries, 1, || format!("metric {quoted:?}: {error}"));
                            return;
                        }
                    };
                    let pending = series.entry(labels).or_default();
                    if pending.kind.is_some_and(|seen| seen != (kind, cumulative)) {
                        decoded.refuse(DropReason::KindConflict, 1, || {
                            format!("metric {quoted:?}: sent with two types in one request")
                        });
                        return;
                    }
                    pending.kind = Some((kind, cumulative));
                    match point {
                        Ok(Some(point)) if point.value.is_finite() => pending.points.push(point),
                        Ok(_) => {
                            decoded.refuse(DropReason::InvalidValue, 1, || {
                                format!("metric {quoted:?}: a data point has no finite value")
                            });
                        }
                        Err(histogram) => pending.histograms.push(histogram),
                    }
                };
                match &metric.data {
                    None => refuse(&mut decoded, DropReason::InvalidSeries, 1, "has no data".to_string()),
                    Some(Data::Gauge(gauge)) => {
                        for point in &gauge.data_points {
                            add(&mut decoded, &point.attributes, Kind::Gauge, false, Ok(number(point)));
                        }
                    }
                    Some(Data::Sum(sum)) => {
                        let cumulative = sum.aggregation_temporality == AggregationTemporality::Cumulative as i32;
                        // A non-monotonic running total (an up-down counter) is a level: a gauge.
                        let (kind, running) = match (sum.is_monotonic, cumulative) {
                            (true, cumulative) => (Kind::Counter, cumulative),
                            (false, true) => (Kind::Gauge, false),
                            (false, false) => (Kind::Counter, false),
                        };
                        for point in &sum.data_points {
                            add(&mut decoded, &point.attributes, kind, running, Ok(number(point)));
                        }
                    }
                    Some(Data::Histogram(histogram)) => {
                        let cumulative = histogram.aggregation_temporality == AggregationTemporality::Cumulative as i32;
                        for point in &histogram.data_points {
                            match explicit_histogram(point, histogram_scale) {
                                Ok(native) => add(
                                    &mut decoded,
                                    &point.attributes,
                                    Kind::Distribution,
                                    cumulative,
                                    Err(native),
                                ),
                                Err(problem) => refuse(&mut decoded, DropReason::InvalidValue, 1, problem),
                            }
                        }
                    }
                    Some(Data::ExponentialHistogram(histogram)) => {
                        let cumulative = histogram.aggregation_temporality == AggregationTemporality::Cumulative as i32;
                        for point in &histogram.data_points {
                            match exponential_histogram(point) {
                                Ok(native) => add(
                                    &mut decoded,
                                    &point.attributes,
                                    Kind::Distribution,
                                    cumulative,
                                    Err(native),
                                ),
                                Err(problem) => refuse(&mut decoded, DropReason::InvalidValue, 1, problem),
                            }
                        }
                    }
                    Some(Data::Summary(summary)) => refuse(
                        &mut decoded,
                        DropReason::NoAggregation,
                        summary.data_points.len(),
                        "summaries are not supported (precomputed quantiles cannot be merged); send a histogram"
                            .to_string(),
                    ),
                }
            }
        }
    }
    decoded.series = series
        .into_iter()
        .filter_map(|(labels, pending)| {
            let (kind, cumulative) = pending.kind?;
            Some(SeriesBatch {
                labels,
                kind,
                cumulative,
                points: pending.points,
                histograms: pending.histograms,
            })
        })
        .collect();
    decoded
}

/// Data points of a metric (what a refusal of the whole metric counts).
fn data_points(metric: &wire::Metric) -> usize {
    match &metric.data {
        None => 1,
        Some(Data::Gauge(gauge)) => gauge.data_points.len(),
        Some(Data::Sum(sum)) => sum.data_points.len(),
        Some(Data::Histogram(histogram)) => histogram.data_points.len(),
        Some(Data::ExponentialHistogram(histogram)) => histogram.data_points.len(),
        Some(Data::Summary(summary)) => summary.data_points.len(),
    }
}
