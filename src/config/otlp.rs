//! The `otlp` section: OTLP/gRPC and OTLP/HTTP listen addresses (each off
//! unless set) and how spans become samples: metric name, built-in labels and a
//! bounded attribute-to-label mapping. Checked even while OTLP is off.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::error::ConfigError;
use super::process::defaults;
use super::security::{TlsConfig, TlsSettings};

/// OTLP ingest (traces and metrics).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// OTLP/gRPC listen address, e.g. `127.0.0.1:4317` (the OTLP convention). Default: none, off.
    pub grpc_listen: Option<String>,
    /// OTLP/HTTP (protobuf) listen address serving `POST /v1/traces` and `/v1/metrics`, e.g. `127.0.0.1:4318`. Default: none, off.
    pub http_listen: Option<String>,
    /// TLS of both OTLP listeners (`{cert_file, key_file}`, as `grpc.tls`). Default: none, plaintext.
    pub tls: Option<TlsConfig>,
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
    /// TLS of both listeners; `None` for plaintext.
    pub tls: Option<TlsSettings>,
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
            tls: None,
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
        // Read by the caller, which knows the config file's folder.
        tls: None,
        span_metric,
        span_labels,
        span_attributes,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::ServiceSettings;
    use super::*;

    fn parse(text: &str) -> Result<ServiceSettings, String> {
        ServiceSettings::parse(text, Path::new("conf/t.yaml")).map_err(|error| error.to_string())
    }

    #[test]
    fn otlp_is_off_by_default_with_the_four_span_labels() {
        let settings = parse("").unwrap();
        assert_eq!(settings.otlp, OtlpSettings::default());
        assert_eq!(settings.otlp.grpc_listen, None);
        assert_eq!(settings.otlp.span_metric, "span_duration_seconds");
        assert_eq!(settings.otlp.span_labels, SpanLabel::ALL.to_vec());
        assert_eq!(settings.engine.above_max_traces, defaults::ABOVE_MAX_TRACES);
        let on = parse(
            "otlp: {grpc_listen: \"127.0.0.1:4317\", http_listen: \"127.0.0.1:4318\", \
             spans: {metric: rpc_seconds, labels: [service_name, span_name], attributes: {http.route: route}}}\n\
             selections: {above_max_traces: 3}",
        )
        .unwrap();
        assert_eq!(on.otlp.grpc_listen.unwrap().port(), 4317);
        assert_eq!(on.otlp.http_listen.unwrap().port(), 4318);
        assert_eq!(on.otlp.span_metric, "rpc_seconds");
        assert_eq!(on.otlp.span_labels, vec![SpanLabel::ServiceName, SpanLabel::SpanName]);
        assert_eq!(
            on.otlp.span_attributes,
            vec![("http.route".to_string(), "route".to_string())]
        );
        assert_eq!(on.engine.above_max_traces, 3);
    }

    #[test]
    fn broken_otlp_sections_name_the_field() {
        let many: String = (0..17).map(|i| format!("a{i}: l{i}, ")).collect();
        for (text, needle) in [
            (
                "otlp: {grpc_listen: localhost}",
                "field otlp.grpc_listen: \"localhost\" is not a host:port",
            ),
            ("otlp: {http_listen: \":x\"}", "field otlp.http_listen"),
            (
                "otlp: {spans: {metric: \"9lives\"}}",
                "field otlp.spans.metric: \"9lives\" is not a metric name",
            ),
            (
                "otlp: {spans: {labels: [service]}}",
                "field otlp.spans.labels: \"service\" is none of",
            ),
            (
                "otlp: {spans: {attributes: {http.route: span_name}}}",
                "field otlp.spans.attributes.http.route: \"span_name\" is not a free label name",
            ),
            (
                "otlp: {spans: {attributes: {k: quantile}}}",
                "\"quantile\" is not a free label name",
            ),
            (
                "otlp: {spans: {attributes: {k: \"bad-name\"}}}",
                "\"bad-name\" is not a free label name",
            ),
            (
                &format!("otlp: {{spans: {{attributes: {{{many}}}}}}}"),
                "17 entries, at most 16",
            ),
            ("otlp: {port: 4317}", "unknown field `port`"),
            (
                "selections: {above_max_traces: 0}",
                "field selections.above_max_traces: 0 is outside 1..=1000",
            ),
        ] {
            let error = parse(text).err().unwrap_or_else(|| panic!("{text} was accepted"));
            assert!(error.contains(needle), "{text}: {error}");
            assert!(error.contains("conf/t.yaml"), "{error}");
        }
    }
}
