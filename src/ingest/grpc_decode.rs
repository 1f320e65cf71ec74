//! Decoding of a gRPC `tailfold.v1.WriteRequest` straight from its bytes into
//! an `IngestBatch`, with memory bounded like remote write's: series and
//! points are counted before anything is allocated, each series' labels
//! before they are read, and what is kept is charged to a [`DecodeBudget`].

use std::mem::size_of;
use std::sync::Arc;

use smallvec::SmallVec;
use thiserror::Error;

use crate::api::v1;
use crate::config::IngestLimits;
use crate::ingest::budget::{DecodeBudget, OverBudget};
use crate::ingest::protowire::{self, fields, WireError};
use crate::ingest::validate::{trace_context, validate_label_refs, InvalidTrace, SeriesError};
use crate::model::{DropReason, IngestBatch, Kind, Outcome, Point, SeriesBatch};

/// Per-series messages returned in a response; the rest are only counted.
pub const MAX_ERRORS_REPORTED: usize = 10;

/// Why a whole request was refused (INVALID_ARGUMENT).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WriteError {
    /// Not a protobuf `tailfold.v1.WriteRequest`.
    #[error("invalid protobuf tailfold.v1.WriteRequest: {0}")]
    Protobuf(#[from] WireError),
    /// More series than `ingest.max_series_per_request` (counted up to one past it).
    #[error("request has more than {limit} series (ingest.max_series_per_request)")]
    TooManySeries {
        /// Series sent.
        series: usize,
        /// The limit.
        limit: usize,
    },
    /// More points than `ingest.max_points_per_request`.
    #[error("request has {points} points, limit is {limit} (ingest.max_points_per_request)")]
    TooManyPoints {
        /// Points sent.
        points: u64,
        /// The limit.
        limit: usize,
    },
    /// Its decoded form would pass the request's memory budget.
    #[error(transparent)]
    OverBudget(#[from] OverBudget),
}

/// What a request decoded to.
#[derive(Debug)]
pub struct WriteDecoded {
    /// The valid series.
    pub batch: IngestBatch,
    /// Points refused while decoding, by reason.
    pub outcome: Outcome,
    /// The first per-series errors.
    pub errors: Vec<String>,
    /// Series refused whole.
    pub invalid_series: usize,
    /// Series in the request.
    pub series: usize,
    /// Points in the request.
    pub points: u64,
}

impl WriteDecoded {
    /// True when the request had series and every one was refused.
    pub fn nothing_valid(&self) -> bool {
        self.series > 0 && self.invalid_series == self.series
    }
}

/// Counts of a series' repeated fields, taken before any is decoded.
#[derive(Default)]
struct SeriesShape {
    labels: usize,
    points: usize,
}

fn series_shape(series: &[u8]) -> Result<SeriesShape, WireError> {
    let mut shape = SeriesShape::default();
    for field in fields(series) {
        match field? {
            (1, value) => {
                value.bytes(1)?;
                shape.labels += 1;
            }
            (3, value) => {
                value.bytes(3)?;
                shape.points += 1;
            }
            _ => {}
        }
    }
    Ok(shape)
}

/// Decodes a request for `tenant`: bad series are refused alone (with the
/// first few reasons), bad points alone; the whole request only when it is
/// not protobuf, over a count limit or over its memory budget.
pub fn decode_write(bytes: &[u8], tenant: Arc<str>, limits: &IngestLimits) -> Result<WriteDecoded, WriteError> {
    let (mut series, mut points, mut with_points) = (0usize, 0u64, 0usize);
    for field in fields(bytes) {
        if let (1, value) = field? {
            series += 1;
            if series > limits.max_series_per_request {
                // Refused at the first series over the limit: a flood of them costs no more work.
                return Err(WriteError::TooManySeries {
                    series,
                    limit: limits.max_series_per_request,
                });
            }
            let shape = series_shape(value.bytes(1)?)?;
            points += shape.points as u64;
            with_points += usize::from(shape.points > 0);
        }
    }
    if points > limits.max_points_per_request as u64 {
        return Err(WriteError::TooManyPoints {
            points,
            limit: limits.max_points_per_request,
        });
    }
    let mut budget = DecodeBudget::for_request(bytes.len());
    budget.charge(with_points.saturating_mul(size_of::<SeriesBatch>()))?;
    let mut decoded = WriteDecoded {
        batch: IngestBatch {
            tenant,
            series: Vec::with_capacity(with_points),
        },
        outcome: Outcome::default(),
        errors: Vec::new(),
        invalid_series: 0,
        series,
        points,
    };
    let mut index = 0;
    for field in fields(bytes) {
        let (1, value) = field? else {
            continue;
        };
        let wire = value.bytes(1)?;
        let shape = series_shape(wire)?;
        match decode_series(index, wire, &shape, limits, &mut decoded.outcome, &mut budget)? {
            Ok(Some(valid)) => decoded.batch.series.push(valid),
            Ok(None) => {}
            Err(error) => {
                decoded.invalid_series += 1;
                decoded.outcome.reject(DropReason::InvalidSeries, shape.points as u64);
                if decoded.errors.len() < MAX_ERRORS_REPORTED {
                    decoded.errors.push(error.to_string());
                }
            }
        }
        index += 1;
    }
    Ok(decoded)
}

fn kind_of(kind: u64) -> Option<Kind> {
    match v1::Kind::try_from(i32::try_from(kind).ok()?).ok()? {
        v1::Kind::Counter => Some(Kind::Counter),
        v1::Kind::Gauge => Some(Kind::Gauge),
        v1::Kind::Distribution => Some(Kind::Distribution),
        v1::Kind::Unspecified => None,
    }
}

/// One series: `Ok(Err(_))` refuses it alone; `Ok(Ok(None))` when it has no point.
fn decode_series(
    index: usize,
    series: &[u8],
    shape: &SeriesShape,
    limits: &IngestLimits,
    outcome: &mut Outcome,
    budget: &mut DecodeBudget,
) -> Result<Result<Option<SeriesBatch>, SeriesError>, WriteError> {
    let mut kind = 0u64;
    for field in fields(series) {
        if let (2, value) = field? {
            kind = value.varint(2)?;
        }
    }
    let Some(kind) = kind_of(kind) else {
        return Ok(Err(SeriesError::InvalidKind {
            index,
            kind: kind as i32,
        }));
    };
    // Counted before one label is read: a series of millions of labels costs nothing.
    if shape.labels > limits.max_labels_per_series {
        return Ok(Err(SeriesError::TooManyLabels {
            index,
            count: shape.labels,
            limit: limits.max_labels_per_series,
        }));
    }
    let mut pairs: SmallVec<[(&str, &str); 16]> = SmallVec::with_capacity(shape.labels);
    for field in fields(series) {
        if let (1, value) = field? {
            pairs.push(protowire::label(value.bytes(1)?)?);
        }
    }
    let labels = match validate_label_refs(index, &mut pairs, kind, limits) {
        Ok(labels) => labels,
        Err(error) => return Ok(Err(error)),
    };
    if shape.points == 0 {
        return Ok(Ok(None));
    }
    budget.charge(labels.heap_bytes())?;
    budget.charge(shape.points.saturating_mul(size_of::<Point>()))?;
    let mut points = Vec::with_capacity(shape.points);
    for field in fields(series) {
        let (3, value) = field? else {
            continue;
        };
        let (mut number, mut timestamp_ms, mut trace_id, mut span_id) = (0.0, None, &[][..], &[][..]);
        for field in fields(value.bytes(3)?) {
            match field? {
                (1, field) => number = field.double(1)?,
                (2, field) => timestamp_ms = Some(field.varint(2)? as i64),
                (3, field) => trace_id = field.bytes(3)?,
                (4, field) => span_id = field.bytes(4)?,
                _ => {}
            }
        }
        if !f64::is_finite(number) {
            outcome.reject(DropReason::InvalidValue, 1);
            continue;
        }
        match trace_context(trace_id, span_id) {
            Ok(trace) => points.push(Point::new(number, timestamp_ms, trace)),
            Err(InvalidTrace) => outcome.reject(DropReason::InvalidTraceId, 1),
        }
    }
    Ok(Ok(Some(SeriesBatch::new(labels, kind, points))))
}
