//! The OTLP transports. gRPC: `TraceService` and `MetricsService` (port 4317
//! by convention). HTTP: `POST /v1/traces` and `/v1/metrics` with binary
//! protobuf (4318), answering `200` with a partial success, `400` with a
//! `google.rpc.Status` body for what can never succeed, `415` for JSON or
//! an encoding other than gzip, `503` while shutting down (the sender retries).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Status};

use crate::api::otlp::collector::metrics::v1::{
    metrics_service_server::{MetricsService, MetricsServiceServer},
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use crate::api::otlp::collector::trace::v1::{
    trace_service_server::{TraceService, TraceServiceServer},
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use crate::config::TlsSettings;
use crate::ingest::auth::{Auth, AuthError};
use crate::ingest::backpressure::Backpressure;
use crate::ingest::grpc::tenant_from_metadata;
use crate::ingest::validate::check_tenant;

use super::bounds::{check, Bounded};
use super::{ExportAnswer, OtlpIngest};

#[tonic::async_trait]
impl TraceService for OtlpIngest {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, Status> {
        let limits = self.limits();
        let tenant = tenant_from_metadata(request.metadata(), &limits.tenant_header, &limits.default_tenant)?;
        let ingest = self.clone();
        let request = request.into_inner();
        // Folding may wait for the write-ahead log's fsync: off the async threads.
        let answer = tokio::task::spawn_blocking(move || ingest.traces(&request, tenant))
            .await
            .map_err(|error| Status::unavailable(format!("ingest task failed: {error}")))?
            .map_err(|error| Status::unavailable(error.to_string()))?;
        Ok(tonic::Response::new(trace_response(answer)))
    }
}

#[tonic::async_trait]
impl MetricsService for OtlpIngest {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, Status> {
        let limits = self.limits();
        let tenant = tenant_from_metadata(request.metadata(), &limits.tenant_header, &limits.default_tenant)?;
        let ingest = self.clone();
        let request = request.into_inner();
        // Folding may wait for the write-ahead log's fsync: off the async threads.
        let answer = tokio::task::spawn_blocking(move || ingest.metrics(&request, tenant))
            .await
            .map_err(|error| Status::unavailable(format!("ingest task failed: {error}")))?
            .map_err(|error| Status::unavailable(error.to_string()))?;
        Ok(tonic::Response::new(metrics_response(answer)))
    }
}

fn trace_response(answer: ExportAnswer) -> ExportTraceServiceResponse {
    ExportTraceServiceResponse {
        partial_success: (answer.rejected > 0 || !answer.message.is_empty()).then_some(ExportTracePartialSuccess {
            rejected_spans: answer.rejected as i64,
            error_message: answer.message,
        }),
    }
}

fn metrics_response(answer: ExportAnswer) -> ExportMetricsServiceResponse {
    ExportMetricsServiceResponse {
        partial_success: (answer.rejected > 0 || !answer.message.is_empty()).then_some(ExportMetricsPartialSuccess {
            rejected_data_points: answer.rejected as i64,
            error_message: answer.message,
        }),
    }
}

/// The OTLP/gRPC server: both services, with the request size limit applied,
/// behind the bearer tokens when auth is on and the ingest in-flight gate
/// (RESOURCE_EXHAUSTED when saturated), over TLS when `tls` is set.
pub fn otlp_grpc_router(
    ingest: OtlpIngest,
    auth: &Auth,
    tls: Option<&TlsSettings>,
) -> Result<tonic::transport::server::Router, tonic::transport::Error> {
    let limit = ingest.limits().max_request_bytes;
    let gate = ingest.engine().limits().gate().clone();
    let telemetry = ingest.telemetry();
    // gzip is what the Collector's OTLP exporter sends by default.
    let traces = TraceServiceServer::new(ingest.clone())
        .max_decoding_message_size(limit)
        .accept_compressed(CompressionEncoding::Gzip);
    let metrics = MetricsServiceServer::new(ingest)
        .max_decoding_message_size(limit)
        .accept_compressed(CompressionEncoding::Gzip);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(crate::tls::grpc_tls_config(tls))?;
    }
    Ok(builder
        .add_service(auth.grpc(Backpressure::new(traces, gate.clone(), Arc::clone(&telemetry)).counted_as("otlp_grpc")))
        .add_service(auth.grpc(Backpressure::new(metrics, gate, telemetry).counted_as("otlp_grpc"))))
}

/// The OTLP/HTTP routes.
pub fn otlp_http_router(ingest: OtlpIngest) -> Router {
    Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/metrics", post(metrics))
        .with_state(ingest)
}

/// `google.rpc.Status`, the body of an OTLP/HTTP error answer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    /// A `google.rpc.Code`.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// What went wrong.
    #[prost(string, tag = "2")]
    pub message: String,
}

/// `google.rpc.Code.INVALID_ARGUMENT`.
const INVALID_ARGUMENT: i32 = 3;
/// `google.rpc.Code.RESOURCE_EXHAUSTED`.
const RESOURCE_EXHAUSTED: i32 = 8;
/// `google.rpc.Code.UNAVAILABLE`.
const UNAVAILABLE: i32 = 14;

fn refusal(status: StatusCode, code: i32, message: String) -> Response {
    let body = RpcStatus { code, message }.encode_to_vec();
    (status, [(header::CONTENT_TYPE, "application/x-protobuf")], body).into_response()
}

fn protobuf(message: impl Message) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        message.encode_to_vec(),
    )
        .into_response()
}

