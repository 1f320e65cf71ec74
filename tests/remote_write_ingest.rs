//! Prometheus remote write over a real HTTP socket: request bodies built with
//! prost + snappy as a sender does, answers checked against the spec (204,
//! 4xx with a reason, 415, 503), outputs read back from the embedded store.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use prost::Message;
use tailfold::api::prometheus as wire;
use tailfold::clock::ManualClock;
use tailfold::config::IngestLimits;
use tailfold::engine::{Engine, EngineSettings};
use tailfold::ingest::remote_write::{http_router, HttpState, STALE_NAN_BITS};
use tailfold::model::DropReason;
use tailfold::rules::RuleSet;
use tailfold::telemetry::Telemetry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wire::histogram::Count;

const T0: i64 = 1_800_000_000_000; // a 10s window boundary
const RULES: &str = "defaults:\n  storage_policies: [\"10s:2d\"]\n";
const SNAPPY: [(&str, &str); 2] = [
    ("Content-Encoding", "snappy"),
    ("Content-Type", "application/x-protobuf"),
];

/// Status and body of one HTTP/1.1 exchange on a fresh connection.
async fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream.write_all(body).await.expect("write body");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read response");
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

async fn write(addr: SocketAddr, headers: &[(&str, &str)], request: &wire::WriteRequest) -> (u16, String) {
    http(
        addr,
        "POST",
        "/api/v1/write",
        headers,
        &compress(&request.encode_to_vec()),
    )
    .await
}

fn compress(bytes: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new().compress_vec(bytes).expect("snappy")
}

fn series(pairs: &[(&str, &str)], samples: &[(f64, i64)]) -> wire::TimeSeries {
    wire::TimeSeries {
        labels: pairs
            .iter()
            .map(|(name, value)| wire::Label {
                name: name.to_string(),
                value: value.to_string(),
            })
            .collect(),
        samples: samples
            .iter()
            .map(|(value, timestamp)| wire::Sample {
                value: *value,
                timestamp: *timestamp,
            })
            .collect(),
        ..wire::TimeSeries::default()
    }
}

fn request(timeseries: Vec<wire::TimeSeries>) -> wire::WriteRequest {
    wire::WriteRequest {
        timeseries,
        metadata: vec![],
    }
}

fn good() -> wire::WriteRequest {
    request(vec![series(&[("__name__", "ok_gauge")], &[(1.0, T0 + 1_000)])])
}

fn native_histogram(timestamp: i64, count: Count) -> wire::Histogram {
    wire::Histogram {
        count: Some(count),
        sum: 3.0,
        schema: 3,
        positive_spans: vec![wire::BucketSpan { offset: 0, length: 2 }],
        positive_deltas: vec![1, 1],
        timestamp,
        ..wire::Histogram::default()
    }
}

#[tokio::test]
async fn a_good_request_is_accepted_and_gauges_land_exactly() {
    let mut service = start_service(RULES, T0).await;
    let addr = service.handle().http_addr();
    assert_eq!(http(addr, "GET", "/-/healthy", &[], b"").await, (200, "ok\n".into()));
    assert_eq!(http(addr, "GET", "/-/ready", &[], b"").await, (200, "ready\n".into()));

    let stale = f64::from_bits(STALE_NAN_BITS);
    let mut latency = series(&[("__name__", "latency_seconds"), ("pod", "a")], &[]);
    // Running totals: the first is the baseline, the second adds 2 + 2 observations summing to 7.5.
    let grown = wire::Histogram {
        sum: 10.5,
        positive_deltas: vec![3, 1],
        ..native_histogram(T0 + 12_000, Count::CountInt(7))
    };
    latency.histograms = vec![native_histogram(T0 + 2_000, Count::CountInt(3)), grown];
    let sent = request(vec![
        series(
            &[("__name__", "memory_bytes"), ("pod", "a")],
            &[
                (5.0, T0 + 1_000),
                (7.0, T0 + 2_000),
                (3.0, T0 + 3_000),
                (9.0, T0 + 11_000),
            ],
        ),
        series(
            &[("__name__", "memory_bytes"), ("pod", "b")],
            &[(2.0, T0 + 1_000), (stale, T0 + 4_000)],
        ),
        latency,
    ]);
    assert_eq!(write(addr, &SNAPPY, &sent).await, (204, String::new()));
    // Content-Encoding is optional; remote write 1.0 content types are accepted.
    assert_eq!(write(addr, &[], &good()).await.0, 204);
    let v1_type = [("Content-Type", "application/x-protobuf;proto=prometheus.WriteRequest")];
    assert_eq!(write(addr, &v1_type, &good()).await.0, 204);
    // Metadata alone (Prometheus sends it in requests of its own) is fine.
    let metadata_only = wire::WriteRequest {
        timeseries: vec![],
        metadata: vec![wire::MetricMetadata {
            r#type: wire::metric_metadata::MetricType::Gauge as i32,
            metric_family_name: "memory_bytes".into(),
            help: "Resident memory.".into(),
            unit: "bytes".into(),
        }],
    };
    assert_eq!(write(addr, &SNAPPY, &metadata_only).await, (204, String::new()));

    service.flush_at(T0 + 60_000).await;
    let records = service.records();
    let pod_a = [("__name__", "memory_bytes"), ("pod", "a")];
    assert_eq!(value(one(&records, &pod_a, T0)), 3.0, "last by event time");
    assert_eq!(
        value(one(&records, &[("__name__", "memory_bytes:min"), ("pod", "a")], T0)),
        3.0
    );
    assert_eq!(
        value(one(&records, &[("__name__", "memory_bytes:max"), ("pod", "a")], T0)),
        7.0
    );
    assert_eq!(value(one(&records, &pod_a, T0 + 10_000)), 9.0);
    assert_eq!(
        value(one(&records, &[("__name__", "memory_bytes"), ("pod", "b")], T0)),
        2.0
    );
    assert!(records.iter().all(|record| record.tenant == "default"));
    let latency = |suffix: &str, window: i64| {
        let name = format!("latency_seconds{suffix}");
        value(one(&records, &[("__name__", name.as_str()), ("pod", "a")], window))
    };
    assert_eq!((latency(":count", T0), latency(":sum", T0)), (0.0, 0.0), "the baseline");
    assert_eq!(
        (latency(":count", T0 + 10_000), latency(":sum", T0 + 10_000)),
        (4.0, 7.5),
        "the increase after the baseline"
    );

    let telemetry = service.handle().telemetry().snapshot();
    assert_eq!(telemetry.stale_markers, 1);
    assert_eq!(
        telemetry.ingest.accepted, 9,
        "5 + 2 good samples and 2 native histograms (the baseline too)"
    );
    assert_eq!(telemetry.ingest.rejected_total(), 0);
    assert!(telemetry.progress_line().contains(" stale_markers=1"));
    service.shutdown().await;
}

