//! The `otlp` section: OTLP/gRPC and OTLP/HTTP listen addresses (each off
//! unless set) and how spans become samples: metric name, built-in labels and a
//! bounded attribute-to-label mapping. Checked even while OTLP is off.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::error::ConfigError;
use super::process::defaults;

/// OTLP ingest (traces and metrics).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// OTLP/gRPC listen address, e.g. `127.0.0.1:4317` (the OTLP convention). Default: none, off.
    pub grpc_listen: Option<String>,
    /// OTLP/HTTP (protobuf) listen address serving `POST /v1/traces` and `/v1/metrics`, e.g. `127.0.0.1:4318`. Default: none, off.
    pub http_listen: Option<String>,
    /// How spans become distribution samples.
    pub spans: SpanConfig,
}

/// Spans -> samples.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SpanConfig {
    /// Metric name of span durations (in seconds). Default `span_duration_seconds`.
    pub metric: Option<String>,
    /// Built-in labels to set, from `service_name`, `span_name`, `span_kind`, `status_code`. Default: all four.
    pub labels: Option<Vec<String>>,
    /// Extra labels from attributes: attribute key (span attribute first, then resource attribute) -> label name.
    /// At most 16 entries, so attributes never bring unbounded cardinality unless listed. Default: none.
    pub attributes: BTreeMap<String, String>,
}

/// A built-in span label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanLabel {
    /// `service.name` of the resource.
    ServiceName,
    /// The span's name.
    SpanName,
    /// `internal`, `server`, `client`, `producer`, `consumer` or `unspecified`.
    SpanKind,
    /// `ok`, `error` or `unset`.
    StatusCode,
}

impl SpanLabel {
    /// Every built-in label, in config order.
    pub const ALL: [SpanLabel; 4] = [
        SpanLabel::ServiceName,
        SpanLabel::SpanName,
        SpanLabel::SpanKind,
        SpanLabel::StatusCode,
    ];

    /// The label name (and config value).
    pub fn as_str(self) -> &'static str {
        match self {
            SpanLabel::ServiceName => "service_name",
            SpanLabel::SpanName => "span_name",
            SpanLabel::SpanKind => "span_kind",
            SpanLabel::StatusCode => "status_code",
        }
    }
}

/// Checked OTLP settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpSettings {
    /// OTLP/gRPC listen address, when on.
    pub grpc_listen: Option<SocketAddr>,
    /// OTLP/HTTP listen address, when on.
    pub http_listen: Option<SocketAddr>,
    /// Metric name of span durations.
    pub span_metric: String,
    /// Built-in labels set on span samples.
    pub span_labels: Vec<SpanLabel>,
    /// `(attribute key, label name)` pairs, sorted by key.
    pub span_attributes: Vec<(String, String)>,
}

impl Default for OtlpSettings {
    fn default() -> Self {
        OtlpSettings {
            grpc_listen: None,
            http_listen: None,
            span_metric: defaults::OTLP_SPAN_METRIC.to_string(),
            span_labels: SpanLabel::ALL.to_vec(),
            span_attributes: Vec::new(),
        }
    }
}

fn is_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.starts_with("__")
}

/// Checks the `otlp` section even when it is off.
pub(super) fn check_otlp(
    config: &OtlpConfig,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<OtlpSettings, ConfigError> {
    let address = |field: &str, text: &Option<String>, example: &str| -> Result<Option<SocketAddr>, ConfigError> {
        text.as_deref()
            .map(|text| {
                text.parse()
                    .map_err(|_| invalid(field, format!("{text:?} is not a host:port address such as {example}")))
            })
            .transpose()
    };
    let grpc_listen = address("otlp.grpc_listen", &config.grpc_listen, "127.0.0.1:4317")?;
    let http_listen = address("otlp.http_listen", &config.http_listen, "127.0.0.1:4318")?;
    let span_metric = config
        .spans
        .metric
        .clone()
        .unwrap_or_else(|| defaults::OTLP_SPAN_METRIC.to_string());
    let metric_ok = span_metric
        .bytes()
        .enumerate()
        .all(|(i, b)| b.is_ascii_alphabetic() || b == b'_' || b == b':' || (i > 0 && b.is_ascii_digit()));
    if span_metric.is_empty() || !metric_ok {
        return Err(invalid(
            "otlp.spans.metric",
            format!("{span_metric:?} is not a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)"),
        ));
    }
    let span_labels = match &config.spans.labels {
        None => SpanLabel::ALL.to_vec(),
        Some(names) => {
            let mut labels = Vec::new();
            for name in names {
                let label = SpanLabel::ALL
                    .into_iter()
                    .find(|label| label.as_str() == name)
                    .ok_or_else(|| {
                        invalid(
                            "otlp.spans.labels",
                            format!("{name:?} is none of service_name, span_name, span_kind, status_code"),
                        )
                    })?;
                if !labels.contains(&label) {
                    labels.push(label);
                }
            }
            labels
        }
    };
    if config.spans.attributes.len() > defaults::OTLP_MAX_SPAN_ATTRIBUTES {
        return Err(invalid(
            "otlp.spans.attributes",
            format!(
                "{} entries, at most {} are allowed",
                config.spans.attributes.len(),
                defaults::OTLP_MAX_SPAN_ATTRIBUTES
            ),
        ));
    }
    let mut span_attributes = Vec::new();
    for (key, label) in &config.spans.attributes {
        let field = format!("otlp.spans.attributes.{key}");
        if key.is_empty() {
            return Err(invalid(&field, "the attribute key is empty".to_string()));
        }
        let taken = span_labels.iter().any(|builtin| builtin.as_str() == label)
            || span_attributes.iter().any(|(_, other)| other == label);
        if !is_label_name(label) || matches!(label.as_str(), "quantile" | "threshold") || taken {
            return Err(invalid(
                &field,
                format!("{label:?} is not a free label name (not reserved, not used by another label)"),
            ));
        }
        span_attributes.push((key.clone(), label.clone()));
    }
    Ok(OtlpSettings {
        grpc_listen,
        http_listen,
        span_metric,
        span_labels,
        span_attributes,
    })
}
