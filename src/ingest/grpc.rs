//! The gRPC `Ingest.Write` handler: tenant from metadata, bounded decoding
//! and per-series validation, then one engine call per request. A request in
//! which nothing can ever succeed (garbage included) gets INVALID_ARGUMENT;
//! otherwise bad series are refused alone and the response tallies every point.
//! The service is served by hand ([`IngestService`]) rather than by the
//! generated server, so the request reaches the handler as raw bytes.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::codegen::{http, Body, BoxFuture, Context, Poll, Service, StdError};
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_prost::{ProstCodec, ProstEncoder};

use crate::api::v1;
use crate::clock::Clock;
use crate::cluster::stage::{Stage, StageError};
use crate::config::IngestLimits;
use crate::engine::Engine;
use crate::model::{DropReason, Outcome};
use crate::telemetry::Telemetry;
use crate::wal::Wal;

use super::grpc_decode::{decode_write, WriteDecoded, WriteError};
use super::validate::check_tenant;

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

    /// The tonic service for this handler, with the request size limit applied.
    pub fn into_server(self) -> IngestService {
        IngestService(Arc::new(self))
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

impl GrpcIngest {
    /// `Write`: decodes the raw request (see `grpc_decode`), folds what is valid.
    async fn write(&self, request: Request<Bytes>) -> Result<Response<v1::WriteResponse>, Status> {
        let tenant = tenant_from_metadata(
            request.metadata(),
            &self.limits.tenant_header,
            &self.limits.default_tenant,
        )?;
        let body = request.into_inner();
        let _in_flight = self.telemetry.bytes_in_flight(body.len());
        let batch_tenant = Arc::clone(&tenant);
        let decoded = match decode_write(&body, tenant, &self.limits) {
            Ok(decoded) => decoded,
            Err(error) => {
                if let WriteError::TooManyPoints { points, .. } = error {
                    let mut outcome = Outcome::default();
                    outcome.reject(DropReason::InvalidSeries, points);
                    self.telemetry.received_by("grpc", &batch_tenant, points);
                    self.telemetry.ingested_by("grpc", &batch_tenant, &outcome);
                }
                return Err(Status::invalid_argument(error.to_string()));
            }
        };
        drop(body);
        self.telemetry.received_by("grpc", &batch_tenant, decoded.points);
        let nothing_valid = decoded.nothing_valid();
        let WriteDecoded {
            batch,
            mut outcome,
            errors,
            invalid_series,
            ..
        } = decoded;
        if nothing_valid {
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
    let output_refusals = outcome
        .output_refusals
        .iter()
        .map(|entry| v1::OutputRefusal {
            reason: entry.reason.as_str().to_string(),
            output: entry.output.to_string(),
            storage_policy: entry.policy.to_string(),
            count: entry.count,
        })
        .collect();
    v1::WriteResponse {
        accepted: outcome.accepted,
        rejected: outcome.rejected_total(),
        rejections,
        errors,
        partial: outcome.partial,
        output_refusals,
    }
}

/// The `tailfold.v1.Ingest` service: `Write` with its request handed over as
/// raw bytes (decoded under the memory bound by `grpc_decode`), at most
/// `ingest.max_request_bytes` long.
#[derive(Clone)]
pub struct IngestService(Arc<GrpcIngest>);

impl NamedService for IngestService {
    const NAME: &'static str = "tailfold.v1.Ingest";
}

/// The gRPC path of `Write`.
const WRITE_PATH: &str = "/tailfold.v1.Ingest/Write";

impl<B> Service<http::Request<B>> for IngestService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != WRITE_PATH {
            let status = Status::unimplemented(format!("no method {}", request.uri().path()));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let ingest = Arc::clone(&self.0);
        Box::pin(async move {
            let limit = ingest.limits.max_request_bytes;
            let mut grpc = tonic::server::Grpc::new(RawCodec).apply_max_message_size_config(Some(limit), None);
            Ok(grpc.unary(WriteMethod(ingest), request).await)
        })
    }
}

struct WriteMethod(Arc<GrpcIngest>);

impl UnaryService<Bytes> for WriteMethod {
    type Response = v1::WriteResponse;
    type Future = BoxFuture<Response<v1::WriteResponse>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let ingest = Arc::clone(&self.0);
        Box::pin(async move { ingest.write(request).await })
    }
}

/// Hands the request message over undecoded; encodes the response with prost.
struct RawCodec;

impl Codec for RawCodec {
    type Encode = v1::WriteResponse;
    type Decode = Bytes;
    type Encoder = ProstEncoder<v1::WriteResponse>;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<v1::WriteResponse, v1::WriteRequest>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

/// The message bytes, as tonic framed them (a slice of its buffer, not a copy).
struct RawDecoder;

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining())))
    }
}
