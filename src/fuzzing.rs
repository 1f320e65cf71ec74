//! Entry points of the fuzz targets (`fuzz/`): one per parser of hostile
//! input; what an ingest parser accepts is then folded and flushed too. The
//! corpus replay test (`tests/fuzz_corpora.rs`) calls the same functions, so
//! every input a fuzzer kept is checked on every CI run.

use std::sync::Arc;

use prost::Message;

use crate::api::otlp::collector::metrics::v1::ExportMetricsServiceRequest;
use crate::api::otlp::collector::trace::v1::ExportTraceServiceRequest;
use crate::config::{IngestLimits, OtlpSettings, StatsdSettings};
use crate::engine::{Engine, EngineSettings};
use crate::ingest::grpc_decode::decode_write;
use crate::ingest::otlp::{check_bound, decode_metrics, decode_spans};
use crate::ingest::remote_write::decode::{decode_body, decompress};
use crate::ingest::statsd::DatagramDecoder;
use crate::model::IngestBatch;
use crate::rules::RuleSet;

/// Decompressed bytes a fuzz input may expand to (keeps runs fast and memory flat).
const FUZZ_DECOMPRESSED_BYTES: usize = 1 << 20;

/// Event time of the fuzz engine's clock; inputs stamp samples around it or not at all.
const NOW_MS: i64 = 1_800_000_000_000;

/// Rules giving every kind every aggregation family, so folding reaches all of them.
const FOLD_RULES: &str = r#"
defaults:
  storage_policies: ["10s:2d", "1m:30d"]
mapping_rules:
  - name: everything
    filter: '__name__:*'
    aggregations: [count, sum, rate, total, last, min, max, mean, stdev, p50, p999, above(1), below(0.5), histogram]
rollup_rules:
  - name: rolled
    filter: '__name__:*'
    rollup:
      name: rolled
      group_by: [job]
      aggregations: [sum, p99]
"#;

/// Folds a decoded batch into a fresh engine and flushes every window, so
/// hostile values reach the aggregation and flush code, not only the decoder.
/// Returns the records flushed.
fn fold(batch: &IngestBatch) -> usize {
    if batch.series.is_empty() {
        return 0;
    }
    // Checked by the tests below; never fails.
    let Ok(rules) = RuleSet::parse(FOLD_RULES, "fuzz-fold-rules.yaml") else {
        return 0;
    };
    let engine = Engine::new(
        EngineSettings {
            shards: 1,
            ..EngineSettings::default()
        },
        rules,
    );
    let _ = engine.ingest(batch, NOW_MS);
    // A second fold of the same batch reaches the cumulative (running total) paths.
    let _ = engine.ingest(batch, NOW_MS + 15_000);
    engine.flush_all(NOW_MS + 120_000, drop).records
}

/// Limits small enough that fuzz inputs reach every limit check.
fn limits() -> IngestLimits {
    IngestLimits {
        max_labels_per_series: 8,
        max_label_name_bytes: 32,
        max_label_value_bytes: 64,
        max_points_per_request: 4096,
        max_request_bytes: FUZZ_DECOMPRESSED_BYTES,
        max_decompressed_bytes: FUZZ_DECOMPRESSED_BYTES,
        ..IngestLimits::default()
    }
}

/// Remote write: a first byte with the low bit set means the rest is a snappy
/// block (as on the wire); otherwise the rest is the bare protobuf, so the
/// fuzzer reaches the decoder without having to learn snappy first.
pub fn remote_write(data: &[u8]) {
    let Some((mode, body)) = data.split_first() else {
        return;
    };
    let limits = limits();
    let decompressed;
    let bytes = if mode & 1 == 1 {
        match decompress(body, limits.max_decompressed_bytes) {
            Ok(bytes) => {
                decompressed = bytes;
                &decompressed[..]
            }
            Err(_) => return,
        }
    } else {
        body
    };
    let Ok(decoded) = decode_body(bytes, Arc::from("fuzz"), &limits) else {
        return;
    };
    let _ = decoded.error_text();
    fold(&decoded.batch);
}

