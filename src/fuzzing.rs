//! Entry points of the fuzz targets (`fuzz/`): one per parser of hostile
//! input. The corpus replay test (`tests/fuzz_corpora.rs`) calls the same
//! functions, so every input a fuzzer kept is checked on every CI run.

use std::sync::Arc;

use prost::Message;

use crate::api::v1;
use crate::config::{IngestLimits, StatsdSettings};
use crate::ingest::remote_write::decode::{decode_request, decompress, parse, points_in};
use crate::ingest::statsd::DatagramDecoder;
use crate::ingest::validate_series;
use crate::model::Outcome;
use crate::rules::RuleSet;

/// Decompressed bytes a fuzz input may expand to (keeps runs fast and memory flat).
const FUZZ_DECOMPRESSED_BYTES: usize = 1 << 20;

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
    // Every refused point is counted, never more than were sent.
    let _ = decoded.error_text();
}

/// statsd: one datagram through the decoder the UDP listener uses.
pub fn statsd(data: &[u8]) {
    let settings = StatsdSettings {
        listen: ([127, 0, 0, 1], 0).into(),
        tenant: "fuzz".to_string(),
        max_packet_bytes: 1432,
        limits: limits(),
    };
    let mut decoder = DatagramDecoder::new(&settings);
    decoder.decode(data);
}

/// gRPC: a protobuf `tailfold.v1.WriteRequest` through per-series validation.
pub fn grpc_batch(data: &[u8]) {
    let Ok(request) = v1::WriteRequest::decode(data) else {
        return;
    };
    let limits = limits();
    let mut outcome = Outcome::default();
    for (index, series) in request.series.into_iter().enumerate() {
        let _ = validate_series(index, series, &limits, &mut outcome);
    }
}

/// Rules: YAML text through parsing, validation and compilation.
pub fn rules(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = RuleSet::parse(text, "fuzz-rules.yaml");
}
