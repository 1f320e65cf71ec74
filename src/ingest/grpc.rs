//! The gRPC `Ingest.Write` handler: tenant from metadata, per-series
//! validation, then one engine call per request. A request in which nothing
//! can ever succeed gets INVALID_ARGUMENT; otherwise bad series are refused
//! alone and the response tallies every point.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::api::v1;
use crate::clock::Clock;
use crate::cluster::stage::{Stage, StageError};
use crate::config::IngestLimits;
use crate::engine::Engine;
use crate::model::{DropReason, IngestBatch, Outcome};
use crate::telemetry::Telemetry;
use crate::wal::Wal;

use super::validate::{check_tenant, validate_series};

/// Per-series messages returned in a response; the rest are only counted.
const MAX_ERRORS_REPORTED: usize = 10;

/// The `Ingest` gRPC service.
pub struct GrpcIngest {
    engine: Arc<Engine>,
    limits: IngestLimits,
    clock: Arc<dyn Clock>,
    telemetry: Arc<Telemetry>,
    /// Where admitted batches go: logged and folded here, or routed to their shards' replicas.
    stage: Stage,
}

impl GrpcIngest {
    /// A handler feeding `engine`.
    pub fn new(engine: Arc<Engine>, limits: IngestLimits, clock: Arc<dyn Clock>, telemetry: Arc<Telemetry>) -> Self {
        GrpcIngest {
            stage: Stage::local(Arc::clone(&engine), None),
            engine,
            limits,
            clock,
            telemetry,
        }
    }

    /// Logs every batch in `wal` before folding it.
    pub fn with_wal(mut self, wal: Option<Arc<Wal>>) -> Self {
        self.stage = Stage::local(Arc::clone(&self.engine), wal);
        self
    }

    /// Hands admitted batches to `stage` (a cluster's router).
    pub fn with_stage(mut self, stage: Stage) -> Self {
        self.stage = stage;
        self
    }

    /// Builds the tonic server for this handler with the request size limit applied.
    pub fn into_server(self) -> v1::ingest_server::IngestServer<Self> {
        let limit = self.limits.max_request_bytes;
        v1::ingest_server::IngestServer::new(self).max_decoding_message_size(limit)
    }
}

/// Reads the tenant from gRPC metadata `header`; `default` when absent.
pub fn tenant_from_metadata(
    metadata: &tonic::metadata::MetadataMap,
    header: &str,
    default: &str,
) -> Result<Arc<str>, Status> {
    let Some(value) = metadata.get(header) else {
        return Ok(Arc::from(default));
    };
    check_tenant(value.as_bytes()).map_err(|error| Status::invalid_argument(format!("metadata {header}: {error}")))
}

#[tonic::async_trait]
impl v1::ingest_server::Ingest for GrpcIngest {
    async fn write(&self, request: Request<v1::WriteRequest>) -> Result<Response<v1::WriteResponse>, Status> {
        let tenant = tenant_from_metadata(
            request.metadata(),
            &self.limits.tenant_header,
            &self.limits.default_tenant,
        )?;
        let request = request.into_inner();
        let batch_tenant = Arc::clone(&tenant);
        let points: usize = request.series.iter().map(|series| series.points.len()).sum();
        self.telemetry.received_by("grpc", &tenant, points as u64);
        if points > self.limits.max_points_per_request {
            let mut outcome = Outcome::default();
            outcome.reject(DropReason::InvalidSeries, points as u64);
            self.telemetry.ingested_by("grpc", &batch_tenant, &outcome);
            return Err(Status::invalid_argument(format!(
                "request has {points} points, limit is {} (ingest.max_points_per_request)",
                self.limits.max_points_per_request
            )));
        }

        let series_count = request.series.len();
        let mut outcome = Outcome::default();
        let mut errors = Vec::new();
        let mut invalid_series = 0usize;
        let mut batch = IngestBatch {
            tenant,
            series: Vec::with_capacity(series_count),
        };
        for (index, series) in request.series.into_iter().enumerate() {
            let series_points = series.points.len() as u64;
            match validate_series(index, series, &self.limits, &mut outcome) {
                Ok(valid) => batch.series.push(valid),
                Err(error) => {
                    invalid_series += 1;
                    outcome.reject(DropReason::InvalidSeries, series_points);
                    if errors.len() < MAX_ERRORS_REPORTED {
                        errors.push(error.to_string());
                    }
                }
            }
        }
        if series_count > 0 && invalid_series == series_count {
            self.telemetry.ingested_by("grpc", &batch_tenant, &outcome);
            let more = if invalid_series > errors.len() {
                format!(" (and {} more)", invalid_series - errors.len())
            } else {
                String::new()
            };
            return Err(Status::invalid_argument(format!(
                "every series in the request is invalid: {}{more}",
                errors.join("; ")
            )));
        }

        let now_ms = self.clock.now_ms();
        let (admitted, limited) = self.engine.admit(&batch, now_ms);
        // Acknowledged only once logged (WAL) or taken by every live replica; a failure is
        // UNAVAILABLE, which clients retry. Only what passed the limits goes on.
        let folded = self
            .stage
            .fold(&admitted, now_ms, limited)
            .await
            .map_err(|error: StageError| Status::unavailable(error.to_string()))?;
        outcome.merge(&folded);
        self.telemetry.ingested_by("grpc", &batch_tenant, &outcome);
        if let Some(message) = rate_limited_message(&batch.tenant, &folded) {
            return Err(Status::resource_exhausted(message));
        }
        Ok(Response::new(response_of(&outcome, errors)))
    }
}

/// When the tenant's rate limit left nothing of a request, the sender should
/// back off and retry it whole (nothing of it was folded in, so a retry
/// double-counts nothing): RESOURCE_EXHAUSTED / HTTP 429 with this message.
pub fn rate_limited_message(tenant: &str, folded: &Outcome) -> Option<String> {
    let limited = folded.rejected_for(DropReason::RateLimited);
    (folded.accepted == 0 && limited > 0).then(|| {
        format!(
            "tenant {tenant:?} is over its samples_per_second limit: {limited} points dropped, none accepted; retry with backoff"
        )
    })
}

/// The wire form of a tally.
pub fn response_of(outcome: &Outcome, errors: Vec<String>) -> v1::WriteResponse {
    // Reasons with a per-rule breakdown are listed by rule below.
    let mut rejections: Vec<v1::ReasonCount> = DropReason::ALL
        .iter()
        .filter(|reason| {
            !matches!(
                reason,
                DropReason::DroppedByRule | DropReason::RateLimited | DropReason::SeriesLimited
            )
        })
        .filter_map(|reason| {
            let count = outcome.rejected_for(*reason);
            (count > 0).then(|| v1::ReasonCount {
                reason: reason.as_str().to_string(),
                rule: String::new(),
                count,
            })
        })
        .collect();
    rejections.extend(outcome.by_rule.iter().map(|(rule, count)| v1::ReasonCount {
        reason: DropReason::DroppedByRule.as_str().to_string(),
        rule: rule.to_string(),
        count: *count,
    }));
    rejections.extend(outcome.by_limit.iter().map(|(reason, rule, count)| v1::ReasonCount {
        reason: reason.as_str().to_string(),
        rule: rule.to_string(),
        count: *count,
    }));
    v1::WriteResponse {
        accepted: outcome.accepted,
        rejected: outcome.rejected_total(),
        rejections,
        errors,
    }
}
