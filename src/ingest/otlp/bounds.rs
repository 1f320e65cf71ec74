//! The memory bound of OTLP decoding. OTLP requests are decoded whole by
//! prost (their tree of resources, scopes, metrics, points and attributes),
//! so before that the body is walked once without allocating and the size
//! of the tree prost would build (plus the series ingest builds from it) is
//! estimated from the layouts below; a request whose estimate passes its
//! budget is refused before anything is decoded.

use std::mem::size_of;

use thiserror::Error;

use crate::api::otlp::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use crate::api::otlp::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use crate::api::otlp::common::v1::{AnyValue, EntityRef, KeyValue};
use crate::api::otlp::metrics::v1::{
    exponential_histogram_data_point::Buckets, summary_data_point::ValueAtQuantile, Exemplar,
    ExponentialHistogramDataPoint, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    SummaryDataPoint,
};
use crate::api::otlp::trace::v1::{span, ResourceSpans, ScopeSpans, Span};
use crate::ingest::budget::{DecodeBudget, OverBudget};
use crate::ingest::protowire::{fields, packed_varints, Value, WireError};
use crate::model::{Point, SeriesBatch};

/// Estimated decoded bytes an OTLP request may take per byte of its body.
/// Higher than remote write's: prost's tree of key / `AnyValue` attribute
/// pairs is several times the size of their wire form even for ordinary exports.
pub const OTLP_DECODED_BYTES_PER_BYTE: usize = 5;

/// Nesting prost refuses past (its recursion limit).
const MAX_DEPTH: usize = 100;

