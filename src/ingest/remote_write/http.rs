//! The HTTP listener: Prometheus remote write 1.0 (`POST /api/v1/write`),
//! `GET /-/healthy` and `GET /-/ready`. Status codes follow the spec: 204
//! accepted, 4xx never retried by the sender, 5xx retried with backoff.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::clock::Clock;
use crate::cluster::stage::Stage;
use crate::config::IngestLimits;
use crate::engine::Engine;
use crate::ingest::grpc::rate_limited_message;
use crate::ingest::validate::check_tenant;
use crate::model::{DropReason, Outcome};
use crate::telemetry::Telemetry;
use crate::wal::Wal;

use super::decode::{decode_body, decompress, RemoteWriteError};

/// The only protobuf message this endpoint reads (remote write 1.0).
const MESSAGE: &str = "prometheus.WriteRequest";

/// A refusal: status and plain-text reason.
type Refusal = (StatusCode, String);

/// What the HTTP handlers share: the engine and the ingest settings.
#[derive(Clone)]
pub struct HttpState(Arc<Shared>);

struct Shared {
    engine: Arc<Engine>,
    limits: IngestLimits,
    clock: Arc<dyn Clock>,
    telemetry: Arc<Telemetry>,
    ready: AtomicBool,
    /// Drained (`tailfold cluster drain`): `/-/ready` tells balancers to send elsewhere.
    draining: AtomicBool,
    /// Where admitted batches go: logged and folded here, or routed to their shards' replicas.
    stage: Stage,
}

impl HttpState {
    /// State feeding `engine`, ready from the start.
    pub fn new(engine: Arc<Engine>, limits: IngestLimits, clock: Arc<dyn Clock>, telemetry: Arc<Telemetry>) -> Self {
        HttpState(Arc::new(Shared {
            stage: Stage::local(Arc::clone(&engine), None),
            engine,
            limits,
            clock,
            telemetry,
            ready: AtomicBool::new(true),
            draining: AtomicBool::new(false),
        }))
    }

    /// Logs every batch in `wal` before folding it (call before the state is cloned).
    pub fn with_wal(self, wal: Option<Arc<Wal>>) -> Self {
        let stage = Stage::local(Arc::clone(&self.0.engine), wal);
        self.with_stage(stage)
    }

    /// Hands admitted batches to `stage` (a cluster's router; call before the state is cloned).
    pub fn with_stage(mut self, stage: Stage) -> Self {
        match Arc::get_mut(&mut self.0) {
            Some(shared) => shared.stage = stage,
            None => tracing::error!("HttpState::with_stage after the state was shared; the stage is not used"),
        }
        self
    }

    /// Sets what `/-/ready` answers; the server clears it when shutdown begins.
    pub fn set_ready(&self, ready: bool) {
        self.0.ready.store(ready, Ordering::Relaxed);
    }

    /// Makes `/-/ready` answer 503 while the cluster instance is drained
    /// (ingest stays open for the senders that still come).
    pub fn set_draining(&self, draining: bool) {
        self.0.draining.store(draining, Ordering::Relaxed);
    }
}

/// The HTTP routes: remote write, health and readiness (no auth; the server
/// wraps [`ingest_router`] in `Auth::protect` instead).
pub fn http_router(state: HttpState) -> Router {
    ingest_router(state.clone()).merge(probe_router(state))
}

/// The ingest routes (`POST /api/v1/write`): what bearer-token auth guards.
pub fn ingest_router(state: HttpState) -> Router {
    Router::new().route("/api/v1/write", post(write)).with_state(state)
}

/// The probes (`/-/healthy`, `/-/ready`): open even with auth on.
pub fn probe_router(state: HttpState) -> Router {
    Router::new()
        .route("/-/healthy", get(|| async { "ok\n" }))
        .route("/-/ready", get(ready))
        .with_state(state)
}

async fn ready(State(state): State<HttpState>) -> Response {
    if !state.0.ready.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else if state.0.draining.load(Ordering::Relaxed) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "draining: send to another instance (this one still takes writes until stopped)\n",
        )
            .into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

async fn write(State(state): State<HttpState>, headers: HeaderMap, body: Body) -> Response {
    match receive(state, &headers, body).await {
        Ok(None) => StatusCode::NO_CONTENT.into_response(),
        // Still a success (a retry would count the points twice in the outputs
        // that took them), but the answer says which outputs refused what.
        Ok(Some(refused)) => (StatusCode::OK, format!("{refused}\n")).into_response(),
        Err((status, reason)) => (status, format!("{reason}\n")).into_response(),
    }
}

fn bad_request(error: RemoteWriteError) -> Refusal {
    (StatusCode::BAD_REQUEST, error.to_string())
}