/// statsd: one datagram through the decoder the UDP listener uses.
pub fn statsd(data: &[u8]) {
    let settings = StatsdSettings {
        listen: ([127, 0, 0, 1], 0).into(),
        tenant: "fuzz".to_string(),
        max_packet_bytes: 1432,
        max_gauges: 100,
        gauge_idle_ms: 60_000,
        readers: 1,
        batch_datagrams: 1,
        batch_wait_ms: 0,
        receive_buffer_bytes: 65_536,
        limits: limits(),
    };
    let mut decoder = DatagramDecoder::new(&settings);
    decoder.decode(data);
    fold(&decoder.batch);
}

/// gRPC: a protobuf `tailfold.v1.WriteRequest` through the bounded decoder and per-series validation.
pub fn grpc_batch(data: &[u8]) {
    let Ok(decoded) = decode_write(data, Arc::from("fuzz"), &limits()) else {
        return;
    };
    fold(&decoded.batch);
}

/// OTLP: a first byte with the low bit set means the rest is an
/// `ExportTraceServiceRequest`, else an `ExportMetricsServiceRequest`; it goes
/// through the memory-bound estimate and, when that passes, prost and the
/// span or metric decoder the OTLP listeners use.
pub fn otlp(data: &[u8]) {
    if let Some(batch) = otlp_batch(data) {
        fold(&batch);
    }
}

/// What [`otlp`] folds: `None` when the input is refused whole.
fn otlp_batch(data: &[u8]) -> Option<IngestBatch> {
    let (mode, body) = data.split_first()?;
    let limits = limits();
    let decoded = if mode & 1 == 1 {
        check_bound::<ExportTraceServiceRequest>(body).ok()?;
        let request = ExportTraceServiceRequest::decode(body).ok()?;
        decode_spans(&request, &OtlpSettings::default(), &limits)
    } else {
        check_bound::<ExportMetricsServiceRequest>(body).ok()?;
        let request = ExportMetricsServiceRequest::decode(body).ok()?;
        decode_metrics(&request, EngineSettings::default().histogram.scale, &limits)
    };
    Some(IngestBatch {
        tenant: Arc::from("fuzz"),
        series: decoded.series,
    })
}

/// Rules: YAML text through parsing, validation and compilation.
pub fn rules(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = RuleSet::parse(text, "fuzz-rules.yaml");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::v1;

    #[test]
    fn folding_reaches_the_aggregations() {
        RuleSet::parse(FOLD_RULES, "fuzz-fold-rules.yaml").expect("fold rules");
        let wire = v1::Series {
            labels: vec![v1::Label {
                name: "__name__".into(),
                value: "m".into(),
            }],
            kind: v1::Kind::Distribution as i32,
            points: vec![v1::Point {
                value: 2.0,
                timestamp_ms: Some(NOW_MS),
                trace_id: vec![].into(),
                span_id: vec![].into(),
            }],
        };
        let request = v1::WriteRequest { series: vec![wire] }.encode_to_vec();
        let decoded = decode_write(&request, Arc::from("fuzz"), &limits()).expect("valid");
        assert_eq!(decoded.batch.series.len(), 1);
        assert!(fold(&decoded.batch) > 0);
    }

    #[test]
    fn the_otlp_entry_decodes_an_export_and_refuses_a_bomb() {
        use crate::api::otlp::metrics::v1::{
            metric::Data, number_data_point::Value, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
        };
        let point = NumberDataPoint {
            time_unix_nano: NOW_MS as u64 * 1_000_000,
            value: Some(Value::AsDouble(2.0)),
            ..NumberDataPoint::default()
        };
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: "queue_depth".into(),
                        data: Some(Data::Gauge(Gauge {
                            data_points: vec![point],
                        })),
                        ..Metric::default()
                    }],
                    ..ScopeMetrics::default()
                }],
                ..ResourceMetrics::default()
            }],
        };
        let mut data = vec![0];
        data.extend(request.encode_to_vec());
        let batch = otlp_batch(&data).expect("decodes");
        assert_eq!(batch.series.len(), 1);
        assert!(fold(&batch) > 0);
        // Two million empty resources: refused by the bound before prost builds them.
        let mut bomb = vec![0];
        bomb.extend([0x0a, 0x00].repeat(2_000_000));
        assert!(otlp_batch(&bomb).is_none());
    }
}