/// Prometheus counters are running totals: 10, 15, 15, 2 (a restart), 5 in
/// five windows are increases of 5, 0, 2 and 3 in the last four.
#[tokio::test]

async fn cumulative_counters_become_increases_per_window() {
    let mut service = start_service(RULES, T0).await;
    let addr = service.handle().http_addr();
    let totals = [10.0, 15.0, 15.0, 2.0, 5.0];
    let samples: Vec<(f64, i64)> = (0..5)
        .map(|window| (totals[window], T0 + 1_000 + 10_000 * window as i64))
        .collect();
    let sent = request(vec![series(&[("__name__", "requests_total"), ("pod", "a")], &samples)]);
    assert_eq!(write(addr, &SNAPPY, &sent).await.0, 204);
    service.flush_at(T0 + 120_000).await;
    let records = service.records();
    for (window, increase) in [(1, 5.0), (2, 0.0), (3, 2.0), (4, 3.0)] {
        let record = one(&records, &[("__name__", "requests_total:sum")], T0 + 10_000 * window);
        assert_eq!(value(record), increase, "window {window}");
    }
    service.shutdown().await;
}

/// What is wrong, body, headers, expected status, expected part of the reason.
type Case = (
    &'static str,
    Vec<u8>,
    Vec<(&'static str, &'static str)>,
    u16,
    &'static str,
);

