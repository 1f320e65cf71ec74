//! Decoding of a Prometheus remote write 1.0 request into an `IngestBatch`:
//! the snappy block and protobuf with bounded memory, the spec's label rules
//! plus tailfold's limits, kind classification, native histograms, exemplars.

use std::collections::HashMap;
use std::mem::size_of;
use std::sync::Arc;

use prost::Message;
use smallvec::SmallVec;
use thiserror::Error;

use crate::api::prometheus as wire;
use crate::config::IngestLimits;
use crate::ingest::budget::{DecodeBudget, OverBudget};
use crate::ingest::protowire::{self, fields, WireError};
use crate::ingest::validate::{cut, trace_context, validate_label_refs, SeriesError, TenantError};
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
    /// More series than `ingest.max_series_per_request` (counted up to one past it).
    #[error("request has more than {limit} series (ingest.max_series_per_request)")]
    TooManySeries {
        /// Series sent.
        series: usize,
        /// The limit.
        limit: usize,
    },
    /// Its decoded form would pass the request's memory budget.
    #[error(transparent)]
    OverBudget(#[from] OverBudget),
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

/// What the shape pass counted, before anything is allocated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    /// Series in the request.
    pub series: usize,
    /// Series with at least one sample or histogram (the only ones kept).
    pub series_with_points: usize,
    /// Samples plus histograms: what `ingest.max_points_per_request` bounds.
    pub points: u64,
    /// Metadata entries.
    pub metadata: usize,
}

fn protobuf(error: WireError) -> RemoteWriteError {
    RemoteWriteError::Protobuf(error.to_string())
}

