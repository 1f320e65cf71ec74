//! With the write-ahead log on, both acknowledged ingest paths (gRPC `Write`
//! and Prometheus remote write) are in the log before they are answered, as
//! the validated batches the engine folded; a clean shutdown deletes the
//! segments whose windows were all written.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use prost::Message;
use tailfold::api::prometheus as wire;
use tailfold::api::v1::Kind;
use tailfold::wal::decode;

const RULES: &str = "defaults:\n  storage_policies: [\"10s:1h\"]\n  gauge: { aggregations: [last] }\n";

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn grpc_and_remote_write_batches_are_logged_before_the_answer() {
    let mut service = start_service_with(RULES, 5_000, "wal: {enabled: true}\n").await;
    let response = service
        .write(vec![series(
            &[("__name__", "temperature"), ("room", "a")],
            Kind::Gauge,
            vec![point(21.5, 1_000), point(22.0, 2_000), point(22.5, 3_000)],
        )])
        .await
        .unwrap();
    assert_eq!(response.accepted, 3);

    let request = wire::WriteRequest {
        timeseries: vec![wire::TimeSeries {
            labels: vec![
                wire::Label {
                    name: "__name__".to_string(),
                    value: "humidity".to_string(),
                },
                wire::Label {
                    name: "room".to_string(),
                    value: "b".to_string(),
                },
            ],
            samples: vec![wire::Sample {
                value: 0.4,
                timestamp: 4_000,
            }],
            ..wire::TimeSeries::default()
        }],
        metadata: vec![],
    };
    let body = snap::raw::Encoder::new()
        .compress_vec(&request.encode_to_vec())
        .unwrap();
    let url = format!("http://{}/api/v1/write", service.handle().http_addr());
    let status = tokio::task::spawn_blocking(move || {
        reqwest::blocking::Client::new()
            .post(url)
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .header("X-Scope-OrgID", "team-b")
            .body(body)
            .send()
            .unwrap()
            .status()
    })
    .await
    .unwrap();
    assert!(status.is_success(), "{status}");

    // Both answers came after their batch was on disk: the log holds both, in order.
    let wal_dir = service.data_dir.path().join("wal");
    let mut frames = Vec::new();
    for segment in segments(&wal_dir) {
        let bytes = std::fs::read(&segment).unwrap();
        let mut offset = 0;
        while offset < bytes.len() {
            let frame = decode(&bytes[offset..]).expect("whole frames only");
            offset += frame.frame_bytes;
            frames.push(frame);
        }
    }
    assert_eq!(frames.len(), 2);
    assert_eq!(&*frames[0].batch.tenant, "default");
    assert_eq!(frames[0].batch.series[0].points.len(), 3);
    assert_eq!(frames[0].latest_ms, 3_000);
    assert_eq!(&*frames[1].batch.tenant, "team-b");
    assert_eq!(frames[1].batch.series[0].labels.get("room"), Some("b"));
    assert_eq!(frames[1].now_ms, 5_000);

    // Written once due; the stop then deletes the segments that fed only written windows.
    service.flush_at(20_000).await;
    service.shutdown().await;
    assert!(
        segments(&wal_dir).is_empty(),
        "a stop after the windows were written deletes the log"
    );
    assert!(wal_dir.join("checkpoint.json").exists());
    let records = service.records();
    assert_eq!(value(one(&records, &[("room", "a")], 0)), 22.5);
    assert_eq!(value(one(&records, &[("room", "b")], 0)), 0.4);
}

