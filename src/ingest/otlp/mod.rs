//! OTLP ingest: `TraceService.Export` and `MetricsService.Export` over gRPC,
//! and `POST /v1/traces`, `/v1/metrics` over HTTP (binary protobuf). Spans
//! become distribution samples tagged with their trace; metrics map onto the
//! model's counters, gauges and native histograms. Refusals are partial
//! successes with counts and a message, as the OTLP spec asks.

mod bounds;
mod codec;
mod metrics;
mod service;
mod spans;

use std::sync::Arc;

use thiserror::Error;

use crate::api::otlp::common::v1::{any_value, KeyValue};
use crate::clock::Clock;
use crate::cluster::stage::{Stage, StageError};
use crate::config::{IngestLimits, OtlpSettings};
use crate::engine::{Engine, EngineClosed};
use crate::model::{DropReason, IngestBatch, Outcome, SeriesBatch};
use crate::telemetry::Telemetry;
use crate::wal::WalError;

pub use bounds::{check as check_bound, BoundError, Bounded, OTLP_DECODED_BYTES_PER_BYTE};
pub use codec::{OtlpCodec, OtlpDecoder};
pub use metrics::{decode_metrics, explicit_histogram, exponential_histogram, sanitize_name};
pub use service::{auth_refusal, otlp_grpc_router, otlp_http_router, RpcStatus};
pub use spans::decode_spans;

/// Problems quoted in a partial-success message; the rest are only counted.
const MAX_ERRORS_REPORTED: usize = 10;

/// What decoding one export request yields: the valid series, and the items
/// (spans or data points) refused with the first few reasons.
#[derive(Debug, Default)]
pub struct Decoded {
    /// Valid series.
    pub series: Vec<SeriesBatch>,
    /// Spans or data points refused while decoding, by reason.
    pub outcome: Outcome,
    /// The first few reasons.
    pub errors: Vec<String>,
}

impl Decoded {
    /// Refuses `count` items for `reason`; `message` is only built while few are reported.
    fn refuse(&mut self, reason: DropReason, count: u64, message: impl FnOnce() -> String) {
        self.outcome.reject(reason, count);
        if self.errors.len() < MAX_ERRORS_REPORTED {
            self.errors.push(message());
        }
    }

    /// Items refused while decoding.
    pub fn rejected(&self) -> u64 {
        self.outcome.rejected_total()
    }
}

/// The text of an attribute value usable as a label: strings, booleans and numbers.
fn attribute_text(attribute: &KeyValue) -> Option<String> {
    match attribute.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(text) => Some(text.clone()),
        any_value::Value::BoolValue(value) => Some(value.to_string()),
        any_value::Value::IntValue(value) => Some(value.to_string()),
        any_value::Value::DoubleValue(value) => Some(value.to_string()),
        _ => None,
    }
}

/// `service.name` of a resource; `unknown_service` (the SDK default) when unset.
fn service_name(resource: &[KeyValue]) -> String {
    resource
        .iter()
        .find(|attribute| attribute.key == "service.name")
        .and_then(attribute_text)
        .unwrap_or_else(|| "unknown_service".to_string())
}

/// The outcome of one export: items refused (decoding plus engine) and why.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ExportAnswer {
    /// Spans or data points not folded in.
    pub rejected: u64,
    /// Empty when nothing was refused.
    pub message: String,
}

