//! Malformed and hostile batches over a real gRPC socket: each gets a clear
//! answer, nothing panics, good series in the same batch still land, and the
//! service keeps serving afterwards.

mod common;

use common::*;
use tailfold::api::v1::{self, Kind};
use tonic::Code;

const T0: i64 = 1_800_000_000_000;

#[tokio::test]
async fn hostile_batches_get_clear_answers_and_the_service_keeps_serving() {
    let mut service = start_service_with(
        "",
        T0,
        "ingest: {max_points_per_request: 10000, max_request_bytes: 4194304}",
    )
    .await;
    let good = || {
        series(
            &[("__name__", "ok_total_requests")],
            Kind::Counter,
            vec![point(1.0, T0)],
        )
    };

    // Whole requests that can never succeed: INVALID_ARGUMENT naming the problem.
    let cases: Vec<(Vec<v1::Series>, &str)> = vec![
        (
            vec![series(&[("__name__", "")], Kind::Counter, vec![point(1.0, T0)])],
            "no metric name",
        ),
        (
            vec![series(&[("service", "x")], Kind::Counter, vec![point(1.0, T0)])],
            "no metric name",
        ),
        (
            vec![series(
                &[("__name__", "m"), ("", "v")],
                Kind::Counter,
                vec![point(1.0, T0)],
            )],
            "invalid label name \"\"",
        ),
        (
            vec![series(
                &[("__name__", "m"), ("big", &"v".repeat(100_000))],
                Kind::Counter,
                vec![point(1.0, T0)],
            )],
            "has a value of 100000 bytes, limit is 4096",
        ),
        (
            vec![series(
                &[("__name__", "m"), ("a", "1"), ("a", "2")],
                Kind::Counter,
                vec![point(1.0, T0)],
            )],
            "duplicate label name",
        ),
        (
            vec![series(&[("__name__", "m")], Kind::Unspecified, vec![point(1.0, T0)])],
            "kind 0 is not one of",
        ),
        (
            vec![v1::Series {
                labels: labels(&[("__name__", "m")]),
                kind: 99,
                points: vec![point(1.0, T0)],
            }],
            "kind 99",
        ),
        (
            vec![series(
                &[("__name__", "m")],
                Kind::Counter,
                vec![point(1.0, T0); 10_001],
            )],
            "10001 points, limit is 10000",
        ),
        (
            vec![series(&[("__name__", "1m")], Kind::Gauge, vec![point(1.0, T0)])],
            "invalid metric name",
        ),
    ];
    for (batch, needle) in cases {
        let status = service.write(batch).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains(needle),
            "{:?} lacks {needle:?}",
            status.message()
        );
    }

    // Bad points and bad series inside a good batch are refused alone and counted by reason.
    let mut traced = point(2.0, T0);
    traced.trace_id = vec![7; 15].into();
    let mut zero_trace = point(2.0, T0);
    zero_trace.trace_id = vec![0; 16].into();
    let mut bad_span = point(2.0, T0);
    bad_span.trace_id = vec![1; 16].into();
    bad_span.span_id = vec![1; 9].into();
    let response = service
        .write(vec![
            good(),
            series(
                &[("__name__", "lat")],
                Kind::Distribution,
                vec![
                    point(f64::NAN, T0),
                    point(f64::INFINITY, T0),
                    point(f64::NEG_INFINITY, T0),
                    traced,
                    zero_trace,
                    bad_span,
                    point(0.5, T0),
                ],
            ),
            series(&[("__name__", "")], Kind::Counter, vec![point(1.0, T0), point(1.0, T0)]),
            series(&[("__name__", "empty_series")], Kind::Gauge, vec![]),
        ])
        .await
        .unwrap();
    assert_eq!(response.accepted, 2, "{response:?}");
    assert_eq!(response.rejected, 8, "{response:?}");
    let reasons: std::collections::BTreeMap<_, _> = response
        .rejections
        .iter()
        .map(|r| (r.reason.as_str(), r.count))
        .collect();
    assert_eq!(reasons.get("invalid_value"), Some(&3));
    assert_eq!(reasons.get("invalid_trace_id"), Some(&3));
    assert_eq!(reasons.get("invalid_series"), Some(&2));
    assert!(
        response
            .errors
            .iter()
            .any(|e| e.starts_with("series 2: no metric name")),
        "{:?}",
        response.errors
    );

    // A request over the size limit is refused by the transport, not by a crash.
    let huge = series(
        &[("__name__", "m"), ("v", &"x".repeat(4000))],
        Kind::Counter,
        vec![point(1.0, T0)],
    );
    let status = service.write(vec![huge; 2_000]).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    // Invalid tenant metadata.
    let mut request = tonic::Request::new(v1::WriteRequest { series: vec![good()] });
    request
        .metadata_mut()
        .insert("x-scope-orgid", "has space".parse().unwrap());
    let status = service.client.write(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("invalid tenant"));

    // An empty request is fine and accepts nothing.
    assert_eq!(service.write(vec![]).await.unwrap().accepted, 0);

    // Still serving, and the good samples landed.
    assert_eq!(service.write(vec![good()]).await.unwrap().accepted, 1);
    service.flush_at(T0 + 60_000).await;
    let records = service.records();
    assert_eq!(value(one(&records, &[("__name__", "ok_total_requests:sum")], T0)), 2.0);
    assert_eq!(value(one(&records, &[("__name__", "lat:count")], T0)), 1.0);
    service.shutdown().await;
}
