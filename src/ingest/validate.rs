//! Validation of one wire series into a `SeriesBatch`: label rules and bounds,
//! kinds, values and trace IDs. A bad series is refused alone, with a message
//! naming what is wrong; a bad point is dropped alone and counted by reason.

use smallvec::SmallVec;
use thiserror::Error;

use crate::api::v1;
use crate::config::IngestLimits;
use crate::model::{DropReason, Kind, Label, Labels, Outcome, Point, SeriesBatch, TraceContext, METRIC_NAME_LABEL};

/// Why a whole series was refused. Messages name the series by its index in the request.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SeriesError {
    /// No `__name__` label.
    #[error("series {index}: no metric name: label __name__ is missing or empty")]
    MissingName {
        /// Position in the request.
        index: usize,
    },
    /// A metric name that is not `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    #[error("series {index}: invalid metric name {name:?}: expected [a-zA-Z_:][a-zA-Z0-9_:]*")]
    InvalidMetricName {
        /// Position in the request.
        index: usize,
        /// The name (cut to 64 bytes).
        name: String,
    },
    /// A label name that is not `[a-zA-Z_][a-zA-Z0-9_]*`, or reserved (`__` prefix).
    #[error("series {index}: invalid label name {name:?}: expected [a-zA-Z_][a-zA-Z0-9_]* not starting with __")]
    InvalidLabelName {
        /// Position in the request.
        index: usize,
        /// The name (cut to 64 bytes).
        name: String,
    },
    /// The same label twice.
    #[error("series {index}: duplicate label name {name:?}")]
    DuplicateLabel {
        /// Position in the request.
        index: usize,
        /// The repeated name.
        name: String,
    },
    /// More labels than allowed.
    #[error("series {index}: {count} labels, limit is {limit} (ingest.max_labels_per_series)")]
    TooManyLabels {
        /// Position in the request.
        index: usize,
        /// Labels sent.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A label name or value longer than allowed.
    #[error("series {index}: label {name:?} has a {what} of {length} bytes, limit is {limit} (ingest.max_label_{what}_bytes)")]
    TooLong {
        /// Position in the request.
        index: usize,
        /// The label (cut to 64 bytes).
        name: String,
        /// `name` or `value`.
        what: &'static str,
        /// Bytes sent.
        length: usize,
        /// The limit.
        limit: usize,
    },
    /// A distribution carrying a label tailfold adds to its outputs.
    #[error("series {index}: label {name:?} is reserved for distribution outputs (quantile, threshold)")]
    ReservedLabel {
        /// Position in the request.
        index: usize,
        /// The label.
        name: String,
    },
    /// Kind missing or unknown.
    #[error("series {index}: kind {kind} is not one of KIND_COUNTER, KIND_GAUGE, KIND_DISTRIBUTION")]
    InvalidKind {
        /// Position in the request.
        index: usize,
        /// The number sent.
        kind: i32,
    },
}

/// `text` cut to at most 64 bytes on a character boundary, for error messages.
pub(crate) fn cut(text: &str) -> String {
    let mut end = text.len().min(64);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

fn is_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_' | b':'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

fn is_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.starts_with("__")
}

fn kind_of(kind: i32) -> Option<Kind> {
    match v1::Kind::try_from(kind).ok()? {
        v1::Kind::Counter => Some(Kind::Counter),
        v1::Kind::Gauge => Some(Kind::Gauge),
        v1::Kind::Distribution => Some(Kind::Distribution),
        v1::Kind::Unspecified => None,
    }
}

/// Checks the labels of a series and builds its sorted label set. Labels with
/// an empty value are left out: in Prometheus an empty value means "no label".
/// Takes `(name, value)` pairs so every ingest protocol shares these rules.
pub fn validate_labels(
    index: usize,
    wire: impl ExactSizeIterator<Item = (String, String)>,
    kind: Kind,
    limits: &IngestLimits,
) -> Result<Labels, SeriesError> {
    // Checked and sorted in place, then copied once into the label block:
    // no per-label allocation beyond the decoded strings.
    let mut pairs: SmallVec<[(String, String); 16]> = wire.collect();
    check_pairs(index, &mut pairs, kind, limits)
}

/// [`validate_labels`] on labels borrowed from a request body, which it
/// sorts in place: nothing is allocated but the label block.
pub fn validate_label_refs(
    index: usize,
    pairs: &mut [(&str, &str)],
    kind: Kind,
    limits: &IngestLimits,
) -> Result<Labels, SeriesError> {
    check_pairs(index, pairs, kind, limits)
}

/// [`validate_labels`] for labels of any protocol (statsd tags, remote write):
/// the same rules and limits, so every adapter refuses the same series.
pub fn check_labels(
    index: usize,
    labels: Vec<Label>,
    kind: Kind,
    limits: &IngestLimits,
) -> Result<Labels, SeriesError> {
    let mut pairs: SmallVec<[(&str, &str); 16]> = labels.iter().map(|l| (&*l.name, &*l.value)).collect();
    check_pairs(index, &mut pairs, kind, limits)
}

