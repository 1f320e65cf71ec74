//! The vocabulary every stage shares: label sets and series keys, sample kinds,
//! points with optional trace context, and storage policies (`10s:2d`).

mod duration;
mod labels;
mod outcome;
mod policy;
mod sample;

pub use duration::{format_duration_ms, parse_duration_ms, DurationError};
#[cfg(test)]
pub(crate) use labels::SERIES_KEYS_COMPUTED;
pub use labels::{
    series_hash, series_key, Label, LabelRef, Labels, LabelsIter, SeriesKey, SeriesKeyHasher, METRIC_NAME_LABEL,
};
pub use outcome::{DropReason, Outcome, OutputRefusal, MAX_OUTPUT_REFUSALS, OTHER_OUTPUTS};
pub use policy::{PolicyError, StoragePolicy};
pub use sample::{IngestBatch, Kind, NativeHistogram, Point, SeriesBatch, TraceContext};
