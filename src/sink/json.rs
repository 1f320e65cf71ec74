//! The JSON-lines form of an aggregate record, shared by the embedded store
//! and anyone reading it back: labels, window, aggregation, value, exemplar.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::aggregate::exemplar::Exemplar;
use crate::aggregate::histogram::Tightness;
use crate::engine::{AggregateRecord, RecordValue};
use crate::model::Labels;

/// One line of the embedded store.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct JsonRecord {
    /// Owner.
    pub tenant: String,
    /// Output metric name (`__name__` of `labels`).
    pub name: String,
    /// Output labels, `__name__`, `quantile` and `threshold` included.
    pub labels: BTreeMap<String, String>,
    /// Storage policy, e.g. `10s:2d`.
    pub policy: String,
    /// Window start, ms since the epoch.
    pub window_start_ms: i64,
    /// Window end (exclusive); the record's timestamp.
    pub window_end_ms: i64,
    /// The aggregation asked for, e.g. `p99` or `above(1.5)`.
    pub aggregation: String,
    /// The value: a number, or for `histogram` an object (see `JsonHistogram`).
    pub value: serde_json::Value,
    /// The exemplar of the bucket holding a quantile (or a traced sample above a threshold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exemplar: Option<JsonExemplar>,
    /// How tightly `exemplar` is linked (present with it; absent in records
    /// written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<JsonLink>,
    /// True when written at shutdown before the window ended.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
}

/// An exemplar in a record.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct JsonExemplar {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits; absent when the sample had no span ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
    /// The traced sample's own value.
    pub value: f64,
    /// The traced sample's own timestamp.
    pub timestamp_ms: i64,
}

/// How tightly an exemplar is linked to what it stands for.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct JsonLink {
    /// `own_bucket`: the exemplar's value lies in the bucket holding the
    /// reported quantile, `(bucket_lower, bucket_upper]` at `scale`, the
    /// histogram's own; `nearest_bucket`: no kept traced sample lay in that
    /// bucket, this is the nearest kept one, in `(bucket_lower,
    /// bucket_upper]`, `buckets_away` from it; `coarse_bucket`: in the
    /// coarser bucket at `scale` holding the quantile's; `ranked`: exactly
    /// the slowest (fastest) traced sample(s) beyond an `above` (`below`) threshold.
    pub tightness: String,
    /// Scale of the bucket the exemplar was chosen from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<i8>,
    /// Lower bound of that bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_lower: Option<f64>,
    /// Upper bound of that bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_upper: Option<f64>,
    /// For `nearest_bucket`: buckets between the exemplar's and the quantile's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buckets_away: Option<u32>,
}

impl From<&Tightness> for JsonLink {
    fn from(tightness: &Tightness) -> Self {
        let (scale, lower, upper, away) = match *tightness {
            Tightness::OwnBucket { scale, lower, upper } | Tightness::CoarseBucket { scale, lower, upper } => {
                (Some(scale), Some(lower), Some(upper), None)
            }
            Tightness::Nearest {
                scale,
                lower,
                upper,
                buckets_away,
            } => (Some(scale), Some(lower), Some(upper), Some(buckets_away)),
            Tightness::Ranked => (None, None, None, None),
        };
        JsonLink {
            tightness: tightness.name().to_string(),
            scale,
            bucket_lower: lower,
            bucket_upper: upper,
            buckets_away: away,
        }
    }
}

/// A histogram value: the exponential layout of Prometheus native histograms.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct JsonHistogram {
    /// Scale: bucket `i` covers `(base^i, base^(i+1)]` with `base = 2^(2^-scale)`.
    pub scale: i8,
    /// Scale of the buckets the exemplars of this window's quantiles were
    /// picked from: a quantile's exemplar lies in the bucket at this scale
    /// that holds the quantile. Equals `scale` unless
    /// `engine.histogram.exemplar_scale_reduction` or `max_exemplars` coarsened
    /// the reservoirs. Absent in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exemplar_scale: Option<i8>,
    /// Samples.
    pub count: u64,
    /// Sum of samples.
    pub sum: f64,
    /// Samples in the zero bucket.
    pub zero_count: u64,
    /// `[index, count]` of non-empty positive buckets, ascending.
    pub positive: Vec<(i32, u64)>,
    /// `[index, count]` of non-empty negative buckets (by absolute value), ascending.
    pub negative: Vec<(i32, u64)>,
}

impl From<&Exemplar> for JsonExemplar {
    fn from(exemplar: &Exemplar) -> Self {
        JsonExemplar {
            trace_id: hex::encode(exemplar.trace_id),
            span_id: (exemplar.span_id != [0; 8]).then(|| hex::encode(exemplar.span_id)),
            value: exemplar.value,
            timestamp_ms: exemplar.timestamp_ms,
        }
    }
}

/// Labels as a JSON object (sorted by name, like the label set).
pub fn labels_map(labels: &Labels) -> BTreeMap<String, String> {
    labels
        .iter()
        .map(|label| (label.name.to_string(), label.value.to_string()))
        .collect()
}

/// The JSON form of `record`.
pub fn record_json(record: &AggregateRecord) -> JsonRecord {
    let value = match &record.value {
        RecordValue::Scalar(value) => serde_json::json!(value),
        RecordValue::Histogram(histogram) => serde_json::to_value(JsonHistogram {
            scale: histogram.scale(),
            exemplar_scale: Some(histogram.scale() - histogram.exemplar_shift() as i8),
            count: histogram.count(),
            sum: histogram.sum(),
            zero_count: histogram.zero_count(),
            positive: histogram.positive_buckets().collect(),
            negative: histogram.negative_buckets().collect(),
        })
        .unwrap_or(serde_json::Value::Null),
    };
    JsonRecord {
        tenant: record.tenant.to_string(),
        name: record.output_name(),
        labels: labels_map(&record.output_labels()),
        policy: record.policy.to_string(),
        window_start_ms: record.window_start_ms,
        window_end_ms: record.window_end_ms,
        aggregation: record.aggregation.to_string(),
        value,
        exemplar: record.exemplar.as_ref().map(JsonExemplar::from),
        link: record.tightness.as_ref().map(JsonLink::from),
        partial: record.partial,
    }
}