/// Reads the tenant and the body of an OTLP/HTTP request.
async fn read(ingest: &OtlpIngest, headers: &HeaderMap, body: Body) -> Result<(Arc<str>, bytes::Bytes), Response> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).to_ascii_lowercase())
        .unwrap_or_default();
    if !content_type.starts_with("application/x-protobuf") {
        return Err(refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            INVALID_ARGUMENT,
            format!("content-type {content_type:?} is not supported: send application/x-protobuf"),
        ));
    }
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|encoding| String::from_utf8_lossy(encoding.as_bytes()).trim().to_ascii_lowercase())
        .unwrap_or_default();
    let gzipped = match encoding.as_str() {
        "" | "identity" => false,
        // What the OpenTelemetry Collector's exporters send by default.
        "gzip" => true,
        _ => {
            return Err(refusal(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                INVALID_ARGUMENT,
                format!("content-encoding {encoding:?} is not supported: send gzip or uncompressed"),
            ))
        }
    };
    let limits = ingest.limits();
    let tenant = match headers.get(limits.tenant_header.as_str()) {
        None => Arc::from(limits.default_tenant.as_str()),
        Some(value) => check_tenant(value.as_bytes()).map_err(|error| {
            refusal(
                StatusCode::BAD_REQUEST,
                INVALID_ARGUMENT,
                format!("header {}: {error}", limits.tenant_header),
            )
        })?,
    };
    let body = axum::body::to_bytes(body, limits.max_request_bytes)
        .await
        .map_err(|error| {
            refusal(
                StatusCode::BAD_REQUEST,
                INVALID_ARGUMENT,
                format!(
                    "cannot read the request body (at most {} bytes, ingest.max_request_bytes): {error}",
                    limits.max_request_bytes
                ),
            )
        })?;
    if !gzipped {
        return Ok((tenant, body));
    }
    let unzipped = gunzip(&body, limits.max_decompressed_bytes)
        .map_err(|problem| refusal(StatusCode::BAD_REQUEST, INVALID_ARGUMENT, problem))?;
    Ok((tenant, unzipped))
}

/// The gzip body inflated, refused once it passes `limit` bytes (a zip bomb
/// stops there, never in memory).
fn gunzip(body: &[u8], limit: usize) -> Result<bytes::Bytes, String> {
    use std::io::Read;
    let mut inflated = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    let read = flate2::read::GzDecoder::new(body)
        .take(limit as u64 + 1)
        .read_to_end(&mut inflated)
        .map_err(|error| format!("invalid gzip body: {error}"))?;
    if read > limit {
        return Err(format!(
            "gzip body inflates past {limit} bytes (ingest.max_decompressed_bytes)"
        ));
    }
    Ok(bytes::Bytes::from(inflated))
}

/// An auth refusal as OTLP/HTTP answers every error: a `google.rpc.Status`
/// whose code is the gRPC one (UNAUTHENTICATED, PERMISSION_DENIED).
pub fn auth_refusal(error: &AuthError) -> Response {
    refusal(
        error.http_status(),
        error.grpc_status().code() as i32,
        error.to_string(),
    )
}

fn unavailable(message: String) -> Response {
    refusal(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE, message)
}

/// Reads, decodes (off the async threads) and folds one request with `fold`.
async fn handle<M, R>(
    ingest: OtlpIngest,
    headers: HeaderMap,
    body: Body,
    fold: fn(&OtlpIngest, &M, Arc<str>) -> Result<ExportAnswer, super::FoldError>,
    answer: fn(ExportAnswer) -> R,
) -> Response
where
    M: Bounded + 'static,
    R: Message + 'static,
{
    // Taken before the body is read, as for remote write: a flood holds at most
    // `limits.max_inflight_requests` bodies; 429 tells the sender to back off.
    let gate = ingest.engine().limits().gate().clone();
    let Some(_permit) = gate.try_enter() else {
        ingest.telemetry().overloaded("otlp_http");
        return refusal(
            StatusCode::TOO_MANY_REQUESTS,
            RESOURCE_EXHAUSTED,
            format!(
                "ingest is saturated: {} requests in flight (limits.max_inflight_requests); retry with backoff",
                gate.capacity()
            ),
        );
    };
    let (tenant, body) = match read(&ingest, &headers, body).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    let work = tokio::task::spawn_blocking(move || {
        let telemetry = ingest.telemetry();
        let _in_flight = telemetry.bytes_in_flight(body.len());
        let message = std::any::type_name::<M>().rsplit("::").next().unwrap_or("");
        // Estimated before prost builds the tree: a body of tiny entries is refused here.
        if let Err(error) = check::<M>(&body) {
            return refusal(StatusCode::BAD_REQUEST, INVALID_ARGUMENT, format!("{message}: {error}"));
        }
        match M::decode(body) {
            Err(error) => refusal(
                StatusCode::BAD_REQUEST,
                INVALID_ARGUMENT,
                format!("invalid protobuf {message}: {error}"),
            ),
            Ok(request) => match fold(&ingest, &request, tenant) {
                Ok(folded) => protobuf(answer(folded)),
                Err(closed) => unavailable(closed.to_string()),
            },
        }
    });
    work.await
        .unwrap_or_else(|error| unavailable(format!("ingest task failed: {error}")))
}

async fn traces(State(ingest): State<OtlpIngest>, headers: HeaderMap, body: Body) -> Response {
    handle::<ExportTraceServiceRequest, _>(ingest, headers, body, OtlpIngest::traces, trace_response).await
}

async fn metrics(State(ingest): State<OtlpIngest>, headers: HeaderMap, body: Body) -> Response {
    handle::<ExportMetricsServiceRequest, _>(ingest, headers, body, OtlpIngest::metrics, metrics_response).await
}
