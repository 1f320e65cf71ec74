//! The operator's HTTP endpoints, merged into the HTTP server next to ingest:
//! `GET /metrics` (self-metrics, Prometheus text), `POST /-/reload` and
//! `GET /-/rules` (hot reload), `GET /api/v1/profile` (the metrics profiler),
//! `GET /api/v1/cluster` (placement, leaders, flush marks, from etcd),
//! `POST /api/v1/cluster/add|remove|replace` (placement changes) and
//! `POST /api/v1/cluster/drain` and `/undrain` (before a planned stop).
//! They reveal or change the service, so [`AdminAccess`] guards them: the
//! admin token when one is set (never an ingest token), else only a loopback
//! listener serves them.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::clock::Clock;
use crate::config::AdminToken;
use crate::engine::Engine;
use crate::ingest::auth::{constant_time_eq, Auth};
use crate::profile::ProfileQuery;
use crate::reload::RulesReloader;
use crate::telemetry::export::EngineGauges;
use crate::telemetry::Telemetry;

/// What the endpoints read.
#[derive(Clone)]
pub struct AdminState {
    /// The engine (open windows, profiler).
    pub engine: Arc<Engine>,
    /// The service counters.
    pub telemetry: Arc<Telemetry>,
    /// The rules reloader.
    pub reloader: Arc<RulesReloader>,
    /// The service clock.
    pub clock: Arc<dyn Clock>,
    /// In a cluster: etcd, for `GET /api/v1/cluster`.
    pub cluster: Option<Arc<crate::cluster::coordinator::Coordinator>>,
    /// The HTTP ingest state, whose `/-/ready` a drain turns to 503.
    pub ingest: crate::ingest::remote_write::HttpState,
}

/// Who may call the admin endpoints.
#[derive(Clone)]
pub enum AdminAccess {
    /// Requests bearing the admin token (`auth.admin_token_file`); ingest tokens are refused.
    Token {
        /// The admin token.
        token: Arc<[u8]>,
        /// The ingest tokens, to tell a misused one from a wrong one.
        ingest: Auth,
    },
    /// No admin token, and the HTTP listener is on a loopback address: anyone who can reach it.
    Loopback,
    /// No admin token, and the HTTP listener is reachable from other hosts: nobody.
    Closed,
}

impl AdminAccess {
    /// The access the settings give: the token when set, else open on a loopback listener only.
    pub fn new(token: Option<&AdminToken>, listener_is_loopback: bool, ingest: Auth) -> Self {
        match token {
            Some(token) => AdminAccess::Token {
                token: Arc::from(token.0.as_slice()),
                ingest,
            },
            None if listener_is_loopback => AdminAccess::Loopback,
            None => AdminAccess::Closed,
        }
    }

    /// `Err` with the refusal, or `Ok` when `authorization` may use the endpoints.
    fn check(&self, authorization: Option<&[u8]>) -> Result<(), (StatusCode, &'static str)> {
        match self {
            AdminAccess::Loopback => Ok(()),
            AdminAccess::Closed => Err((
                StatusCode::FORBIDDEN,
                "admin endpoints are off: http.listen is not a loopback address and auth.admin_token_file is not set",
            )),
            AdminAccess::Token { token, ingest } => {
                let Some(value) = authorization else {
                    return Err((
                        StatusCode::UNAUTHORIZED,
                        "missing admin token: send the header \"authorization: Bearer <admin token>\"",
                    ));
                };
                let sent = value
                    .get(..7)
                    .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
                    .map(|_| value[7..].trim_ascii())
                    .unwrap_or_default();
                if constant_time_eq(token, sent) {
                    return Ok(());
                }
                if ingest.is_on() && matches!(ingest.tenant_of(Some(value), None), Ok(Some(_))) {
                    return Err((StatusCode::FORBIDDEN, "an ingest token cannot use the admin endpoints"));
                }
                Err((StatusCode::UNAUTHORIZED, "invalid admin token"))
            }
        }
    }
}

async fn require_admin(State(access): State<AdminAccess>, request: Request, next: Next) -> Response {
    let authorization = request.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes);
    match access.check(authorization) {
        Ok(()) => next.run(request).await,
        Err((status, reason)) => {
            let mut response = (status, format!("{reason}\n")).into_response();
            if status == StatusCode::UNAUTHORIZED {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            response
        }
    }
}