/// Walks the request without allocating: checks it is a well-formed
/// `prometheus.WriteRequest` down to its series' fields, counts series and
/// points, and refuses it whole when either is over its limit.
pub fn scan(bytes: &[u8], limits: &IngestLimits) -> Result<Shape, RemoteWriteError> {
    let mut shape = Shape::default();
    for field in fields(bytes) {
        let (number, value) = field.map_err(protobuf)?;
        match number {
            1 => {
                shape.series += 1;
                if shape.series > limits.max_series_per_request {
                    // Refused at the first series over the limit: a flood of them costs no more work.
                    return Err(RemoteWriteError::TooManySeries {
                        series: shape.series,
                        limit: limits.max_series_per_request,
                    });
                }
                let mut points = 0u64;
                for field in fields(value.bytes(1).map_err(protobuf)?) {
                    let (number, value) = field.map_err(protobuf)?;
                    if (1..=4).contains(&number) {
                        value.bytes(number).map_err(protobuf)?;
                    }
                    if number == 2 || number == 4 {
                        points += 1;
                    }
                }
                shape.points += points;
                shape.series_with_points += usize::from(points > 0);
            }
            3 => {
                value.bytes(3).map_err(protobuf)?;
                shape.metadata += 1;
            }
            _ => {}
        }
    }
    if shape.points > limits.max_points_per_request as u64 {
        return Err(RemoteWriteError::TooManyPoints {
            points: shape.points,
            limit: limits.max_points_per_request,
        });
    }
    Ok(shape)
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

/// Metric type per family name, from the request's metadata (names borrowed from the body).
pub type Metadata<'a> = HashMap<&'a str, MetricType>;

/// A label as read from the body: `(name, value)`, borrowed.
pub type LabelRef<'a> = (&'a str, &'a str);

/// An exemplar's traced sample: value, timestamp, trace.
type Exemplar = (f64, i64, TraceContext);

/// Decoded bytes charged per metadata entry kept (hash table slot and control byte, at most 7/8 full).
const METADATA_ENTRY_BYTES: usize = 40;

/// Decodes a decompressed body for `tenant` straight from its bytes, with
/// memory bounded by [`DecodeBudget`]: nothing is allocated for a series
/// before its labels are counted, and what is kept is charged first. Bad
/// series are refused alone, bad histograms alone, non-finite samples alone;
/// all of it is counted. The request as a whole is refused (`Err`) when it
/// is not protobuf, is over a count limit, or would pass its budget.
pub fn decode_body(bytes: &[u8], tenant: Arc<str>, limits: &IngestLimits) -> Result<Decoded, RemoteWriteError> {
    let shape = scan(bytes, limits)?;
    let mut budget = DecodeBudget::for_request(bytes.len());
    budget.charge(shape.metadata.saturating_mul(METADATA_ENTRY_BYTES))?;
    let mut metadata: Metadata = HashMap::with_capacity(shape.metadata);
    budget.charge(shape.series_with_points.saturating_mul(size_of::<SeriesBatch>()))?;
    let mut decoded = Decoded {
        batch: IngestBatch {
            tenant,
            series: Vec::with_capacity(shape.series_with_points),
        },
        outcome: Outcome::default(),
        stale_markers: 0,
        series: shape.series,
        refused_series: 0,
        errors: Vec::new(),
        error_count: 0,
    };
    for field in fields(bytes) {
        let (number, value) = field.map_err(protobuf)?;
        if number == 3 {
            if let Some((name, kind)) = metadata_entry(value.bytes(3).map_err(protobuf)?)? {
                metadata.insert(name, kind);
            }
        }
    }
    let mut index = 0;
    for field in fields(bytes) {
        let (number, value) = field.map_err(protobuf)?;
        if number != 1 {
            continue;
        }
        let series = value.bytes(1).map_err(protobuf)?;
        match decode_series(index, series, &metadata, limits, &mut decoded, &mut budget) {
            Ok(()) => {}
            Err(error @ (RemoteWriteError::Protobuf(_) | RemoteWriteError::OverBudget(_))) => return Err(error),
            Err(error) => {
                let points = fields(series).filter(|field| matches!(field, Ok((2 | 4, _)))).count() as u64;
                decoded.refused_series += 1;
                decoded.outcome.reject(DropReason::InvalidSeries, points);
                decoded.refuse(error);
            }
        }
        index += 1;
    }
    Ok(decoded)
}

/// The family name and type of one `MetricMetadata`; `None` for UNKNOWN or no name.
fn metadata_entry(entry: &[u8]) -> Result<Option<(&str, MetricType)>, RemoteWriteError> {
    let (mut kind, mut name) = (0u64, "");
    for field in fields(entry) {
        match field.map_err(protobuf)? {
            (1, value) => kind = value.varint(1).map_err(protobuf)?,
            (2, value) => name = value.str(2).map_err(protobuf)?,
            _ => {}
        }
    }
    let kind = i32::try_from(kind)
        .ok()
        .and_then(|kind| MetricType::try_from(kind).ok());
    Ok(kind
        .filter(|kind| *kind != MetricType::Unknown && !name.is_empty())
        .map(|kind| (name, kind)))
}

fn label_of(label: &[u8]) -> Result<LabelRef<'_>, RemoteWriteError> {
    protowire::label(label).map_err(protobuf)
}