#[tokio::test]
async fn malformed_requests_get_a_4xx_with_a_reason_and_the_service_keeps_serving() {
    let mut service = start_service_with(
        RULES,
        T0,
        "ingest: {max_request_bytes: 65536, max_decompressed_bytes: 65536}",
    )
    .await;
    let addr = service.handle().http_addr();
    let one_series = |pairs: &[(&str, &str)]| compress(&request(vec![series(pairs, &[(1.0, T0)])]).encode_to_vec());
    // A 6-byte snappy block whose header claims 1 GiB: refused before any allocation.
    let bomb = vec![0x80, 0x80, 0x80, 0x80, 0x04, 0x00];
    let mut float = series(&[("__name__", "latency_seconds")], &[]);
    float.histograms = vec![native_histogram(T0, Count::CountFloat(3.0))];
    let cases: Vec<Case> = vec![
        (
            "bad snappy",
            b"\xffnot snappy".to_vec(),
            vec![],
            400,
            "invalid snappy block",
        ),
        (
            "garbage protobuf",
            compress(b"\xff\xff\xff\xff garbage"),
            vec![],
            400,
            "invalid protobuf prometheus.WriteRequest",
        ),
        (
            "unsorted labels",
            one_series(&[("__name__", "m"), ("b", "1"), ("a", "1")]),
            vec![],
            400,
            "every series in the request was refused: series 0: labels are not sorted by name",
        ),
        (
            "duplicate label",
            one_series(&[("__name__", "m"), ("a", "1"), ("a", "2")]),
            vec![],
            400,
            "series 0: duplicate label name \"a\"",
        ),
        (
            "empty label name",
            one_series(&[("", "1"), ("__name__", "m")]),
            vec![],
            400,
            "series 0: label 0 has an empty name",
        ),
        (
            "missing __name__",
            one_series(&[("job", "x")]),
            vec![],
            400,
            "series 0: no metric name",
        ),
        (
            "snappy bomb",
            bomb,
            vec![],
            400,
            "snappy block decompresses to 1073741824 bytes, limit is 65536",
        ),
        (
            "oversized body",
            vec![7; 100_000],
            vec![],
            400,
            "cannot read the request body (at most 65536 bytes",
        ),
        (
            "float histogram",
            compress(&request(vec![float]).encode_to_vec()),
            vec![],
            400,
            "histogram at 1800000000000: float histograms are not supported",
        ),
        (
            "gzip",
            compress(&good().encode_to_vec()),
            vec![("Content-Encoding", "gzip")],
            415,
            "unsupported content-encoding \"gzip\"",
        ),
        (
            "remote write 2.0",
            compress(&good().encode_to_vec()),
            vec![(
                "Content-Type",
                "application/x-protobuf;proto=io.prometheus.write.v2.Request",
            )],
            415,
            "only remote write 1.0",
        ),
        (
            "bad tenant",
            compress(&good().encode_to_vec()),
            vec![("X-Scope-OrgID", "a b")],
            400,
            "header x-scope-orgid: invalid tenant \"a b\"",
        ),
    ];
    for (what, body, headers, status, needle) in cases {
        let (got, reason) = http(addr, "POST", "/api/v1/write", &headers, &body).await;
        assert_eq!(got, status, "{what}: {reason}");
        assert!(reason.contains(needle), "{what}: {reason:?} lacks {needle:?}");
        assert_eq!(write(addr, &SNAPPY, &good()).await.0, 204, "still serving after {what}");
    }
    let (status, _) = http(addr, "GET", "/api/v1/write", &[], b"").await;
    assert_eq!(status, 405);

    service.flush_at(T0 + 60_000).await;
    let records = service.records();
    assert!(records
        .iter()
        .all(|record| record.labels["__name__"].starts_with("ok_gauge")));
    let telemetry = service.handle().telemetry().snapshot();
    assert_eq!(telemetry.ingest.rejected_for(DropReason::InvalidSeries), 4);
    assert_eq!(telemetry.ingest.rejected_for(DropReason::InvalidValue), 1);
    service.shutdown().await;
}

#[tokio::test]
async fn a_mixed_request_lands_its_good_series_and_names_the_bad_ones() {
    let mut service = start_service(RULES, T0).await;
    let addr = service.handle().http_addr();
    let sent = request(vec![
        series(
            &[("__name__", "queue_depth"), ("shard", "1")],
            &[(4.0, T0 + 1_000), (f64::NAN, T0 + 2_000)],
        ),
        series(
            &[("__name__", "queue_depth"), ("shard", "1"), ("shard", "2")],
            &[(8.0, T0 + 1_000)],
        ),
        series(&[("zone", "b"), ("__name__", "queue_depth")], &[(9.0, T0 + 1_000)]),
        series(&[("__name__", "queue_depth"), ("shard", "3")], &[(6.0, T0 + 1_000)]),
    ]);
    let (status, reason) = write(addr, &[("X-Scope-OrgID", "team-a")], &sent).await;
    assert_eq!(status, 400, "the spec asks for 400 when anything was invalid");
    assert_eq!(
        reason,
        "refused 2 series or histograms, accepted the rest: series 1: duplicate label name \"shard\"; \
         series 2: labels are not sorted by name: \"__name__\" comes after \"zone\"\n"
    );

    service.flush_at(T0 + 60_000).await;
    let records = service.records();
    assert_eq!(
        value(one(&records, &[("__name__", "queue_depth"), ("shard", "1")], T0)),
        4.0
    );
    assert_eq!(
        value(one(&records, &[("__name__", "queue_depth"), ("shard", "3")], T0)),
        6.0
    );
    assert!(records.iter().all(|record| record.tenant == "team-a"));
    assert!(find(&records, &[("__name__", "queue_depth"), ("zone", "b")]).is_empty());
    let telemetry = service.handle().telemetry().snapshot();
    assert_eq!(telemetry.ingest.accepted, 2);
    assert_eq!(telemetry.ingest.rejected_for(DropReason::InvalidSeries), 2);
    assert_eq!(telemetry.ingest.rejected_for(DropReason::InvalidValue), 1);
    service.shutdown().await;
}

#[tokio::test]
async fn a_closing_engine_answers_503_so_the_sender_retries() {
    let engine = Arc::new(Engine::new(
        EngineSettings::default(),
        RuleSet::parse(RULES, "rules.yaml").unwrap(),
    ));
    let state = HttpState::new(
        Arc::clone(&engine),
        IngestLimits::default(),
        Arc::new(ManualClock::new(T0)),
        Arc::new(Telemetry::default()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = http_router(state.clone());
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    assert_eq!(write(addr, &SNAPPY, &good()).await.0, 204);
    state.set_ready(false);
    engine.close();
    let (status, reason) = write(addr, &SNAPPY, &good()).await;
    assert_eq!(
        (status, reason.as_str()),
        (503, "the engine is closed: the service is shutting down\n")
    );
    assert_eq!(http(addr, "GET", "/-/ready", &[], b"").await.0, 503);
    assert_eq!(http(addr, "GET", "/-/healthy", &[], b"").await.0, 200);
    server.abort();
}
