//! Entry points of the fuzz targets (`fuzz/`): one per parser of hostile
//! input; what an ingest parser accepts is then folded and flushed too. The
//! corpus replay test (`tests/fuzz_corpora.rs`) calls the same functions, so
//! every input a fuzzer kept is checked on every CI run.

use std::sync::Arc;

use prost::Message;

use crate::api::v1;
use crate::config::{IngestLimits, StatsdSettings};
use crate::engine::{Engine, EngineSettings};
use crate::ingest::remote_write::decode::{decode_request, decompress, parse, points_in};
use crate::ingest::statsd::DatagramDecoder;
use crate::ingest::validate_series;
use crate::model::{IngestBatch, Outcome};
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
    let Ok(request) = parse(bytes) else {
        return;
    };
    if points_in(&request) > limits.max_points_per_request as u64 {
        return;
    }
    let decoded = decode_request(request, Arc::from("fuzz"), &limits);
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
        limits: limits(),
    };
    let mut decoder = DatagramDecoder::new(&settings);
    decoder.decode(data);
    fold(&decoder.batch);
}

/// gRPC: a protobuf `tailfold.v1.WriteRequest` through per-series validation.
pub fn grpc_batch(data: &[u8]) {
    let Ok(request) = v1::WriteRequest::decode(data) else {
        return;
    };
    let limits = limits();
    let mut outcome = Outcome::default();
    let mut batch = IngestBatch {
        tenant: Arc::from("fuzz"),
        series: Vec::new(),
    };
    for (index, series) in request.series.into_iter().enumerate() {
        if let Ok(valid) = validate_series(index, series, &limits, &mut outcome) {
            batch.series.push(valid);
        }
    }
    fold(&batch);
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

    #[test]
    fn folding_reaches_the_aggregations() {
        RuleSet::parse(FOLD_RULES, "fuzz-fold-rules.yaml").expect("fold rules");
        let mut outcome = Outcome::default();
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
        let batch = IngestBatch {
            tenant: Arc::from("fuzz"),
            series: vec![validate_series(0, wire, &limits(), &mut outcome).expect("valid")],
        };
        assert!(fold(&batch) > 0);
    }
}
