//! Spans into distribution samples: one observation of each span's duration
//! (seconds, at its end time) carrying its trace and span ID, labelled by the
//! configured built-in labels and the bounded attribute mapping.

use std::collections::HashMap;

use crate::api::otlp::collector::trace::v1::ExportTraceServiceRequest;
use crate::api::otlp::trace::v1::{span, status, Span};
use crate::config::{IngestLimits, OtlpSettings, SpanLabel};
use crate::ingest::validate::check_labels;
use crate::model::{DropReason, Kind, Label, Labels, Point, SeriesBatch, TraceContext, METRIC_NAME_LABEL};

use super::{attribute_text, service_name, Decoded};

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

/// Why one span was refused, and for what.
fn check_span(span: &Span) -> Result<(TraceContext, f64, i64), (DropReason, String)> {
    let bad_id = |problem: String| (DropReason::InvalidTraceId, problem);
    let trace_id: [u8; 16] = span
        .trace_id
        .as_slice()
        .try_into()
        .map_err(|_| bad_id(format!("trace_id has {} bytes, not 16", span.trace_id.len())))?;
    let span_id: [u8; 8] = span
        .span_id
        .as_slice()
        .try_into()
        .map_err(|_| bad_id(format!("span_id has {} bytes, not 8", span.span_id.len())))?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return Err(bad_id("trace_id or span_id is all zero".to_string()));
    }
    if span.start_time_unix_nano == 0 || span.end_time_unix_nano < span.start_time_unix_nano {
        return Err((
            DropReason::InvalidValue,
            format!(
                "end time {} is before start time {} (or no start time)",
                span.end_time_unix_nano, span.start_time_unix_nano
            ),
        ));
    }
    let seconds = (span.end_time_unix_nano - span.start_time_unix_nano) as f64 / 1e9;
    let end_ms = i64::try_from(span.end_time_unix_nano / 1_000_000)
        .map_err(|_| (DropReason::InvalidValue, "end time out of range".to_string()))?;
    Ok((TraceContext { trace_id, span_id }, seconds, end_ms))
}

/// What decides a span's labels. Borrowed from the request, so spans of a
/// series already seen cost a hash lookup, not a label set; attribute values
/// are only read (and allocated) when the config maps attributes.
#[derive(Hash, PartialEq, Eq)]
struct SpanKey<'a> {
    resource: usize,
    name: &'a str,
    kind: i32,
    status: i32,
    attributes: Vec<Option<String>>,
}

/// The series of a key: its index in the output, or why its labels were refused.
type Slot = Result<usize, (DropReason, String)>;

/// Builds and checks the label set of a key.
fn labels_of(
    key: &SpanKey<'_>,
    span: &Span,
    service: &str,
    settings: &OtlpSettings,
    limits: &IngestLimits,
    index: usize,
) -> Result<Labels, (DropReason, String)> {
    let mut labels = Vec::with_capacity(1 + settings.span_labels.len() + settings.span_attributes.len());
    labels.push(Label {
        name: METRIC_NAME_LABEL.into(),
        value: settings.span_metric.as_str().into(),
    });
    for label in &settings.span_labels {
        let value = match label {
            SpanLabel::ServiceName => service,
            SpanLabel::SpanName => key.name,
            SpanLabel::SpanKind => kind_text(span.kind),
            SpanLabel::StatusCode => status_text(span),
        };
        labels.push(Label {
            name: label.as_str().into(),
            value: value.into(),
        });
    }
    for ((_, label), value) in settings.span_attributes.iter().zip(&key.attributes) {
        if let Some(value) = value {
            labels.push(Label {
                name: label.as_str().into(),
                value: value.as_str().into(),
            });
        }
    }
    check_labels(index, labels, Kind::Distribution, limits)
        .map_err(|error| (DropReason::InvalidSeries, error.to_string()))
}

/// Turns an export request into one distribution series per label set. Bad
/// spans are refused alone and reported; the rest are kept.
pub fn decode_spans(request: &ExportTraceServiceRequest, settings: &OtlpSettings, limits: &IngestLimits) -> Decoded {
    let mut decoded = Decoded::default();
    let mut slots: HashMap<SpanKey<'_>, Slot> = HashMap::new();
    let mut series: Vec<SeriesBatch> = Vec::new();
    let mut index = 0usize;
    for (resource_index, resource_spans) in request.resource_spans.iter().enumerate() {
        let resource = resource_spans
            .resource
            .as_ref()
            .map(|resource| resource.attributes.as_slice())
            .unwrap_or(&[]);
        let service = service_name(resource);
        for scope_spans in &resource_spans.scope_spans {
            for span in &scope_spans.spans {
                index += 1;
                let refuse = |decoded: &mut Decoded, (reason, problem): (DropReason, String)| {
                    decoded.refuse(reason, 1, || {
                        // A name can be long: quote its start only.
                        let name: String = span.name.chars().take(64).collect();
                        format!("span {name:?} (#{}): {problem}", index - 1)
                    });
                };
                let (trace, seconds, end_ms) = match check_span(span) {
                    Ok(checked) => checked,
                    Err(refusal) => {
                        refuse(&mut decoded, refusal);
                        continue;
                    }
                };
                let key = SpanKey {
                    resource: resource_index,
                    name: &span.name,
                    kind: span.kind,
                    status: span.status.as_ref().map_or(0, |status| status.code),
                    attributes: settings
                        .span_attributes
                        .iter()
                        .map(|(attribute, _)| {
                            span.attributes
                                .iter()
                                .chain(resource)
                                .find(|candidate| candidate.key == *attribute)
                                .and_then(attribute_text)
                        })
                        .collect(),
                };
                let slot = match slots.get(&key) {
                    Some(slot) => slot.clone(),
                    None => {
                        let slot = labels_of(&key, span, &service, settings, limits, index - 1).map(|labels| {
                            series.push(SeriesBatch::new(labels, Kind::Distribution, Vec::new()));
                            series.len() - 1
                        });
                        slots.insert(key, slot.clone());
                        slot
                    }
                };
                match slot {
                    Ok(position) => series[position]
                        .points
                        .push(Point::new(seconds, Some(end_ms), Some(trace))),
                    Err(refusal) => refuse(&mut decoded, refusal),
                }
            }
        }
    }
    // Two keys can give one label set (a label left out of the config): merge them.
    let mut merged: HashMap<Labels, usize> = HashMap::new();
    for batch in series {
        match merged.get(&batch.labels) {
            Some(&position) => decoded.series[position].points.extend(batch.points),
            None => {
                merged.insert(batch.labels.clone(), decoded.series.len());
                decoded.series.push(batch);
            }
        }
    }
    decoded
}
