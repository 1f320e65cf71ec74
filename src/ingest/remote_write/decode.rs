//! Decoding of a Prometheus remote write 1.0 request into an `IngestBatch`:
//! the snappy block and protobuf with bounded memory, the spec's label rules
//! plus tailfold's limits, kind classification, native histograms, exemplars.

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message;
use thiserror::Error;

use crate::api::prometheus as wire;
use crate::config::IngestLimits;
use crate::ingest::validate::{trace_context, validate_labels, SeriesError, TenantError};
use crate::model::{
    DropReason, IngestBatch, Kind, NativeHistogram, Outcome, Point, SeriesBatch, TraceContext, METRIC_NAME_LABEL,
};

use super::histogram::{decode_histogram, HistogramError};

use wire::metric_metadata::MetricType;

/// The NaN Prometheus sends as a stale marker ("this series has ended").
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Problems quoted in a 400 response; the rest are only counted.
pub const MAX_ERRORS_REPORTED: usize = 10;

/// Series name suffixes of classic histograms and summaries: running totals.
const CLASSIC_PARTS: [&str; 3] = ["_bucket", "_count", "_sum"];

/// Why a request, a series or a histogram was refused. Messages name the
/// series by its index in the request (and its metric name once known).
#[derive(Debug, Error, PartialEq)]
pub enum RemoteWriteError {
    /// A `Content-Encoding` other than snappy.
    #[error("unsupported content-encoding {0:?}: only snappy (block format) is accepted")]
    UnsupportedEncoding(String),
    /// A `Content-Type` naming another protobuf message (remote write 2.0).
    #[error("unsupported content-type {0:?}: only remote write 1.0 (prometheus.WriteRequest) is accepted")]
    UnsupportedContentType(String),
    /// The tenant header is malformed.
    #[error("header {header}: {source}")]
    Tenant {
        /// The configured header (`ingest.tenant_header`).
        header: String,
        /// What is wrong with it.
        source: TenantError,
    },
    /// The body could not be read, or is longer than the limit.
    #[error("cannot read the request body (at most {limit} bytes, ingest.max_request_bytes): {message}")]
    Body {
        /// The limit.
        limit: usize,
        /// What went wrong.
        message: String,
    },
    /// Not a snappy block.
    #[error("invalid snappy block: {0}")]
    Snappy(String),
    /// The block declares a decompressed length over the limit.
    #[error("snappy block decompresses to {length} bytes, limit is {limit} (ingest.max_decompressed_bytes)")]
    TooLarge {
        /// Length declared by the block header.
        length: usize,
        /// The limit.
        limit: usize,
    },
    /// Not a protobuf `prometheus.WriteRequest`.
    #[error("invalid protobuf prometheus.WriteRequest: {0}")]
    Protobuf(String),
    /// More samples and histograms than `ingest.max_points_per_request`.
    #[error("request has {points} samples and histograms, limit is {limit} (ingest.max_points_per_request)")]
    TooManyPoints {
        /// Samples and histograms sent.
        points: u64,
        /// The limit.
        limit: usize,
    },
    /// Label names out of order (the spec requires them sorted).
    #[error("series {index}: labels are not sorted by name: {name:?} comes after {previous:?}")]
    Unsorted {
        /// Position in the request.
        index: usize,
        /// The label before.
        previous: String,
        /// The label out of place.
        name: String,
    },
    /// A label with an empty name.
    #[error("series {index}: label {position} has an empty name")]
    EmptyLabelName {
        /// Position in the request.
        index: usize,
        /// Position of the label in the series.
        position: usize,
    },
    /// The same label name twice.
    #[error("series {index}: duplicate label name {name:?}")]
    DuplicateLabel {
        /// Position in the request.
        index: usize,
        /// The repeated name.
        name: String,
    },
    /// Broken by tailfold's own label rules and limits (shared with gRPC).
    #[error(transparent)]
    Series(#[from] SeriesError),
    /// Float samples and native histograms in one series.
    #[error("series {index} ({name}): has both samples and histograms; send them as separate series")]
    Mixed {
        /// Position in the request.
        index: usize,
        /// Metric name.
        name: String,
    },
    /// A native histogram that cannot be read.
    #[error("series {index} ({name}): histogram at {timestamp_ms}: {problem}")]
    Histogram {
        /// Position in the request.
        index: usize,
        /// Metric name.
        name: String,
        /// The histogram's timestamp.
        timestamp_ms: i64,
        /// What is wrong with it.
        problem: HistogramError,
    },
}

/// Decompresses a snappy block. The length the block declares is checked
/// against `limit` before anything is allocated, so a small body claiming a
/// huge size (a snappy bomb) costs nothing.
pub fn decompress(body: &[u8], limit: usize) -> Result<Vec<u8>, RemoteWriteError> {
    let length = snap::raw::decompress_len(body).map_err(|error| RemoteWriteError::Snappy(error.to_string()))?;
    if length > limit {
        return Err(RemoteWriteError::TooLarge { length, limit });
    }
    snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|error| RemoteWriteError::Snappy(error.to_string()))
}