/// Why a body was refused before decoding.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BoundError {
    /// Not protobuf.
    #[error("invalid protobuf: {0}")]
    Wire(#[from] WireError),
    /// Messages nested deeper than prost decodes.
    #[error("invalid protobuf: messages nested deeper than {MAX_DEPTH}")]
    TooDeep,
    /// The decoded tree would pass the budget.
    #[error(transparent)]
    OverBudget(#[from] OverBudget),
}

/// What one field holds, for the estimate.
#[derive(Clone, Copy)]
enum Field {
    /// A repeated message: each entry is a struct in a `Vec`, plus what it holds.
    Repeated(&'static Layout),
    /// A singular message, stored inline in its parent: only what it holds.
    Inline(&'static Layout),
    /// A string or bytes: its length on the heap.
    Text,
    /// A repeated string: a `String` in a `Vec` plus its length.
    Texts,
    /// A packed list of varints: 8 bytes each decoded, 16 more as model buckets.
    PackedVarints,
    /// A packed list of 8-byte numbers: as long decoded as on the wire.
    PackedFixed,
}

/// A message type as prost decodes it.
pub struct Layout {
    /// The struct's size (what an entry of a repeated field takes in its `Vec`).
    size: usize,
    /// Bytes ingest builds per entry on top (a data point's series and point).
    extra: usize,
    /// Fields that allocate; others cost nothing beyond the struct.
    fields: &'static [(u32, Field)],
}

/// A data point or span becomes one series batch and at least one point.
const OUTPUT: usize = size_of::<SeriesBatch>() + size_of::<Point>();

const fn layout(size: usize, fields: &'static [(u32, Field)]) -> Layout {
    Layout { size, extra: 0, fields }
}

static ANY_VALUE: Layout = layout(
    size_of::<AnyValue>(),
    &[
        (1, Field::Text),
        (5, Field::Inline(&VALUES)),
        (6, Field::Inline(&KEY_VALUES)),
        (7, Field::Text),
    ],
);
static VALUES: Layout = layout(0, &[(1, Field::Repeated(&ANY_VALUE))]);
static KEY_VALUES: Layout = layout(0, &[(1, Field::Repeated(&KEY_VALUE))]);
static KEY_VALUE: Layout = layout(
    size_of::<KeyValue>(),
    &[(1, Field::Text), (2, Field::Inline(&ANY_VALUE))],
);
static ENTITY_REF: Layout = layout(
    size_of::<EntityRef>(),
    &[(1, Field::Text), (2, Field::Text), (3, Field::Texts), (4, Field::Texts)],
);
static RESOURCE: Layout = layout(
    0,
    &[(1, Field::Repeated(&KEY_VALUE)), (3, Field::Repeated(&ENTITY_REF))],
);
static SCOPE: Layout = layout(
    0,
    &[(1, Field::Text), (2, Field::Text), (3, Field::Repeated(&KEY_VALUE))],
);

static EXEMPLAR: Layout = layout(
    size_of::<Exemplar>(),
    &[(7, Field::Repeated(&KEY_VALUE)), (4, Field::Text), (5, Field::Text)],
);
static NUMBER_POINT: Layout = Layout {
    size: size_of::<NumberDataPoint>(),
    extra: OUTPUT,
    fields: &[(7, Field::Repeated(&KEY_VALUE)), (5, Field::Repeated(&EXEMPLAR))],
};
static HISTOGRAM_POINT: Layout = Layout {
    size: size_of::<HistogramDataPoint>(),
    extra: OUTPUT,
    fields: &[
        (9, Field::Repeated(&KEY_VALUE)),
        (6, Field::PackedFixed),
        (7, Field::PackedFixed),
        (8, Field::Repeated(&EXEMPLAR)),
    ],
};
static BUCKETS: Layout = layout(size_of::<Buckets>(), &[(2, Field::PackedVarints)]);
static EXPONENTIAL_POINT: Layout = Layout {
    size: size_of::<ExponentialHistogramDataPoint>(),
    extra: OUTPUT,
    fields: &[
        (1, Field::Repeated(&KEY_VALUE)),
        (8, Field::Inline(&BUCKETS)),
        (9, Field::Inline(&BUCKETS)),
        (11, Field::Repeated(&EXEMPLAR)),
    ],
};
static QUANTILE: Layout = layout(size_of::<ValueAtQuantile>(), &[]);
static SUMMARY_POINT: Layout = Layout {
    size: size_of::<SummaryDataPoint>(),
    extra: OUTPUT,
    fields: &[(7, Field::Repeated(&KEY_VALUE)), (6, Field::Repeated(&QUANTILE))],
};
static NUMBERS: Layout = layout(0, &[(1, Field::Repeated(&NUMBER_POINT))]);
static HISTOGRAMS: Layout = layout(0, &[(1, Field::Repeated(&HISTOGRAM_POINT))]);
static EXPONENTIALS: Layout = layout(0, &[(1, Field::Repeated(&EXPONENTIAL_POINT))]);
static SUMMARIES: Layout = layout(0, &[(1, Field::Repeated(&SUMMARY_POINT))]);
static METRIC: Layout = layout(
    size_of::<Metric>(),
    &[
        (1, Field::Text),
        (2, Field::Text),
        (3, Field::Text),
        (5, Field::Inline(&NUMBERS)),
        (7, Field::Inline(&NUMBERS)),
        (9, Field::Inline(&HISTOGRAMS)),
        (10, Field::Inline(&EXPONENTIALS)),
        (11, Field::Inline(&SUMMARIES)),
        (12, Field::Repeated(&KEY_VALUE)),
    ],
);
static SCOPE_METRICS: Layout = layout(
    size_of::<ScopeMetrics>(),
    &[
        (1, Field::Inline(&SCOPE)),
        (2, Field::Repeated(&METRIC)),
        (3, Field::Text),
    ],
);
static RESOURCE_METRICS: Layout = layout(
    size_of::<ResourceMetrics>(),
    &[
        (1, Field::Inline(&RESOURCE)),
        (2, Field::Repeated(&SCOPE_METRICS)),
        (3, Field::Text),
    ],
);
static METRICS_REQUEST: Layout = layout(0, &[(1, Field::Repeated(&RESOURCE_METRICS))]);

static EVENT: Layout = layout(
    size_of::<span::Event>(),
    &[(2, Field::Text), (3, Field::Repeated(&KEY_VALUE))],
);
static LINK: Layout = layout(
    size_of::<span::Link>(),
    &[
        (1, Field::Text),
        (2, Field::Text),
        (3, Field::Text),
        (4, Field::Repeated(&KEY_VALUE)),
    ],
);
static STATUS: Layout = layout(0, &[(2, Field::Text)]);
static SPAN: Layout = Layout {
    size: size_of::<Span>(),
    extra: OUTPUT,
    fields: &[
        (1, Field::Text),
        (2, Field::Text),
        (3, Field::Text),
        (4, Field::Text),
        (5, Field::Text),
        (9, Field::Repeated(&KEY_VALUE)),
        (11, Field::Repeated(&EVENT)),
        (13, Field::Repeated(&LINK)),
        (15, Field::Inline(&STATUS)),
    ],
};
static SCOPE_SPANS: Layout = layout(
    size_of::<ScopeSpans>(),
    &[
        (1, Field::Inline(&SCOPE)),
        (2, Field::Repeated(&SPAN)),
        (3, Field::Text),
    ],
);
static RESOURCE_SPANS: Layout = layout(
    size_of::<ResourceSpans>(),
    &[
        (1, Field::Inline(&RESOURCE)),
        (2, Field::Repeated(&SCOPE_SPANS)),
        (3, Field::Text),
    ],
);
static TRACES_REQUEST: Layout = layout(0, &[(1, Field::Repeated(&RESOURCE_SPANS))]);

/// An OTLP message the codecs decode: requests are bounded, responses (read
/// by clients only) are not.
pub trait Bounded: prost::Message + Default {
    /// The layout to estimate before decoding, if any.
    fn layout() -> Option<&'static Layout> {
        None
    }
}

impl Bounded for ExportMetricsServiceRequest {
    fn layout() -> Option<&'static Layout> {
        Some(&METRICS_REQUEST)
    }
}

impl Bounded for ExportTraceServiceRequest {
    fn layout() -> Option<&'static Layout> {
        Some(&TRACES_REQUEST)
    }
}

