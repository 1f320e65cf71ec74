//! `GET /api/v1/selections`: the trace selections of a time range, read back
//! from the selection files, filtered by tenant, metric glob, labels and
//! aggregation, answered as JSON lines (the same records the gRPC stream sends).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::ingest::validate::check_tenant;
use crate::model::METRIC_NAME_LABEL;

use super::file_store::utc_compact;
use super::selections::{SelectionRecord, SELECTION_SEGMENT_MS};

/// Longest range one query may scan (31 days of hourly files).
const MAX_RANGE_MS: i64 = 31 * 24 * 3_600_000;

/// What the query handler needs: where selection files are (`None`: files are off).
#[derive(Clone)]
pub struct SelectionQuery {
    dir: Option<PathBuf>,
    tenant_header: String,
}

impl SelectionQuery {
    /// Answers from the files under `dir`; `tenant_header` restricts a query to the tenant it names.
    pub fn new(dir: Option<PathBuf>, tenant_header: String) -> Self {
        SelectionQuery { dir, tenant_header }
    }
}

/// The route `GET /api/v1/selections`.
pub fn selection_router(query: SelectionQuery) -> Router {
    Router::new()
        .route("/api/v1/selections", get(selections))
        .with_state(query)
}

/// A parsed query.
struct Filter {
    start_ms: i64,
    end_ms: i64,
    tenant: Option<String>,
    metric: Option<globset::GlobMatcher>,
    labels: Vec<(String, String)>,
    aggregation: Option<String>,
}

impl Filter {
    /// Parses `start_ms`, `end_ms` (required), `tenant`, `metric` (glob),
    /// `aggregation` and repeated `label=name=value`.
    fn parse(query: &str, header_tenant: Option<String>) -> Result<Filter, String> {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(query).map_err(|error| format!("invalid query string: {error}"))?;
        let mut start_ms = None;
        let mut end_ms = None;
        let mut filter = Filter {
            start_ms: 0,
            end_ms: 0,
            tenant: header_tenant.clone(),
            metric: None,
            labels: Vec::new(),
            aggregation: None,
        };
        let number = |name: &str, value: &str| {
            value
                .parse::<i64>()
                .map_err(|_| format!("{name}={value:?} is not milliseconds since the epoch"))
        };
        for (name, value) in pairs {
            match name.as_str() {
                "start_ms" => start_ms = Some(number("start_ms", &value)?),
                "end_ms" => end_ms = Some(number("end_ms", &value)?),
                "tenant" => {
                    if header_tenant.as_ref().is_some_and(|header| *header != value) {
                        return Err(format!("tenant {value:?} differs from the tenant header"));
                    }
                    filter.tenant = Some(value);
                }
                "metric" => {
                    let glob = globset::Glob::new(&value).map_err(|error| format!("metric glob {value:?}: {error}"))?;
                    filter.metric = Some(glob.compile_matcher());
                }
                "aggregation" => filter.aggregation = Some(value),
                "label" => {
                    let (label, wanted) = value
                        .split_once('=')
                        .ok_or_else(|| format!("label={value:?} is not name=value"))?;
                    filter.labels.push((label.to_string(), wanted.to_string()));
                }
                other => return Err(format!("unknown parameter {other:?}")),
            }
        }
        filter.start_ms = start_ms.ok_or("start_ms is required")?;
        filter.end_ms = end_ms.ok_or("end_ms is required")?;
        if filter.end_ms <= filter.start_ms {
            return Err(format!(
                "end_ms {} is not after start_ms {}",
                filter.end_ms, filter.start_ms
            ));
        }
        if filter.end_ms - filter.start_ms > MAX_RANGE_MS {
            return Err(format!("range is longer than {MAX_RANGE_MS} ms (31 days)"));
        }
        Ok(filter)
    }

    /// Whether a selection's window starts in the range and it matches every filter.
    fn matches(&self, selection: &SelectionRecord) -> bool {
        let name = selection
            .series
            .get(METRIC_NAME_LABEL)
            .map(String::as_str)
            .unwrap_or("");
        selection.window_start_ms >= self.start_ms
            && selection.window_start_ms < self.end_ms
            && self.tenant.as_ref().is_none_or(|tenant| *tenant == selection.tenant)
            && self.metric.as_ref().is_none_or(|glob| glob.is_match(name))
            && self.aggregation.as_ref().is_none_or(|a| *a == selection.aggregation)
            && self
                .labels
                .iter()
                .all(|(label, value)| selection.series.get(label) == Some(value))
    }
}

async fn selections(State(query): State<SelectionQuery>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let header_tenant = match headers.get(query.tenant_header.as_str()) {
        None => None,
        Some(value) => match check_tenant(value.as_bytes()) {
            Ok(tenant) => Some(tenant.to_string()),
            Err(error) => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("header {}: {error}\n", query.tenant_header),
                )
                    .into_response()
            }
        },
    };
    let filter = match Filter::parse(raw.as_deref().unwrap_or(""), header_tenant) {
        Ok(filter) => filter,
        Err(error) => return (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response(),
    };
    let Some(dir) = query.dir.clone() else {
        return (
            StatusCode::NOT_FOUND,
            "selection files are off (selections.file: false); use the gRPC Selections stream\n",
        )
            .into_response();
    };
    match tokio::task::spawn_blocking(move || read_range(&dir, &filter)).await {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response(),
        Ok(Err(error)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("query task failed: {error}\n"),
        )
            .into_response(),
    }
}

/// Reads the hourly files covering the range and keeps matching selections as
/// JSON lines. A line that does not parse (a torn write) is skipped.
fn read_range(dir: &std::path::Path, filter: &Filter) -> Result<String, String> {
    let mut out = String::new();
    let mut hour = filter.start_ms.div_euclid(SELECTION_SEGMENT_MS) * SELECTION_SEGMENT_MS;
    while hour < filter.end_ms {
        let path = dir.join(format!("{}.jsonl", utc_compact(hour)));
        hour += SELECTION_SEGMENT_MS;
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
        };
        for line in BufReader::new(file).lines() {
            let line = line.map_err(|error| format!("cannot read {}: {error}", path.display()))?;
            let Ok(selection) = serde_json::from_str::<SelectionRecord>(&line) else {
                continue;
            };
            if filter.matches(&selection) {
                out.push_str(&line);
                out.push('\n');
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_queries_are_refused_with_the_reason() {
        for (query, problem) in [
            ("end_ms=10", "start_ms is required"),
            ("start_ms=10", "end_ms is required"),
            ("start_ms=x&end_ms=10", "not milliseconds"),
            ("start_ms=10&end_ms=10", "not after"),
            ("start_ms=0&end_ms=9999999999999", "longer than"),
            ("start_ms=0&end_ms=10&label=nolabel", "not name=value"),
            ("start_ms=0&end_ms=10&metric=[", "metric glob"),
            ("start_ms=0&end_ms=10&color=red", "unknown parameter"),
        ] {
            let error = Filter::parse(query, None)
                .err()
                .unwrap_or_else(|| panic!("{query} was accepted"));
            assert!(error.contains(problem), "{query}: {error}");
        }
        let error = Filter::parse("start_ms=0&end_ms=10&tenant=b", Some("a".into()))
            .err()
            .unwrap();
        assert!(error.contains("differs"), "{error}");
    }
}