/// `Some` text when some output refused points of an accepted request.
async fn receive(state: HttpState, headers: &HeaderMap, body: Body) -> Result<Option<String>, Refusal> {
    check_content_headers(headers).map_err(|error| (StatusCode::UNSUPPORTED_MEDIA_TYPE, error.to_string()))?;
    let limits = &state.0.limits;
    let tenant = match headers.get(limits.tenant_header.as_str()) {
        None => Arc::from(limits.default_tenant.as_str()),
        Some(value) => check_tenant(value.as_bytes()).map_err(|source| {
            bad_request(RemoteWriteError::Tenant {
                header: limits.tenant_header.clone(),
                source,
            })
        })?,
    };
    // Taken before the body is read, so a flood cannot hold more than
    // `limits.max_inflight_requests` bodies in memory; 429 tells the sender to back off.
    let Some(permit) = state.0.engine.limits().gate().try_enter() else {
        state.0.telemetry.overloaded("remote_write");
        return Err((
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "ingest is saturated: {} requests in flight (limits.max_inflight_requests); retry with backoff",
                state.0.engine.limits().gate().capacity()
            ),
        ));
    };
    // Bounds the compressed body; the decompressed size is bounded in `decompress`.
    let limit = limits.max_request_bytes;
    let body = axum::body::to_bytes(body, limit).await.map_err(|error| {
        bad_request(RemoteWriteError::Body {
            limit,
            message: error.to_string(),
        })
    })?;
    // Decompressing, decoding and folding a large request is CPU work: keep it
    // off the async worker threads.
    let shared = Arc::clone(&state.0);
    tokio::task::spawn_blocking(move || {
        let result = shared.ingest(body, tenant);
        drop(permit);
        result
    })
    .await
    .map_err(|error| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("ingest task failed: {error}"),
        )
    })?
}

/// Accepts a missing or `snappy` `Content-Encoding`, and any `Content-Type`
/// that does not name another protobuf message (remote write 2.0 sends
/// `proto=io.prometheus.write.v2.Request` and expects 415 from a 1.0 receiver).
fn check_content_headers(headers: &HeaderMap) -> Result<(), RemoteWriteError> {
    if let Some(value) = headers.get(header::CONTENT_ENCODING) {
        let encoding = String::from_utf8_lossy(value.as_bytes());
        let encoding = encoding.trim();
        if !encoding.is_empty() && !encoding.eq_ignore_ascii_case("snappy") {
            return Err(RemoteWriteError::UnsupportedEncoding(encoding.to_string()));
        }
    }
    if let Some(value) = headers.get(header::CONTENT_TYPE) {
        let content_type = String::from_utf8_lossy(value.as_bytes());
        let message = content_type
            .split(';')
            .skip(1)
            .filter_map(|parameter| parameter.trim().strip_prefix("proto="))
            .map(|message| message.trim_matches('"'))
            .next();
        if message.is_some_and(|message| message != MESSAGE) {
            return Err(RemoteWriteError::UnsupportedContentType(content_type.to_string()));
        }
    }
    Ok(())
}

impl Shared {
    /// Decodes, validates and folds one request body. A request that can never
    /// succeed, or that held anything invalid (the valid rest is kept, as the
    /// spec allows), gets 400; a closing engine gets 503 so the sender retries.
    fn ingest(&self, body: bytes::Bytes, tenant: Arc<str>) -> Result<Option<String>, Refusal> {
        let bytes = decompress(&body, self.limits.max_decompressed_bytes).map_err(bad_request)?;
        // The compressed body is not needed any more: only the decompressed one is held while decoding.
        drop(body);
        let _in_flight = self.telemetry.bytes_in_flight(bytes.len());
        let tenant_name = Arc::clone(&tenant);
        let decoded = match decode_body(&bytes, tenant, &self.limits) {
            Ok(decoded) => decoded,
            Err(error) => {
                if let RemoteWriteError::TooManyPoints { points, .. } = error {
                    let mut outcome = Outcome::default();
                    outcome.reject(DropReason::InvalidSeries, points);
                    self.telemetry.received_by("remote_write", &tenant_name, points);
                    self.telemetry.ingested_by("remote_write", &tenant_name, &outcome);
                }
                return Err(bad_request(error));
            }
        };
        drop(bytes);
        let points = decoded.outcome.rejected_total()
            + decoded.stale_markers
            + decoded
                .batch
                .series
                .iter()
                .map(|series| (series.points.len() + series.histograms.len()) as u64)
                .sum::<u64>();
        self.telemetry.received_by("remote_write", &tenant_name, points);
        if decoded.nothing_valid() {
            self.telemetry
                .ingested_by("remote_write", &tenant_name, &decoded.outcome);
            self.telemetry.stale_markers(decoded.stale_markers);
            return Err((
                StatusCode::BAD_REQUEST,
                format!("every series in the request was refused: {}", decoded.error_text()),
            ));
        }
        let now_ms = self.clock.now_ms();
        let (admitted, limited) = self.engine.admit(&decoded.batch, now_ms);
        // Acknowledged only once logged (WAL) or taken by every live replica; a failure is a 503
        // the sender retries. Only what passed the limits goes on.
        let folded = self
            .stage
            .fold_blocking(&admitted, now_ms, limited)
            .map_err(|error| (StatusCode::SERVICE_UNAVAILABLE, error.to_string()))?;
        let mut outcome = decoded.outcome.clone();
        outcome.merge(&folded);
        self.telemetry.ingested_by("remote_write", &tenant_name, &outcome);
        self.telemetry.stale_markers(decoded.stale_markers);
        if let Some(message) = rate_limited_message(&decoded.batch.tenant, &folded) {
            return Err((StatusCode::TOO_MANY_REQUESTS, message));
        }
        if decoded.error_count > 0 {
            let refused = folded.output_refusals_text();
            return Err((
                StatusCode::BAD_REQUEST,
                format!(
                    "refused {} series or histograms, accepted the rest: {}{}{refused}",
                    decoded.error_count,
                    decoded.error_text(),
                    if refused.is_empty() { "" } else { "; " },
                ),
            ));
        }
        Ok((!folded.output_refusals.is_empty()).then(|| folded.output_refusals_text()))
    }
}