/// The checks of [`check_labels`] on `(name, value)` pairs, which it sorts.
fn check_pairs<N: AsRef<str>, V: AsRef<str>>(
    index: usize,
    pairs: &mut [(N, V)],
    kind: Kind,
    limits: &IngestLimits,
) -> Result<Labels, SeriesError> {
    if pairs.len() > limits.max_labels_per_series {
        return Err(SeriesError::TooManyLabels {
            index,
            count: pairs.len(),
            limit: limits.max_labels_per_series,
        });
    }
    for (name, value) in pairs.iter() {
        let (name, value) = (name.as_ref(), value.as_ref());
        for (what, length, limit) in [
            ("name", name.len(), limits.max_label_name_bytes),
            ("value", value.len(), limits.max_label_value_bytes),
        ] {
            if length > limit {
                return Err(SeriesError::TooLong {
                    index,
                    name: cut(name),
                    what,
                    length,
                    limit,
                });
            }
        }
        if name == METRIC_NAME_LABEL {
            if value.is_empty() {
                return Err(SeriesError::MissingName { index });
            }
            if !is_metric_name(value) {
                return Err(SeriesError::InvalidMetricName {
                    index,
                    name: cut(value),
                });
            }
        } else if !is_label_name(name) {
            return Err(SeriesError::InvalidLabelName { index, name: cut(name) });
        } else if kind == Kind::Distribution && (name == "quantile" || name == "threshold") {
            return Err(SeriesError::ReservedLabel {
                index,
                name: name.to_string(),
            });
        }
    }
    pairs.sort_unstable_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
    // Empty values are left out before looking for duplicates, as before.
    let kept = || {
        pairs
            .iter()
            .map(|(name, value)| (name.as_ref(), value.as_ref()))
            .filter(|(_, value)| !value.is_empty())
    };
    if let Some(((name, _), _)) = kept().zip(kept().skip(1)).find(|(first, second)| first.0 == second.0) {
        return Err(SeriesError::DuplicateLabel {
            index,
            name: name.to_string(),
        });
    }
    if !kept().any(|(name, _)| name == METRIC_NAME_LABEL) {
        return Err(SeriesError::MissingName { index });
    }
    Ok(Labels::from_sorted_pairs(kept()))
}

/// Validates one wire series. Bad points are left out and tallied in `outcome`;
/// a bad series is returned as an error (the caller tallies its points).
pub fn validate_series(
    index: usize,
    series: v1::Series,
    limits: &IngestLimits,
    outcome: &mut Outcome,
) -> Result<SeriesBatch, SeriesError> {
    let kind = kind_of(series.kind).ok_or(SeriesError::InvalidKind {
        index,
        kind: series.kind,
    })?;
    let pairs = series.labels.into_iter().map(|label| (label.name, label.value));
    let labels = validate_labels(index, pairs, kind, limits)?;
    let mut points = Vec::with_capacity(series.points.len());
    for point in series.points {
        if !point.value.is_finite() {
            outcome.reject(DropReason::InvalidValue, 1);
            continue;
        }
        match trace_context(&point.trace_id, &point.span_id) {
            Ok(trace) => points.push(Point::new(point.value, point.timestamp_ms, trace)),
            Err(InvalidTrace) => outcome.reject(DropReason::InvalidTraceId, 1),
        }
    }
    Ok(SeriesBatch::new(labels, kind, points))
}

/// Why a tenant name (from a header or gRPC metadata) was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TenantError {
    /// Bytes outside ASCII.
    #[error("tenant is not printable ASCII")]
    NotAscii,
    /// Empty, too long, or with spaces or control characters.
    #[error("invalid tenant {0:?}: expected 1 to 256 printable characters without spaces")]
    Invalid(String),
}

/// Checks a tenant name as sent in a header: 1 to 256 printable ASCII
/// characters without spaces. One rule for every protocol.
pub fn check_tenant(value: &[u8]) -> Result<std::sync::Arc<str>, TenantError> {
    let tenant = std::str::from_utf8(value)
        .ok()
        .filter(|text| text.is_ascii())
        .ok_or(TenantError::NotAscii)?;
    if tenant.is_empty() || tenant.len() > 256 || !tenant.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TenantError::Invalid(tenant.to_string()));
    }
    Ok(std::sync::Arc::from(tenant))
}

/// A trace or span ID that is not W3C-shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidTrace;