/// Checks what the spec asks of a label set and tailfold's validation does
/// not: names sorted, none empty, none repeated (the order matters because a
/// sender that does not sort may not deduplicate either).
pub fn check_label_order(index: usize, labels: &[LabelRef]) -> Result<(), RemoteWriteError> {
    for (position, (name, _)) in labels.iter().enumerate() {
        if name.is_empty() {
            return Err(RemoteWriteError::EmptyLabelName { index, position });
        }
        let Some((previous, _)) = position.checked_sub(1).map(|before| labels[before]) else {
            continue;
        };
        match previous.cmp(name) {
            std::cmp::Ordering::Less => {}
            std::cmp::Ordering::Equal => return Err(RemoteWriteError::DuplicateLabel { index, name: cut(name) }),
            std::cmp::Ordering::Greater => {
                return Err(RemoteWriteError::Unsorted {
                    index,
                    previous: cut(previous),
                    name: cut(name),
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
pub fn exemplar_trace(labels: &[LabelRef]) -> Option<TraceContext> {
    let get = |wanted: &str| labels.iter().find(|(name, _)| *name == wanted).map(|(_, value)| *value);
    let trace_hex = get("trace_id").filter(|hex| hex.len() == 32)?;
    let trace_id = hex::decode(trace_hex).ok()?;
    let span_id = match get("span_id") {
        None | Some("") => Vec::new(),
        Some(hex) if hex.len() == 16 => hex::decode(hex).ok()?,
        Some(_) => return None,
    };
    trace_context(&trace_id, &span_id).ok().flatten()
}

/// One `Exemplar`: its traced sample, or `None` when it has no usable trace
/// or a non-finite value. Its labels are looked at in place, never copied.
fn exemplar_of(exemplar: &[u8]) -> Result<Option<Exemplar>, RemoteWriteError> {
    let (mut value, mut timestamp) = (0.0, 0i64);
    let mut trace: SmallVec<[LabelRef; 2]> = SmallVec::new();
    for field in fields(exemplar) {
        match field.map_err(protobuf)? {
            (1, field) => {
                let label = label_of(field.bytes(1).map_err(protobuf)?)?;
                // Only these two are read; keeping no others bounds this list.
                if (label.0 == "trace_id" || label.0 == "span_id") && trace.len() < 2 {
                    trace.push(label);
                }
            }
            (2, field) => value = field.double(2).map_err(protobuf)?,
            (3, field) => timestamp = field.varint(3).map_err(protobuf)? as i64,
            _ => {}
        }
    }
    if !f64::is_finite(value) {
        return Ok(None);
    }
    Ok(exemplar_trace(&trace).map(|trace| (value, timestamp, trace)))
}

/// One `Sample`: value and timestamp.
fn sample_of(sample: &[u8]) -> Result<(f64, i64), RemoteWriteError> {
    let (mut value, mut timestamp) = (0.0, 0i64);
    for field in fields(sample) {
        match field.map_err(protobuf)? {
            (1, field) => value = field.double(1).map_err(protobuf)?,
            (2, field) => timestamp = field.varint(2).map_err(protobuf)? as i64,
            _ => {}
        }
    }
    Ok((value, timestamp))
}

/// Counts of a series' repeated fields, taken before any is decoded.
#[derive(Default)]
struct SeriesShape {
    labels: usize,
    samples: usize,
    exemplars: usize,
    histograms: usize,
}

fn series_shape(series: &[u8]) -> Result<SeriesShape, RemoteWriteError> {
    let mut shape = SeriesShape::default();
    for field in fields(series) {
        match field.map_err(protobuf)?.0 {
            1 => shape.labels += 1,
            2 => shape.samples += 1,
            3 => shape.exemplars += 1,
            4 => shape.histograms += 1,
            _ => {}
        }
    }
    Ok(shape)
}

fn decode_series(
    index: usize,
    series: &[u8],
    metadata: &Metadata,
    limits: &IngestLimits,
    decoded: &mut Decoded,
    budget: &mut DecodeBudget,
) -> Result<(), RemoteWriteError> {
    let shape = series_shape(series)?;
    // Counted before one label is read: a series of millions of labels costs nothing.
    if shape.labels > limits.max_labels_per_series {
        return Err(SeriesError::TooManyLabels {
            index,
            count: shape.labels,
            limit: limits.max_labels_per_series,
        }
        .into());
    }
    if shape.labels == 0 {
        return Err(SeriesError::MissingName { index }.into());
    }
    let mut pairs: SmallVec<[LabelRef; 16]> = SmallVec::with_capacity(shape.labels);
    for field in fields(series) {
        if let (1, value) = field.map_err(protobuf)? {
            pairs.push(label_of(value.bytes(1).map_err(protobuf)?)?);
        }
    }
    check_label_order(index, &pairs)?;
    let name = pairs
        .iter()
        .find(|(name, _)| *name == METRIC_NAME_LABEL)
        .map(|(_, value)| *value)
        .unwrap_or_default();
    let histograms = shape.histograms > 0;
    if histograms && shape.samples > 0 {
        return Err(RemoteWriteError::Mixed { index, name: cut(name) });
    }
    let (kind, running_total) = if histograms {
        (Kind::Distribution, false)
    } else if is_running_total(name, metadata) {
        (Kind::Counter, true)
    } else {
        (Kind::Gauge, false)
    };
    let labels = validate_label_refs(index, &mut pairs, kind, limits)?;
    if shape.samples == 0 && shape.histograms == 0 {
        return Ok(());
    }
    budget.charge(labels.heap_bytes())?;
    budget.charge(shape.exemplars.saturating_mul(size_of::<Exemplar>()))?;
    let mut exemplars: Vec<Exemplar> = Vec::with_capacity(shape.exemplars);
    for field in fields(series) {
        if let (3, value) = field.map_err(protobuf)? {
            exemplars.extend(exemplar_of(value.bytes(3).map_err(protobuf)?)?);
        }
    }

    let batch = if histograms {
        decode_histograms(
            index,
            name,
            series,
            shape.histograms,
            labels,
            exemplars,
            decoded,
            budget,
        )?
    } else {
        budget.charge(shape.samples.saturating_mul(size_of::<Point>()))?;
        let mut points = Vec::with_capacity(shape.samples);
        for field in fields(series) {
            let (2, value) = field.map_err(protobuf)? else {
                continue;
            };
            let (value, timestamp) = sample_of(value.bytes(2).map_err(protobuf)?)?;
            if value.to_bits() == STALE_NAN_BITS {
                decoded.stale_markers += 1;
            } else if !value.is_finite() {
                // Prometheus can send NaN legitimately (0/0 in a rule): counted, not a 400.
                decoded.outcome.reject(DropReason::InvalidValue, 1);
            } else {
                points.push(Point::new(value, Some(timestamp), None));
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

/// The native histograms of a distribution series, each decoded on its own
/// after its worst-case size (every element one wire byte, eight decoded)
/// is checked against the budget, and charged once expanded.
#[allow(clippy::too_many_arguments)]
fn decode_histograms(
    index: usize,
    name: &str,
    series: &[u8],
    count: usize,
    labels: crate::model::Labels,
    exemplars: Vec<Exemplar>,
    decoded: &mut Decoded,
    budget: &mut DecodeBudget,
) -> Result<SeriesBatch, RemoteWriteError> {
    budget.charge(count.saturating_mul(size_of::<NativeHistogram>()))?;
    let mut gauge_histogram = false;
    let mut histograms = Vec::with_capacity(count);
    for field in fields(series) {
        let (4, value) = field.map_err(protobuf)? else {
            continue;
        };
        let bytes = value.bytes(4).map_err(protobuf)?;
        budget.check(size_of::<wire::Histogram>() + bytes.len().saturating_mul(8))?;
        let histogram =
            wire::Histogram::decode(bytes).map_err(|error| RemoteWriteError::Protobuf(error.to_string()))?;
        gauge_histogram |= histogram.reset_hint == wire::histogram::ResetHint::Gauge as i32;
        if histogram.sum.to_bits() == STALE_NAN_BITS {
            decoded.stale_markers += 1;
            continue;
        }
        match decode_histogram(&histogram) {
            Ok(native) => {
                budget.charge((native.positive.len() + native.negative.len()) * size_of::<(i32, u64)>())?;
                histograms.push(native);
            }
            Err(problem) => {
                decoded.outcome.reject(DropReason::InvalidValue, 1);
                decoded.refuse(RemoteWriteError::Histogram {
                    index,
                    name: cut(name),
                    timestamp_ms: histogram.timestamp,
                    problem,
                });
            }
        }
    }
    attach_to_histograms(&mut histograms, exemplars);
    Ok(SeriesBatch {
        labels,
        kind: Kind::Distribution,
        // A gauge histogram is a snapshot; any other is a running total the engine diffs.
        cumulative: !gauge_histogram,
        points: Vec::new(),
        histograms,
    })
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