impl Bounded for ExportMetricsServiceResponse {}
impl Bounded for ExportTraceServiceResponse {}

/// Refuses `body` as an `M` when the tree prost would build from it passes
/// [`OTLP_DECODED_BYTES_PER_BYTE`] times its size plus the floor.
pub fn check<M: Bounded>(body: &[u8]) -> Result<(), BoundError> {
    let Some(layout) = M::layout() else {
        return Ok(());
    };
    let mut budget = DecodeBudget::with_multiple(body.len(), OTLP_DECODED_BYTES_PER_BYTE);
    estimate(body, layout, 0, &mut budget)
}

fn heap(length: usize) -> usize {
    if length == 0 {
        0
    } else {
        length.next_multiple_of(8)
    }
}

fn estimate(message: &[u8], layout: &Layout, depth: usize, budget: &mut DecodeBudget) -> Result<(), BoundError> {
    if depth > MAX_DEPTH {
        return Err(BoundError::TooDeep);
    }
    for field in fields(message) {
        let (number, value) = field?;
        let Some((_, kind)) = layout.fields.iter().find(|(known, _)| *known == number) else {
            continue;
        };
        match (*kind, value) {
            (Field::Repeated(inner), value) => {
                budget.charge(inner.size + inner.extra)?;
                estimate(value.bytes(number)?, inner, depth + 1, budget)?;
            }
            (Field::Inline(inner), value) => {
                budget.charge(inner.extra)?;
                estimate(value.bytes(number)?, inner, depth + 1, budget)?;
            }
            (Field::Text, value) => budget.charge(heap(value.bytes(number)?.len()))?,
            (Field::Texts, value) => budget.charge(size_of::<String>() + heap(value.bytes(number)?.len()))?,
            (Field::PackedVarints, Value::Bytes(list)) => budget.charge(packed_varints(list) * 24)?,
            (Field::PackedFixed, Value::Bytes(list)) => budget.charge(list.len())?,
            // One unpacked element.
            (Field::PackedVarints, _) => budget.charge(24)?,
            (Field::PackedFixed, _) => budget.charge(8)?,
        }
    }
    Ok(())
}