/// The routes behind `access`, ready to merge into the HTTP router.
pub fn admin_router(state: AdminState, access: AdminAccess) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/-/reload", post(reload))
        .route("/-/rules", get(rules))
        .route("/api/v1/profile", get(profile))
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/cluster/drain", post(drain))
        .route("/api/v1/cluster/undrain", post(undrain))
        .route("/api/v1/cluster/{change}", post(cluster_change))
        .route_layer(axum::middleware::from_fn_with_state(access, require_admin))
        .with_state(state)
}

fn json(status: StatusCode, body: &impl serde::Serialize) -> Response {
    match serde_json::to_string_pretty(body) {
        Ok(text) => (status, [(header::CONTENT_TYPE, "application/json")], text + "\n").into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response(),
    }
}

/// The cluster's status as etcd has it (any instance answers for all).
async fn cluster(State(state): State<AdminState>) -> Response {
    let Some(coordinator) = &state.cluster else {
        return not_clustered();
    };
    let cluster = &coordinator.view().settings().cluster;
    match crate::cluster::status::ClusterStatus::read(coordinator.client(), cluster).await {
        Ok(Some(status)) => json(StatusCode::OK, &status),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            format!("cluster {cluster}: no placement in etcd\n"),
        )
            .into_response(),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n")).into_response(),
    }
}

fn not_clustered() -> Response {
    (
        StatusCode::NOT_FOUND,
        "not a cluster instance: no cluster section in its config\n",
    )
        .into_response()
}

/// Drains this instance (409 with the reason when its set would have no ready replica).
async fn drain(State(state): State<AdminState>) -> Response {
    let Some(coordinator) = &state.cluster else {
        return not_clustered();
    };
    match coordinator.drain(state.clock.now_ms()).await {
        Ok(answer) => {
            state.ingest.set_draining(true);
            json(StatusCode::OK, &answer)
        }
        Err(error @ crate::cluster::drain::DrainError::NoReadyReplica { .. }) => {
            (StatusCode::CONFLICT, format!("{error}\n")).into_response()
        }
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n")).into_response(),
    }
}

/// Ends this instance's drain.
async fn undrain(State(state): State<AdminState>) -> Response {
    let Some(coordinator) = &state.cluster else {
        return not_clustered();
    };
    let answer = coordinator.undrain().await;
    state.ingest.set_draining(false);
    json(StatusCode::OK, &answer)
}

