//! Spans into distribution samples: one observation of each span's duration
//! (seconds, at its end time) carrying its trace and span ID, labelled by the
//! configured built-in labels and the bounded attribute mapping.

use std::collections::HashMap;

use crate::api::otlp::collector::trace::v1::ExportTraceServiceRequest;
use crate::api::otlp::trace::v1::{span, status, Span};
use crate::config::{IngestLimits, OtlpSettings, SpanLabel};
use crate::ingest::validate::check_labels;
use crate::model::{Kind, Label, Labels, Point, SeriesBatch, TraceContext, METRIC_NAME_LABEL};

use super::{attribute_text, service_name, Decoded, MAX_ERRORS_REPORTED};

/// The span kind label value.
fn kind_text(kind: i32) -> &'static str {
    match span::SpanKind::try_from(kind).unwrap_or(span::SpanKind::Unspecified) {
        span::SpanKind::Unspecified => "unspecified",
        span::SpanKind::Internal => "internal",
        span::SpanKind::Server => "server",
        span::SpanKind::Client => "client",
        span::SpanKind::Producer => "producer",
        span::SpanKind::Consumer => "consumer",
    }
}

/// The status code label value.
fn status_text(span: &Span) -> &'static str {
    let code = span.status.as_ref().map_or(0, |status| status.code);
    match status::StatusCode::try_from(code).unwrap_or(status::StatusCode::Unset) {
        status::StatusCode::Unset => "unset",
        status::StatusCode::Ok => "ok",
        status::StatusCode::Error => "error",
    }
}

/// Why one span was refused.
fn check_span(span: &Span) -> Result<(TraceContext, f64, i64), String> {
    let trace_id: [u8; 16] = span
        .trace_id
        .as_slice()
        .try_into()
        .map_err(|_| format!("trace_id has {} bytes, not 16", span.trace_id.len()))?;
    let span_id: [u8; 8] = span
        .span_id
        .as_slice()
        .try_into()
        .map_err(|_| format!("span_id has {} bytes, not 8", span.span_id.len()))?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return Err("trace_id or span_id is all zero".to_string());
    }
    if span.start_time_unix_nano == 0 || span.end_time_unix_nano < span.start_time_unix_nano {
        return Err(format!(
            "end time {} is before start time {} (or no start time)",
            span.end_time_unix_nano, span.start_time_unix_nano
        ));
    }
    let seconds = (span.end_time_unix_nano - span.start_time_unix_nano) as f64 / 1e9;
    let end_ms = i64::try_from(span.end_time_unix_nano / 1_000_000).map_err(|_| "end time out of range".to_string())?;
    Ok((TraceContext { trace_id, span_id }, seconds, end_ms))
}

/// Turns an export request into one distribution series per label set. Bad
/// spans are refused alone and reported; the rest are kept.
pub fn decode_spans(request: &ExportTraceServiceRequest, settings: &OtlpSettings, limits: &IngestLimits) -> Decoded {
    let mut decoded = Decoded::default();
    let mut series: HashMap<Labels, Vec<Point>> = HashMap::new();
    let mut index = 0usize;
    for resource_spans in &request.resource_spans {
        let resource = resource_spans
            .resource
            .as_ref()
            .map(|resource| resource.attributes.as_slice())
            .unwrap_or(&[]);
        let service = service_name(resource);
        for scope_spans in &resource_spans.scope_spans {
            for span in &scope_spans.spans {
                index += 1;
                let refuse = |decoded: &mut Decoded, problem: String| {
                    decoded.rejected += 1;
                    if decoded.errors.len() < MAX_ERRORS_REPORTED {
                        // A name can be long: quote its start only.
                        let name: String = span.name.chars().take(64).collect();
                        decoded
                            .errors
                            .push(format!("span {name:?} (#{}): {problem}", index - 1));
                    }
                };
                let (trace, seconds, end_ms) = match check_span(span) {
                    Ok(checked) => checked,
                    Err(problem) => {
                        refuse(&mut decoded, problem);
                        continue;
                    }
                };
                let mut labels = Vec::with_capacity(1 + settings.span_labels.len() + settings.span_attributes.len());
                labels.push(Label {
                    name: METRIC_NAME_LABEL.into(),
                    value: settings.span_metric.as_str().into(),
                });
                for label in &settings.span_labels {
                    let value = match label {
                        SpanLabel::ServiceName => service.as_str(),
                        SpanLabel::SpanName => span.name.as_str(),
                        SpanLabel::SpanKind => kind_text(span.kind),
                        SpanLabel::StatusCode => status_text(span),
                    };
                    labels.push(Label {
                        name: label.as_str().into(),
                        value: value.into(),
                    });
                }
                for (key, label) in &settings.span_attributes {
                    let value = span
                        .attributes
                        .iter()
                        .chain(resource)
                        .find(|attribute| attribute.key == *key)
                        .and_then(attribute_text);
                    if let Some(value) = value {
                        labels.push(Label {
                            name: label.as_str().into(),
                            value: value.into(),
                        });
                    }
                }
                match check_labels(index - 1, labels, Kind::Distribution, limits) {
                    Ok(labels) => {
                        series
                            .entry(labels)
                            .or_default()
                            .push(Point::new(seconds, Some(end_ms), Some(trace)))
                    }
                    Err(error) => refuse(&mut decoded, error.to_string()),
                }
            }
        }
    }
    decoded.series = series
        .into_iter()
        .map(|(labels, points)| SeriesBatch::new(labels, Kind::Distribution, points))
        .collect();
    decoded
}