/// Decodes the protobuf `WriteRequest`.
pub fn parse(bytes: &[u8]) -> Result<wire::WriteRequest, RemoteWriteError> {
    wire::WriteRequest::decode(bytes).map_err(|error| RemoteWriteError::Protobuf(error.to_string()))
}

/// Samples plus histograms in a request: what `ingest.max_points_per_request` bounds.
pub fn points_in(request: &wire::WriteRequest) -> u64 {
    request
        .timeseries
        .iter()
        .map(|series| (series.samples.len() + series.histograms.len()) as u64)
        .sum()
}

/// What one request decoded to: the batch for the engine and what the adapter refused.
#[derive(Debug)]
pub struct Decoded {
    /// Valid series with their valid samples and histograms.
    pub batch: IngestBatch,
    /// Points the adapter refused, by reason (the engine adds its own tally).
    pub outcome: Outcome,
    /// Stale markers skipped.
    pub stale_markers: u64,
    /// Series in the request.
    pub series: usize,
    /// Series refused whole.
    pub refused_series: usize,
    /// The first problems, for the response.
    pub errors: Vec<RemoteWriteError>,
    /// All problems (series and histograms refused); non-zero means HTTP 400.
    pub error_count: usize,
}

impl Decoded {
    fn refuse(&mut self, error: RemoteWriteError) {
        self.error_count += 1;
        if self.errors.len() < MAX_ERRORS_REPORTED {
            self.errors.push(error);
        }
    }

    /// True when the request had series and every one was refused.
    pub fn nothing_valid(&self) -> bool {
        self.series > 0 && self.refused_series == self.series
    }

    /// The problems as one line: the first few, then how many more.
    pub fn error_text(&self) -> String {
        let shown: Vec<String> = self.errors.iter().map(ToString::to_string).collect();
        let mut text = shown.join("; ");
        if self.error_count > shown.len() {
            text.push_str(&format!(" (and {} more)", self.error_count - shown.len()));
        }
        text
    }
}

/// Metric type per family name, from the request's metadata.
pub type Metadata<'a> = HashMap<&'a str, MetricType>;