/// Stages a placement change, as `tailfold cluster add|remove|replace` does:
/// `add?instance=SPEC` (repeated), `remove?instance=ID` (repeated),
/// `replace?old=ID&new=SPEC`, SPEC being `ID=HOST:PORT[,http=HOST:PORT]`
/// URL-encoded. 409 when refused (another change in flight, no live replica).
async fn cluster_change(
    State(state): State<AdminState>,
    axum::extract::Path(change): axum::extract::Path<String>,
    uri: Uri,
) -> Response {
    use crate::cluster::change::{ChangeError, Request};
    use crate::cluster::cli::parse_instance;
    let Some(coordinator) = &state.cluster else {
        return not_clustered();
    };
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(uri.query().unwrap_or("")).unwrap_or_default();
    let all = |name: &str| -> Vec<String> {
        pairs
            .iter()
            .filter(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
            .collect()
    };
    let request = match change.as_str() {
        "add" => all("instance")
            .iter()
            .map(|text| parse_instance(text))
            .collect::<Result<Vec<_>, _>>()
            .map(Request::Add),
        "remove" => Ok(Request::Remove(all("instance"))),
        "replace" => match (all("old").pop(), all("new").pop()) {
            (Some(old), Some(new)) => parse_instance(&new).map(|new| Request::Replace { old, new }),
            _ => Err("replace needs old=ID and new=ID=HOST:PORT[,http=HOST:PORT]".to_string()),
        },
        other => Err(format!("unknown placement change {other:?}: add, remove or replace")),
    };
    let request = match request {
        Ok(Request::Add(specs)) if specs.is_empty() => Err("add needs instance=ID=HOST:PORT[,http=HOST:PORT]".into()),
        Ok(Request::Remove(ids)) if ids.is_empty() => Err("remove needs instance=ID".into()),
        other => other,
    };
    let request = match request {
        Ok(request) => request,
        Err(error) => return (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response(),
    };
    let settings = coordinator.view().settings();
    let staged = crate::cluster::change::stage(
        coordinator.client(),
        &settings.cluster,
        &request,
        settings.handoff_margin_ms,
        state.clock.now_ms(),
    )
    .await;
    match staged {
        Ok(staged) => json(StatusCode::OK, &staged),
        Err(error @ (ChangeError::Etcd(_) | ChangeError::Placement(_))) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n")).into_response()
        }
        Err(error @ ChangeError::Invalid { .. }) => (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response(),
        Err(error) => (StatusCode::CONFLICT, format!("{error}\n")).into_response(),
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let work = tokio::task::spawn_blocking(move || {
        let open = state
            .engine
            .open_by_tenant_and_policy()
            .into_iter()
            .map(|((tenant, policy), (series, windows))| (tenant.to_string(), policy.to_string(), series, windows))
            .collect();
        let gauges = EngineGauges {
            open,
            cached_series: state.engine.cached_series() as u64,
            now_ms: state.clock.now_ms(),
            rules_loaded_ms: Some(state.reloader.loaded_at_ms()),
        };
        state.telemetry.exporter().render(&state.telemetry.snapshot(), &gauges)
    });
    match work.await {
        Ok(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            text,
        )
            .into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response(),
    }
}

async fn reload(State(state): State<AdminState>) -> Response {
    let reloader = Arc::clone(&state.reloader);
    match tokio::task::spawn_blocking(move || reloader.reload("POST /-/reload")).await {
        Ok(Ok(outcome)) => json(StatusCode::OK, &outcome),
        Ok(Err(error)) => (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response(),
    }
}

async fn rules(State(state): State<AdminState>) -> Response {
    json(StatusCode::OK, &state.reloader.status())
}

async fn profile(State(state): State<AdminState>, uri: Uri) -> Response {
    let Some(profiler) = state.engine.profiler() else {
        return (StatusCode::NOT_FOUND, "the profiler is off (profile.enabled: false)\n").into_response();
    };
    let query = match parse_query(uri.query().unwrap_or("")) {
        Ok(query) => query,
        Err(message) => return (StatusCode::BAD_REQUEST, format!("{message}\n")).into_response(),
    };
    let profiler = Arc::clone(profiler);
    let now_ms = state.clock.now_ms();
    match tokio::task::spawn_blocking(move || profiler.report(now_ms, &query)).await {
        Ok(report) => json(StatusCode::OK, &report),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response(),
    }
}

/// `tenant=..&metric=..&limit=..`, percent-decoded.
fn parse_query(text: &str) -> Result<ProfileQuery, String> {
    let mut query = ProfileQuery::default();
    for pair in text.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value).ok_or_else(|| format!("query parameter {name}: bad percent-encoding"))?;
        match name {
            "tenant" => query.tenant = Some(value),
            "metric" => query.metric = Some(value),
            "limit" => {
                query.limit = Some(
                    value
                        .parse()
                        .map_err(|_| format!("query parameter limit: {value:?} is not a whole number"))?,
                )
            }
            other => {
                return Err(format!(
                    "unknown query parameter {other:?} (expected tenant, metric, limit)"
                ))
            }
        }
    }
    Ok(query)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(index + 1..index + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                index += 3;
            }
            b'+' => {
                out.push(b' ');
                index += 1;
            }
            byte => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_parsed_and_bad_input_named() {
        let query = parse_query("tenant=team%20a&metric=http_requests_total&limit=5").unwrap();
        assert_eq!(query.tenant.as_deref(), Some("team a"));
        assert_eq!(query.metric.as_deref(), Some("http_requests_total"));
        assert_eq!(query.limit, Some(5));
        assert!(parse_query("limit=many").unwrap_err().contains("\"many\""));
        assert!(parse_query("colour=red").unwrap_err().contains("colour"));
        assert!(parse_query("tenant=%zz").is_err());
    }
}
