//! Every configurable input limit (`ingest.*`), exceeded by one over each
//! protocol that can exceed it: a clear refusal naming the limit, the
//! refused points counted, and the service still serving good input.

mod common;

use std::net::SocketAddr;

use common::*;
use prost::Message;
use tailfold::api::prometheus as wire;
use tailfold::api::v1::{self, Kind};
use tailfold::model::DropReason;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T0: i64 = 1_800_000_000_000;
const RULES: &str = "defaults:\n  storage_policies: [\"10s:2d\"]\n";
const LIMITS: &str = "ingest: {max_labels_per_series: 3, max_label_name_bytes: 8, max_label_value_bytes: 16, \
                      max_points_per_request: 5, max_series_per_request: 2, max_request_bytes: 4096, max_decompressed_bytes: 8192}";

async fn post(addr: SocketAddr, body: &[u8]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /api/v1/write HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nContent-Encoding: snappy\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write head");
    // The server may answer and close before reading an oversized body.
    let _ = stream.write_all(body).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (
        status,
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

fn rw_series(labels: &[(&str, &str)], samples: usize) -> wire::TimeSeries {
    wire::TimeSeries {
        labels: labels
            .iter()
            .map(|(n, v)| wire::Label {
                name: n.to_string(),
                value: v.to_string(),
            })
            .collect(),
        samples: (0..samples)
            .map(|i| wire::Sample {
                value: 1.0,
                timestamp: T0 + i as i64,
            })
            .collect(),
        ..Default::default()
    }
}

fn snappy(request: &wire::WriteRequest) -> Vec<u8> {
    snap::raw::Encoder::new()
        .compress_vec(&request.encode_to_vec())
        .expect("snappy")
}

fn rw(timeseries: Vec<wire::TimeSeries>) -> Vec<u8> {
    snappy(&wire::WriteRequest {
        timeseries,
        metadata: vec![],
    })
}

#[tokio::test]
async fn each_limit_refuses_what_exceeds_it_over_every_protocol() {
    let mut service = start_service_with(RULES, T0, &format!("{LIMITS}\nstatsd: {{listen: \"127.0.0.1:0\"}}")).await;
    let http = service.handle().http_addr();
    let long_value = "v".repeat(17);
    // Compresses to little but expands past max_decompressed_bytes (8192), under max_request_bytes.
    let expands = rw(vec![rw_series(&[("__name__", "m"), ("a", &"x".repeat(9000))], 1)]);
    assert!(expands.len() < 4096, "{}", expands.len());
    let remote_write_cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "labels per series",
            rw(vec![rw_series(
                &[("__name__", "m"), ("a", "1"), ("b", "1"), ("c", "1")],
                1,
            )]),
            "4 labels, limit is 3 (ingest.max_labels_per_series)",
        ),
        (
            "label name",
            rw(vec![rw_series(&[("__name__", "m"), ("abcdefghi", "1")], 1)]),
            "has a name of 9 bytes, limit is 8 (ingest.max_label_name_bytes)",
        ),
        (
            "label value",
            rw(vec![rw_series(&[("__name__", "m"), ("a", &long_value)], 1)]),
            "has a value of 17 bytes, limit is 16 (ingest.max_label_value_bytes)",
        ),
        (
            "metric name",
            rw(vec![rw_series(&[("__name__", "m_name_of_17_byte")], 1)]),
            "has a value of 17 bytes, limit is 16 (ingest.max_label_value_bytes)",
        ),
        (
            "points per request",
            rw(vec![
                rw_series(&[("__name__", "m")], 3),
                rw_series(&[("__name__", "n")], 3),
            ]),
            "6 samples and histograms, limit is 5 (ingest.max_points_per_request)",
        ),
        (
            "series per request",
            rw(vec![
                rw_series(&[("__name__", "m")], 1),
                rw_series(&[("__name__", "n")], 1),
                rw_series(&[("__name__", "o")], 1),
            ]),
            "more than 2 series (ingest.max_series_per_request)",
        ),
        (
            "request bytes",
            vec![0u8; 5000],
            "at most 4096 bytes, ingest.max_request_bytes",
        ),
        (
            "decompressed bytes",
            expands,
            "limit is 8192 (ingest.max_decompressed_bytes)",
        ),
    ];
    for (what, body, needle) in &remote_write_cases {
        let (status, reason) = post(http, body).await;
        assert_eq!(status, 400, "{what}: {reason}");
        assert!(reason.contains(needle), "{what}: {reason:?} lacks {needle:?}");
    }

    let grpc_cases: Vec<(&str, Vec<v1::Series>, &str)> = vec![
        (
            "labels per series",
            vec![series(
                &[("__name__", "m"), ("a", "1"), ("b", "1"), ("c", "1")],
                Kind::Gauge,
                vec![point(1.0, T0)],
            )],
            "4 labels, limit is 3 (ingest.max_labels_per_series)",
        ),
        (
            "label name",
            vec![series(
                &[("__name__", "m"), ("abcdefghi", "1")],
                Kind::Gauge,
                vec![point(1.0, T0)],
            )],
            "has a name of 9 bytes, limit is 8 (ingest.max_label_name_bytes)",
        ),
        (
            "label value",
            vec![series(
                &[("__name__", "m"), ("a", &long_value)],
                Kind::Gauge,
                vec![point(1.0, T0)],
            )],
            "has a value of 17 bytes, limit is 16 (ingest.max_label_value_bytes)",
        ),
        (
            "points per request",
            vec![series(
                &[("__name__", "m")],
                Kind::Gauge,
                (0..6).map(|i| point(1.0, T0 + i)).collect(),
            )],
            "6 points, limit is 5 (ingest.max_points_per_request)",
        ),
        (
            "series per request",
            ["m", "n", "o"]
                .iter()
                .map(|name| series(&[("__name__", name)], Kind::Gauge, vec![point(1.0, T0)]))
                .collect(),
            "more than 2 series (ingest.max_series_per_request)",
        ),
        (
            "request bytes",
            vec![series(
                &[("__name__", "m"), ("a", &"x".repeat(5000))],
                Kind::Gauge,
                vec![point(1.0, T0)],
            )],
            "",
        ),
    ];
    for (what, series, needle) in grpc_cases {
        let status = service.write(series).await.unwrap_err();
        let expected = if what == "request bytes" {
            tonic::Code::OutOfRange
        } else {
            tonic::Code::InvalidArgument
        };
        assert_eq!(status.code(), expected, "{what}: {status:?}");
        assert!(status.message().contains(needle), "{what}: {status:?} lacks {needle:?}");
    }

    // statsd: the label limits apply to tags; a bad line is refused alone.
    let statsd = service.handle().statsd_addr().expect("statsd on");
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let datagram = format!("m:1|c|#a:1,b:1,c:1\nm:1|c|#abcdefghi:1\nm:1|c|#a:{long_value}\nok_statsd:1|c\n");
    socket.send_to(datagram.as_bytes(), statsd).await.unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while service.handle().telemetry().snapshot().statsd_malformed_lines < 3 {
        assert!(tokio::time::Instant::now() < deadline, "statsd datagram never counted");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // Refused points are counted as invalid series; the service still takes good input.
    let snapshot = service.handle().telemetry().snapshot();
    assert!(snapshot.ingest.rejected_for(DropReason::InvalidSeries) >= 3 + 4 + 6 + 3);
    let good = service
        .write(vec![series(
            &[("__name__", "ok_grpc")],
            Kind::Gauge,
            vec![point(1.0, T0)],
        )])
        .await
        .expect("good write");
    assert_eq!(good.accepted, 1);
    assert_eq!(
        post(http, &rw(vec![rw_series(&[("__name__", "ok_rw")], 1)])).await.0,
        204
    );
    service.flush_at(T0 + 60_000).await;
    let names: Vec<String> = service.records().iter().map(|r| r.labels["__name__"].clone()).collect();
    for name in ["ok_grpc", "ok_rw", "ok_statsd"] {
        assert!(
            names.iter().any(|n| n.starts_with(name)),
            "{name} missing from {names:?}"
        );
    }
    assert!(names.iter().all(|n| n.starts_with("ok_")), "{names:?}");
    service.shutdown().await;
}