#[tokio::test]
async fn a_broken_checkpoint_stops_the_start_with_a_clear_error() {
    let data_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(data_dir.path().join("wal")).unwrap();
    std::fs::write(data_dir.path().join("wal/checkpoint.json"), "{\"committed\": 7}").unwrap();
    let config = format!(
        "grpc: {{listen: \"127.0.0.1:0\"}}\nhttp: {{listen: \"127.0.0.1:0\"}}\ndata_dir: {}\nwal: {{enabled: true}}\n",
        data_dir.path().display()
    );
    let settings = tailfold::config::ServiceSettings::parse(&config, Path::new("t.yaml")).unwrap();
    let rules = tailfold::rules::RuleSet::parse(RULES, "rules.yaml").unwrap();
    let clock = std::sync::Arc::new(tailfold::clock::ManualClock::new(0));
    let error = match tailfold::server::start(settings, rules, clock).await {
        Ok(_) => panic!("started on a broken checkpoint"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("checkpoint.json"), "{error}");
}

#[tokio::test]
async fn a_flush_interrupted_before_its_checkpoint_is_cut_back_at_start() {
    let data_dir = tempfile::tempdir().unwrap();
    let segment = data_dir.path().join("store/10s_1h/19700101T000000Z.jsonl");
    std::fs::create_dir_all(segment.parent().unwrap()).unwrap();
    std::fs::write(&segment, "{\"committed\": true}\n{\"half\": \"written").unwrap();
    std::fs::create_dir_all(data_dir.path().join("wal")).unwrap();
    let checkpoint = serde_json::json!({"committed": [], "pending_store_files": [[segment, 20]]});
    std::fs::write(data_dir.path().join("wal/checkpoint.json"), checkpoint.to_string()).unwrap();
    let config = format!(
        "grpc: {{listen: \"127.0.0.1:0\"}}\nhttp: {{listen: \"127.0.0.1:0\"}}\ndata_dir: {}\nwal: {{enabled: true}}\n",
        data_dir.path().display()
    );
    let settings = tailfold::config::ServiceSettings::parse(&config, Path::new("t.yaml")).unwrap();
    let rules = tailfold::rules::RuleSet::parse(RULES, "rules.yaml").unwrap();
    let clock = std::sync::Arc::new(tailfold::clock::ManualClock::new(0));
    let handle = tailfold::server::start(settings, rules, clock).await.unwrap();
    assert_eq!(std::fs::read_to_string(&segment).unwrap(), "{\"committed\": true}\n");
    let after: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data_dir.path().join("wal/checkpoint.json")).unwrap()).unwrap();
    assert!(after.get("pending_store_files").is_none(), "{after}");
    handle.shutdown().await.unwrap();
}

/// OTLP is logged like the other paths, and only what the tenant limits
/// admitted is logged: replay folds the log without meeting the limits again,
/// so a sample refused as `rate_limited` must never be in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_batches_are_logged_and_only_what_the_limits_admitted() {
    use tailfold::api::otlp::collector::trace::v1::ExportTraceServiceRequest;
    use tailfold::api::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span};

    const T0: i64 = 1_800_000_000_000;
    let extra = "wal: {enabled: true}\notlp: {http_listen: \"127.0.0.1:0\"}\n\
                 limits: {default: {samples_per_second: 1, burst_samples: 2}}\n";
    let mut service = start_service_with(RULES, T0 + 5_000, extra).await;
    let spans = (0..5u8)
        .map(|n| Span {
            trace_id: vec![n + 1; 16],
            span_id: vec![n + 1; 8],
            name: "op".into(),
            start_time_unix_nano: (T0 as u64 + u64::from(n)) * 1_000_000,
            end_time_unix_nano: (T0 as u64 + u64::from(n) + 10) * 1_000_000,
            ..Span::default()
        })
        .collect();
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    };
    let url = format!("http://{}/v1/traces", service.handle().otlp_http_addr().unwrap());
    let (status, body) = tokio::task::spawn_blocking(move || {
        let response = reqwest::blocking::Client::new()
            .post(url)
            .header("content-type", "application/x-protobuf")
            .body(request.encode_to_vec())
            .send()
            .unwrap();
        (response.status().as_u16(), response.bytes().unwrap().to_vec())
    })
    .await
    .unwrap();
    assert_eq!(status, 200);
    let answer =
        tailfold::api::otlp::collector::trace::v1::ExportTraceServiceResponse::decode(body.as_slice()).unwrap();
    let partial = answer.partial_success.expect("three spans over the burst");
    assert_eq!(partial.rejected_spans, 3, "{partial:?}");
    assert!(partial.error_message.contains("rate_limited"), "{partial:?}");

    let wal_dir = service.data_dir.path().join("wal");
    let mut logged_points = 0;
    for segment in segments(&wal_dir) {
        let bytes = std::fs::read(&segment).unwrap();
        let mut offset = 0;
        while offset < bytes.len() {
            let frame = decode(&bytes[offset..]).expect("whole frames only");
            offset += frame.frame_bytes;
            logged_points += frame
                .batch
                .series
                .iter()
                .map(|series| series.points.len())
                .sum::<usize>();
        }
    }
    assert_eq!(
        logged_points, 2,
        "the log holds the two admitted spans, not the refused three"
    );
    service.shutdown().await;
}