/// Turns a request into a batch for `tenant`. Bad series are refused alone,
/// bad histograms alone, non-finite samples alone; all of it is counted.
pub fn decode_request(request: wire::WriteRequest, tenant: Arc<str>, limits: &IngestLimits) -> Decoded {
    let wire::WriteRequest { timeseries, metadata } = request;
    let metadata: Metadata = metadata
        .iter()
        .filter_map(|entry| {
            let kind = MetricType::try_from(entry.r#type).ok()?;
            (kind != MetricType::Unknown).then_some((entry.metric_family_name.as_str(), kind))
        })
        .collect();
    let mut decoded = Decoded {
        batch: IngestBatch {
            tenant,
            series: Vec::with_capacity(timeseries.len()),
        },
        outcome: Outcome::default(),
        stale_markers: 0,
        series: timeseries.len(),
        refused_series: 0,
        errors: Vec::new(),
        error_count: 0,
    };
    for (index, series) in timeseries.into_iter().enumerate() {
        let points = (series.samples.len() + series.histograms.len()) as u64;
        if let Err(error) = decode_series(index, series, &metadata, limits, &mut decoded) {
            decoded.refused_series += 1;
            decoded.outcome.reject(DropReason::InvalidSeries, points);
            decoded.refuse(error);
        }
    }
    decoded
}

/// Checks what the spec asks of a label set and tailfold's validation does
/// not: names sorted, none empty, none repeated (the order matters because a
/// sender that does not sort may not deduplicate either).
pub fn check_label_order(index: usize, labels: &[wire::Label]) -> Result<(), RemoteWriteError> {
    for (position, label) in labels.iter().enumerate() {
        if label.name.is_empty() {
            return Err(RemoteWriteError::EmptyLabelName { index, position });
        }
        let Some(previous) = position.checked_sub(1).map(|before| &labels[before]) else {
            continue;
        };
        match previous.name.cmp(&label.name) {
            std::cmp::Ordering::Less => {}
            std::cmp::Ordering::Equal => {
                return Err(RemoteWriteError::DuplicateLabel {
                    index,
                    name: label.name.clone(),
                })
            }
            std::cmp::Ordering::Greater => {
                return Err(RemoteWriteError::Unsorted {
                    index,
                    previous: previous.name.clone(),
                    name: label.name.clone(),
                })
            }
        }
    }
    Ok(())
}

/// Whether a float series is a running total (a cumulative counter) rather
/// than a gauge. The family's metadata decides when the request carries it:
/// COUNTER, and the `_bucket` / `_count` / `_sum` parts of a HISTOGRAM or
/// SUMMARY, are running totals; everything else (GAUGE, GAUGEHISTOGRAM,
/// INFO, STATESET, summary quantiles) is a gauge. Without metadata the name
/// decides: `_total`, `_bucket`, `_count` and `_sum` are running totals.
pub fn is_running_total(name: &str, metadata: &Metadata) -> bool {
    let classic_part = CLASSIC_PARTS.iter().any(|part| name.ends_with(part));
    match family_type(name, metadata) {
        Some(MetricType::Counter) => true,
        Some(MetricType::Histogram | MetricType::Summary) => classic_part,
        Some(_) => false,
        None => classic_part || name.ends_with("_total"),
    }
}

/// The metadata of `name`'s family: looked up as is (Prometheus text format
/// names counter families `x_total`), then without a type suffix (OpenMetrics).
fn family_type(name: &str, metadata: &Metadata) -> Option<MetricType> {
    if let Some(kind) = metadata.get(name) {
        return Some(*kind);
    }
    ["_total", "_bucket", "_count", "_sum"]
        .iter()
        .filter_map(|suffix| name.strip_suffix(suffix))
        .find_map(|family| metadata.get(family).copied())
}

/// Reads an exemplar's trace from its `trace_id` (32 hex digits) and optional
/// `span_id` (16 hex digits) labels. `None` when absent or malformed:
/// exemplars are optional links, so a bad one is ignored, not an error.
pub fn exemplar_trace(labels: &[wire::Label]) -> Option<TraceContext> {
    let get = |name: &str| {
        labels
            .iter()
            .find(|label| label.name == name)
            .map(|label| label.value.as_str())
    };
    let trace_hex = get("trace_id").filter(|hex| hex.len() == 32)?;
    let trace_id = hex::decode(trace_hex).ok()?;
    let span_id = match get("span_id") {
        None | Some("") => Vec::new(),
        Some(hex) if hex.len() == 16 => hex::decode(hex).ok()?,
        Some(_) => return None,
    };
    trace_context(&trace_id, &span_id).ok().flatten()
}

fn decode_series(
    index: usize,
    series: wire::TimeSeries,
    metadata: &Metadata,
    limits: &IngestLimits,
    decoded: &mut Decoded,
) -> Result<(), RemoteWriteError> {
    check_label_order(index, &series.labels)?;
    let name = series
        .labels
        .iter()
        .find(|label| label.name == METRIC_NAME_LABEL)
        .map(|label| label.value.clone())
        .unwrap_or_default();
    let histograms = !series.histograms.is_empty();
    if histograms && !series.samples.is_empty() {
        return Err(RemoteWriteError::Mixed { index, name });
    }
    let (kind, running_total) = if histograms {
        (Kind::Distribution, false)
    } else if is_running_total(&name, metadata) {
        (Kind::Counter, true)
    } else {
        (Kind::Gauge, false)
    };
    let pairs = series.labels.into_iter().map(|label| (label.name, label.value));
    let labels = validate_labels(index, pairs, kind, limits)?;
    let exemplars: Vec<(f64, i64, TraceContext)> = series
        .exemplars
        .iter()
        .filter(|exemplar| exemplar.value.is_finite())
        .filter_map(|exemplar| Some((exemplar.value, exemplar.timestamp, exemplar_trace(&exemplar.labels)?)))
        .collect();

    let batch = if histograms {
        let gauge_histogram = series
            .histograms
            .iter()
            .any(|histogram| histogram.reset_hint == wire::histogram::ResetHint::Gauge as i32);
        let mut decoded_histograms = Vec::with_capacity(series.histograms.len());
        for histogram in &series.histograms {
            if histogram.sum.to_bits() == STALE_NAN_BITS {
                decoded.stale_markers += 1;
                continue;
            }
            match decode_histogram(histogram) {
                Ok(native) => decoded_histograms.push(native),
                Err(problem) => {
                    decoded.outcome.reject(DropReason::InvalidValue, 1);
                    decoded.refuse(RemoteWriteError::Histogram {
                        index,
                        name: name.clone(),
                        timestamp_ms: histogram.timestamp,
                        problem,
                    });
                }
            }
        }
        attach_to_histograms(&mut decoded_histograms, exemplars);
        SeriesBatch {
            labels,
            kind,
            // A gauge histogram is a snapshot; any other is a running total the engine diffs.
            cumulative: !gauge_histogram,
            points: Vec::new(),
            histograms: decoded_histograms,
        }
    } else {
        let mut points = Vec::with_capacity(series.samples.len());
        for sample in &series.samples {
            if sample.value.to_bits() == STALE_NAN_BITS {
                decoded.stale_markers += 1;
            } else if !sample.value.is_finite() {
                // Prometheus can send NaN legitimately (0/0 in a rule): counted, not a 400.
                decoded.outcome.reject(DropReason::InvalidValue, 1);
            } else {
                points.push(Point::new(sample.value, Some(sample.timestamp), None));
            }
        }
        attach_to_points(&mut points, &exemplars);
        SeriesBatch {
            labels,
            kind,
            cumulative: running_total,
            points,
            histograms: Vec::new(),
        }
    };
    if !batch.points.is_empty() || !batch.histograms.is_empty() {
        decoded.batch.series.push(batch);
    }
    Ok(())
}

/// Gives each exemplar's trace to the sample with the same timestamp, if
/// any (a sender attaches an exemplar to the sample it was scraped with).
pub fn attach_to_points(points: &mut [Point], exemplars: &[(f64, i64, TraceContext)]) {
    if exemplars.is_empty() {
        return;
    }
    let mut at: HashMap<i64, usize> = HashMap::with_capacity(points.len());
    for (position, point) in points.iter().enumerate() {
        at.entry(point.timestamp_ms.unwrap_or_default()).or_insert(position);
    }
    for (_, timestamp_ms, trace) in exemplars {
        if let Some(position) = at.get(timestamp_ms) {
            points[*position].trace.get_or_insert(*trace);
        }
    }
}

/// Gives each exemplar to the first histogram at or after its timestamp: the
/// scrape that first counted the traced observation. An exemplar later than
/// every histogram goes to the last one. Histograms are in time order (the
/// spec requires senders to send them so).
pub fn attach_to_histograms(histograms: &mut [NativeHistogram], exemplars: Vec<(f64, i64, TraceContext)>) {
    let Some(last) = histograms.len().checked_sub(1) else {
        return;
    };
    for exemplar in exemplars {
        let position = histograms
            .partition_point(|histogram| histogram.timestamp_ms.unwrap_or_default() < exemplar.1)
            .min(last);
        histograms[position].exemplars.push(exemplar);
    }
}
