//! Tenant limits and backpressure through real sockets: one tenant flooding
//! over its rate and series limits loses its nice-to-have series first while
//! its important series and another tenant's data land exactly; a saturated
//! ingest answers RESOURCE_EXHAUSTED / 429 and statsd counts the drop.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tailfold::api::v1;
use tailfold::model::DropReason;
use tailfold::telemetry::{LimitDropKey, TelemetrySnapshot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T0: i64 = 1_800_000_000_000; // a 10s window boundary
const RULES: &str = "defaults:\n  storage_policies: [\"10s:2d\"]\n";

fn request_for(tenant: &str, series: Vec<v1::Series>) -> tonic::Request<v1::WriteRequest> {
    let mut request = tonic::Request::new(v1::WriteRequest { series });
    request
        .metadata_mut()
        .insert("x-scope-orgid", tenant.parse().expect("tenant metadata"));
    request
}

fn counter_series(name: &str, id: usize, points: usize, timestamp_ms: i64) -> v1::Series {
    series(
        &[("__name__", name), ("id", &id.to_string())],
        v1::Kind::Counter,
        (0..points).map(|_| point(1.0, timestamp_ms)).collect(),
    )
}

fn limit_drops(snapshot: &TelemetrySnapshot) -> BTreeMap<(String, &'static str, String), u64> {
    snapshot
        .limit_drops
        .iter()
        .map(|(LimitDropKey { tenant, reason, rule }, count)| ((tenant.clone(), reason.as_str(), rule.clone()), *count))
        .collect()
}

/// Limits of the flood test: `flood` gets 2000 samples/s and 100 active
/// series; every other tenant (here `calm`) far more than it sends.
const FLOOD_LIMITS: &str = "limits:
  default: {samples_per_second: 100000, max_active_series: 10000}
  tenants:
    flood: {samples_per_second: 2000, max_active_series: 100}
  drop_priority:
    - {name: debug, filter: '__name__:debug_*'}
";

#[tokio::test]
async fn a_flooding_tenant_loses_its_nice_to_have_series_first_and_no_one_elses_data() {
    let mut service = start_service_with(RULES, T0 + 1_000, FLOOD_LIMITS).await;
    let client = service.client.clone();
    let mut important = service.client.clone();
    const ROUNDS: usize = 5;
    const HOT_SERIES: usize = 50; // debug series that exist, then send 40 points each per request
    const HOT_REQUESTS: usize = 3;
    const NEW_SERIES: usize = 2_500; // debug series, all new, 2 points each, per round
    const KEEP_SERIES: usize = 10;
    const KEEP_POINTS: usize = 50; // per series and round
    let mut debug_sent = 0u64;
    let mut debug_accepted = 0u64;
    let mut exhausted = 0;
    let mut send_debug = |series: Vec<v1::Series>| {
        let points: usize = series.iter().map(|series| series.points.len()).sum();
        debug_sent += points as u64;
        let mut client = client.clone();
        async move {
            match client.write(request_for("flood", series)).await {
                Ok(response) => {
                    let response = response.into_inner();
                    for rejection in &response.rejections {
                        // The response names the drop-priority entry behind each drop.
                        assert_eq!(rejection.rule, "debug", "{rejection:?}");
                    }
                    assert_eq!(
                        response.accepted + response.rejected,
                        points as u64,
                        "every point is tallied"
                    );
                    (response.accepted, 0)
                }
                Err(status) => {
                    // Nothing of it was taken in: the sender is told to back off.
                    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                    assert!(status.message().contains("\"flood\""), "{}", status.message());
                    (0, 1)
                }
            }
        }
    };
    let hot = |points: usize, now: i64| -> Vec<v1::Series> {
        (0..HOT_SERIES)
            .map(|id| counter_series("debug_cache_hits", id, points, now))
            .collect()
    };
    let (accepted, _) = send_debug(hot(1, T0 + 1_000)).await;
    debug_accepted += accepted;
    for round in 1..=ROUNDS {
        let now = T0 + round as i64 * 1_000;
        service.clock.set(now);
        // The flood comes first each second: a burst of new debug series (over
        // the series limit), then more debug points than the rate allows.
        let first = round * NEW_SERIES;
        let (accepted, refused) = send_debug(
            (first..first + NEW_SERIES)
                .map(|id| counter_series("debug_cache_probe", id, 2, now))
                .collect(),
        )
        .await;
        debug_accepted += accepted;
        exhausted += refused;
        for _ in 0..HOT_REQUESTS {
            let (accepted, refused) = send_debug(hot(40, now)).await;
            debug_accepted += accepted;
            exhausted += refused;
        }
        // Then the same tenant's important series, and another tenant's data.
        let keep = (0..KEEP_SERIES)
            .map(|id| counter_series("checkout_requests", id, KEEP_POINTS, now))
            .collect();
        let response = important
            .write(request_for("flood", keep))
            .await
            .expect("keep")
            .into_inner();
        assert_eq!(
            (response.accepted, response.rejected),
            ((KEEP_SERIES * KEEP_POINTS) as u64, 0),
            "round {round}: important series are never dropped while debug ones are left: {response:?}"
        );
        let calm = (0..KEEP_SERIES)
            .map(|id| counter_series("checkout_requests", id, KEEP_POINTS, now))
            .collect();
        let response = important
            .write(request_for("calm", calm))
            .await
            .expect("calm")
            .into_inner();
        assert_eq!(response.rejected, 0, "{response:?}");
    }
    assert!(
        exhausted > 0,
        "requests the rate left nothing of get RESOURCE_EXHAUSTED"
    );

    // Memory stays bounded: the limits track at most max_active_series of the
    // flooding tenant, and the engine holds routes only for series the limits
    // let through (the 50 hot debug series, the 50 new ones admitted before the
    // limit, the 10 important ones that evicted 10 of those, and calm's 10),
    // not for the 12,550 sent.
    let engine = service.handle().engine();
    assert_eq!(engine.limits().active_series("flood"), 100);
    assert!(
        engine.cached_series() <= 100 + KEEP_SERIES + KEEP_SERIES,
        "engine routes {} for 12,550 flooded series",
        engine.cached_series()
    );

    // The counters name what was dropped: only debug series of `flood`.
    let snapshot = service.handle().telemetry().snapshot();
    let drops = limit_drops(&snapshot);
    let rate = drops[&("flood".to_string(), "rate_limited", "debug".to_string())];
    let series = drops[&("flood".to_string(), "series_limited", "debug".to_string())];
    assert!(rate > 0 && series > 0, "{drops:?}");
    assert_eq!(drops.len(), 2, "nothing else was dropped: {drops:?}");
    assert_eq!(debug_accepted + rate + series, debug_sent);
    assert_eq!(snapshot.ingest.rejected_for(DropReason::RateLimited), rate);
    assert_eq!(snapshot.ingest.rejected_for(DropReason::SeriesLimited), series);
    assert_eq!(
        snapshot.ingest.accepted + snapshot.ingest.rejected_total(),
        snapshot.received_points,
        "every point accepted or refused with a reason: {}",
        snapshot.progress_line()
    );
    assert!(snapshot.progress_line().contains("rate_limited[flood,debug]="));
    // /metrics names the drop-priority entry too.
    let metrics = reqwest::get(format!("http://{}/metrics", service.handle().http_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (reason, count) in [("rate_limited", rate), ("series_limited", series)] {
        let line = format!(
            "tailfold_samples_dropped_total{{protocol=\"grpc\",tenant=\"flood\",reason=\"{reason}\",rule=\"debug\"}} {count}"
        );
        assert!(metrics.lines().any(|l| l == line), "{line} missing from:\n{metrics}");
    }

    // Both tenants' important data landed whole.
    service.flush_at(T0 + 20_000).await;
    let records = service.records();
    for tenant in ["flood", "calm"] {
        for id in 0..KEEP_SERIES {
            let id = id.to_string();
            let sums: Vec<_> = find(&records, &[("__name__", "checkout_requests:sum"), ("id", &id)])
                .into_iter()
                .filter(|record| record.tenant == tenant)
                .collect();
            assert_eq!(sums.len(), 1, "{tenant} {id}");
            assert_eq!(value(sums[0]), (ROUNDS * KEEP_POINTS) as f64, "{tenant} {id}");
        }
    }
    let debug_series = records
        .iter()
        .filter(|record| record.name.starts_with("debug_cache_") && record.aggregation == "sum")
        .count();
    assert!(debug_series <= 100, "{debug_series} debug series landed");
    assert!(debug_series >= HOT_SERIES, "{debug_series} debug series landed");
    service.shutdown().await;
}

#[tokio::test]
async fn remote_write_gets_429_when_the_rate_left_nothing_and_204_for_a_partial_request() {
    let config = "limits: {default: {samples_per_second: 10}}";
    let mut service = start_service_with(RULES, T0 + 1_000, config).await;
    let addr = service.handle().http_addr();
    let body = remote_write_body(20);
    let (status, _) = post_remote_write(addr, &body).await;
    assert_eq!(status, 204, "10 of 20 accepted, 10 dropped and counted");
    let (status, reason) = post_remote_write(addr, &body).await;
    assert_eq!(status, 429, "{reason}");
    assert!(reason.contains("samples_per_second"), "{reason}");
    // A second later the bucket has refilled.
    service.clock.advance(1_000);
    let (status, _) = post_remote_write(addr, &remote_write_body(5)).await;
    assert_eq!(status, 204);
    let snapshot = service.handle().telemetry().snapshot();
    assert_eq!(
        limit_drops(&snapshot),
        BTreeMap::from([(("default".to_string(), "rate_limited", String::new()), 30)])
    );
    assert_eq!(snapshot.ingest.accepted, 15);
    service.shutdown().await;
}

fn remote_write_body(samples: usize) -> Vec<u8> {
    use prost::Message;
    use tailfold::api::prometheus as wire;
    let request = wire::WriteRequest {
        timeseries: vec![wire::TimeSeries {
            labels: vec![wire::Label {
                name: "__name__".to_string(),
                value: "queue_depth".to_string(),
            }],
            samples: (0..samples)
                .map(|i| wire::Sample {
                    value: i as f64,
                    timestamp: T0 + 1_000 + i as i64,
                })
                .collect(),
            ..wire::TimeSeries::default()
        }],
        metadata: vec![],
    };
    snap::raw::Encoder::new()
        .compress_vec(&request.encode_to_vec())
        .expect("snappy")
}

/// Opens a remote-write request whose body never finishes: it holds an
/// in-flight permit until the returned stream is dropped.
async fn stalled_upload(addr: SocketAddr) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /api/v1/write HTTP/1.1\r\nHost: {addr}\r\nContent-Encoding: snappy\r\nContent-Type: application/x-protobuf\r\nContent-Length: 1000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(&[0u8; 10]).await.expect("some body");
    stream
}

async fn post_remote_write(addr: SocketAddr, body: &[u8]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /api/v1/write HTTP/1.1\r\nHost: {addr}\r\nContent-Encoding: snappy\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(body).await.expect("body");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("response");
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let reason = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, reason)
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn saturated_ingest_answers_resource_exhausted_and_429_and_statsd_counts_the_drop() {
    let config = "limits: {max_inflight_requests: 1}\nstatsd: {listen: \"127.0.0.1:0\"}";
    let mut service = start_service_with(RULES, T0 + 1_000, config).await;
    let http = service.handle().http_addr();
    let statsd = service.handle().statsd_addr().expect("statsd on");
    let gate = service.handle().engine().limits().gate().clone();

    // One upload that never finishes holds the only permit.
    let stalled = stalled_upload(http).await;
    wait_for("the stalled upload to hold the permit", || gate.in_flight() == 1).await;

    let refused = service
        .write(vec![counter_series("requests", 0, 3, T0 + 1_000)])
        .await
        .expect_err("no permit left");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("max_inflight_requests"),
        "{}",
        refused.message()
    );
    let (status, reason) = post_remote_write(http, &remote_write_body(3)).await;
    assert_eq!(status, 429, "{reason}");
    // Uploads past the limit are answered before their body arrives: the
    // service holds no more bodies than it has permits, however many senders.
    for _ in 0..20 {
        let mut refused = stalled_upload(http).await;
        let mut head = Vec::new();
        let mut buffer = [0u8; 512];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let read = refused.read(&mut buffer).await.expect("read answer");
            assert!(read > 0, "closed without an answer");
            head.extend_from_slice(&buffer[..read]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    }
    assert_eq!(gate.in_flight(), 1);
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("udp");
    socket.send_to(b"hits:1|c\nhits:2|c", statsd).await.expect("send");
    let telemetry = service.handle().telemetry().clone();
    wait_for("the statsd datagram to be counted", || {
        telemetry.snapshot().ingest.rejected_for(DropReason::Overloaded) == 2
    })
    .await;
    assert_eq!(gate.in_flight(), 1, "refusals took no permit");

    // Once the upload goes away every protocol is served again.
    drop(stalled);
    wait_for("the permit to come back", || gate.in_flight() == 0).await;
    let response = service
        .write(vec![counter_series("requests", 0, 3, T0 + 1_000)])
        .await
        .expect("served again");
    assert_eq!(response.accepted, 3);
    assert_eq!(post_remote_write(http, &remote_write_body(3)).await.0, 204);
    socket.send_to(b"hits:1|c", statsd).await.expect("send");
    wait_for("the next datagram to be folded", || {
        telemetry.snapshot().ingest.accepted == 3 + 3 + 1
    })
    .await;

    let snapshot = telemetry.snapshot();
    assert_eq!(
        snapshot.overloaded_requests,
        BTreeMap::from([
            ("grpc".to_string(), 1),
            ("remote_write".to_string(), 21),
            ("statsd".to_string(), 1)
        ])
    );
    assert!(snapshot.progress_line().contains("overloaded_requests[grpc]=1"));
    assert_eq!(
        limit_drops(&snapshot),
        BTreeMap::from([(("default".to_string(), "overloaded", String::new()), 2)]),
        "statsd samples dropped under saturation are counted by tenant"
    );
    service.shutdown().await;
}

#[tokio::test]
async fn statsd_samples_meet_the_limits_of_the_statsd_tenant() {
    let config = "statsd: {listen: \"127.0.0.1:0\", tenant: team-s}
limits:
  tenants: {team-s: {samples_per_second: 6}}
  drop_priority: [{name: debug, filter: '__name__:debug_*'}]";
    let mut service = start_service_with(RULES, T0 + 1_000, config).await;
    let statsd = service.handle().statsd_addr().expect("statsd on");
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("udp");
    // 6 tokens in two bands: debug only takes the top 3 of them, after logins took 4.
    socket
        .send_to(
            b"debug_cache:1|c\ndebug_cache:1|c\nlogins:1|c\nlogins:1|c\nlogins:1|c\nlogins:1|c",
            statsd,
        )
        .await
        .expect("send");
    let telemetry = service.handle().telemetry().clone();
    wait_for("the datagram to be counted", || {
        telemetry.snapshot().received_points == 6
    })
    .await;
    let snapshot = telemetry.snapshot();
    assert_eq!(snapshot.ingest.accepted, 4, "{}", snapshot.progress_line());
    assert_eq!(
        limit_drops(&snapshot),
        BTreeMap::from([(("team-s".to_string(), "rate_limited", "debug".to_string()), 2)])
    );
    service.shutdown().await;
}