/// Reads W3C trace and span IDs: empty, or 16 / 8 bytes not all zero. A span
/// without a trace is refused too: it links to nothing.
pub fn trace_context(trace_id: &[u8], span_id: &[u8]) -> Result<Option<TraceContext>, InvalidTrace> {
    if trace_id.is_empty() {
        return if span_id.is_empty() {
            Ok(None)
        } else {
            Err(InvalidTrace)
        };
    }
    let trace_id: [u8; 16] = trace_id.try_into().map_err(|_| InvalidTrace)?;
    if trace_id == [0; 16] {
        return Err(InvalidTrace);
    }
    let span_id: [u8; 8] = match span_id.len() {
        0 => [0; 8],
        8 if span_id.iter().any(|byte| *byte != 0) => span_id.try_into().map_err(|_| InvalidTrace)?,
        _ => return Err(InvalidTrace),
    };
    Ok(Some(TraceContext { trace_id, span_id }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(name: &str, value: &str) -> v1::Label {
        v1::Label {
            name: name.into(),
            value: value.into(),
        }
    }

    fn series(labels: Vec<v1::Label>, kind: v1::Kind) -> v1::Series {
        v1::Series {
            labels,
            kind: kind as i32,
            points: vec![v1::Point {
                value: 1.0,
                timestamp_ms: None,
                trace_id: vec![].into(),
                span_id: vec![].into(),
            }],
        }
    }

    #[test]
    fn refuses_each_broken_series_with_its_reason() {
        let limits = IngestLimits {
            max_labels_per_series: 3,
            max_label_value_bytes: 8,
            ..IngestLimits::default()
        };
        let huge = "x".repeat(9);
        let cases: Vec<(v1::Series, &str)> = vec![
            (
                series(vec![label("a", "1")], v1::Kind::Gauge),
                "series 0: no metric name",
            ),
            (series(vec![label("__name__", "")], v1::Kind::Gauge), "no metric name"),
            (
                series(vec![label("__name__", "9bad")], v1::Kind::Gauge),
                "invalid metric name \"9bad\"",
            ),
            (
                series(vec![label("__name__", "m"), label("", "v")], v1::Kind::Gauge),
                "invalid label name \"\"",
            ),
            (
                series(vec![label("__name__", "m"), label("__x", "v")], v1::Kind::Gauge),
                "invalid label name \"__x\"",
            ),
            (
                series(
                    vec![label("__name__", "m"), label("a", "1"), label("a", "2")],
                    v1::Kind::Gauge,
                ),
                "duplicate label name \"a\"",
            ),
            (
                series(
                    vec![
                        label("__name__", "m"),
                        label("a", "1"),
                        label("b", "1"),
                        label("c", "1"),
                    ],
                    v1::Kind::Gauge,
                ),
                "4 labels, limit is 3",
            ),
            (
                series(vec![label("__name__", "m"), label("a", &huge)], v1::Kind::Gauge),
                "label \"a\" has a value of 9 bytes, limit is 8",
            ),
            (
                series(
                    vec![label("__name__", "m"), label("quantile", "0.5")],
                    v1::Kind::Distribution,
                ),
                "reserved",
            ),
            (
                series(vec![label("__name__", "m")], v1::Kind::Unspecified),
                "kind 0 is not one of",
            ),
        ];
        for (wire, needle) in cases {
            let mut outcome = Outcome::default();
            let error = validate_series(0, wire, &limits, &mut outcome).unwrap_err().to_string();
            assert!(error.contains(needle), "{error:?} lacks {needle:?}");
        }
    }

    #[test]
    fn keeps_sorted_labels_and_leaves_empty_values_out_before_duplicates() {
        let limits = IngestLimits::default();
        // "a" twice, once empty: the empty one means "no label", so no duplicate.
        let wire = series(
            vec![
                label("z", "last"),
                label("a", ""),
                label("__name__", "m"),
                label("a", "1"),
            ],
            v1::Kind::Gauge,
        );
        let batch = validate_series(0, wire, &limits, &mut Outcome::default()).unwrap();
        assert_eq!(
            batch.labels,
            Labels::from_pairs([("__name__", "m"), ("a", "1"), ("z", "last")])
        );
        assert_eq!(batch.labels.get("a"), Some("1"));
    }

    #[test]
    fn drops_bad_points_alone_and_counts_them() {
        let mut wire = series(vec![label("__name__", "m"), label("empty", "")], v1::Kind::Distribution);
        let good = v1::Point {
            value: 2.0,
            timestamp_ms: Some(5),
            trace_id: vec![1; 16].into(),
            span_id: vec![2; 8].into(),
        };
        wire.points = vec![
            good.clone(),
            v1::Point {
                value: f64::NAN,
                ..good.clone()
            },
            v1::Point {
                value: f64::INFINITY,
                ..good.clone()
            },
            v1::Point {
                trace_id: vec![1; 15].into(),
                ..good.clone()
            },
            v1::Point {
                trace_id: vec![0; 16].into(),
                ..good.clone()
            },
            v1::Point {
                span_id: vec![1; 7].into(),
                ..good.clone()
            },
            v1::Point {
                trace_id: vec![].into(),
                ..good.clone()
            },
            v1::Point {
                span_id: vec![].into(),
                ..good.clone()
            },
        ];
        let mut outcome = Outcome::default();
        let batch = validate_series(0, wire, &IngestLimits::default(), &mut outcome).unwrap();
        assert_eq!(batch.labels, Labels::from_pairs([("__name__", "m")]));
        assert_eq!(batch.points.len(), 2);
        assert_eq!(batch.points[0].trace.unwrap().trace_id, [1; 16]);
        assert_eq!(batch.points[1].trace.unwrap().span_id, [0; 8]);
        assert_eq!(outcome.rejected_for(DropReason::InvalidValue), 2);
        assert_eq!(outcome.rejected_for(DropReason::InvalidTraceId), 4);
    }
}