/// Why an export could not be folded at all; both are answered UNAVAILABLE / 503, which senders retry.
#[derive(Debug, Error)]
pub enum FoldError {
    /// The service is shutting down.
    #[error(transparent)]
    Closed(#[from] EngineClosed),
    /// The write-ahead log did not take the batch, so it is not acknowledged.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// A cluster instance whose rules differ from the cluster's forwards nothing.
    #[error("this instance does not fold the cluster's rules ({0}); send to another instance")]
    RulesDiffer(String),
}

impl From<StageError> for FoldError {
    fn from(error: StageError) -> Self {
        match error {
            StageError::Closed(closed) => FoldError::Closed(closed),
            StageError::Wal(wal) => FoldError::Wal(wal),
            StageError::RulesDiffer(reason) => FoldError::RulesDiffer(reason),
        }
    }
}

/// What both OTLP transports share: decode, fold, tally.
#[derive(Clone)]
pub struct OtlpIngest(Arc<Shared>);

struct Shared {
    engine: Arc<Engine>,
    limits: IngestLimits,
    settings: OtlpSettings,
    histogram_scale: i8,
    clock: Arc<dyn Clock>,
    telemetry: Arc<Telemetry>,
    /// Where admitted batches go: logged and folded here, or routed to their shards' replicas.
    stage: Stage,
}

impl OtlpIngest {
    /// Feeds `engine` through `stage` (which logs every admitted batch first when the log is on);
    /// explicit-bucket histograms are laid out at the engine's histogram scale.
    pub fn new(
        engine: Arc<Engine>,
        limits: IngestLimits,
        settings: OtlpSettings,
        clock: Arc<dyn Clock>,
        telemetry: Arc<Telemetry>,
        stage: Stage,
    ) -> Self {
        let histogram_scale = engine.settings().histogram.scale;
        OtlpIngest(Arc::new(Shared {
            engine,
            limits,
            settings,
            histogram_scale,
            clock,
            telemetry,
            stage,
        }))
    }

    /// Folds the spans of an export request. Blocks while the write-ahead log
    /// syncs: call it off the async threads.
    pub fn traces(
        &self,
        request: &crate::api::otlp::collector::trace::v1::ExportTraceServiceRequest,
        tenant: Arc<str>,
    ) -> Result<ExportAnswer, FoldError> {
        let decoded = decode_spans(request, &self.0.settings, &self.0.limits);
        self.fold(decoded, tenant)
    }

    /// Folds the data points of an export request. Blocks while the write-ahead
    /// log syncs: call it off the async threads.
    pub fn metrics(
        &self,
        request: &crate::api::otlp::collector::metrics::v1::ExportMetricsServiceRequest,
        tenant: Arc<str>,
    ) -> Result<ExportAnswer, FoldError> {
        let decoded = decode_metrics(request, self.0.histogram_scale, &self.0.limits);
        self.fold(decoded, tenant)
    }

    fn fold(&self, decoded: Decoded, tenant: Arc<str>) -> Result<ExportAnswer, FoldError> {
        let points: u64 = decoded
            .series
            .iter()
            .map(|series| (series.points.len() + series.histograms.len()) as u64)
            .sum();
        self.0
            .telemetry
            .received_by("otlp", &tenant, points + decoded.rejected());
        let mut outcome = decoded.outcome;
        let batch = IngestBatch {
            tenant,
            series: decoded.series,
        };
        let now_ms = self.0.clock.now_ms();
        let (admitted, limited) = self.0.engine.admit(&batch, now_ms);
        // Acknowledged only once logged (WAL) or taken by every live replica; only what the limits admitted goes on.
        let folded = match self
            .0
            .stage
            .fold_blocking(&admitted, now_ms, limited)
            .map_err(FoldError::from)
        {
            Ok(folded) => folded,
            Err(error) => {
                self.0.telemetry.ingested_by("otlp", &batch.tenant, &outcome);
                return Err(error);
            }
        };
        outcome.merge(&folded);
        self.0.telemetry.ingested_by("otlp", &batch.tenant, &outcome);
        let mut errors = decoded.errors;
        for reason in DropReason::ALL {
            let count = folded.rejected_for(reason);
            if count > 0 && reason != DropReason::DroppedByRule {
                errors.push(format!("{count} refused: {}", reason.as_str()));
            }
        }
        // Refusals by some outputs of points others took are said too (a
        // partial success with nothing rejected is the spec's warning).
        if !folded.output_refusals.is_empty() {
            errors.push(folded.output_refusals_text());
        }
        let rejected = outcome.rejected_total();
        Ok(ExportAnswer {
            rejected,
            message: if rejected == 0 && folded.output_refusals.is_empty() {
                String::new()
            } else {
                errors.join("; ")
            },
        })
    }

    fn limits(&self) -> &IngestLimits {
        &self.0.limits
    }

    fn engine(&self) -> &Arc<Engine> {
        &self.0.engine
    }

    fn telemetry(&self) -> Arc<Telemetry> {
        Arc::clone(&self.0.telemetry)
    }
}

#[cfg(test)]
mod tests;
