//! statsd / DogStatsD over a real UDP socket into the in-process service:
//! sampled counters, gauges and timers land as exact aggregates under their
//! tags; malformed lines are refused alone and counted; shutdown stops the listener.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use rand_distr::{Distribution, LogNormal};
use tailfold::aggregate::histogram::relative_error;
use tailfold::config::{IngestLimits, StatsdSettings};
use tailfold::ingest::statsd::bind_statsd;
use tailfold::model::DropReason;
use tailfold::telemetry::TelemetrySnapshot;
use tokio::net::UdpSocket;

const T0: i64 = 1_800_000_000_000; // a 10s window boundary
const STATSD_ON: &str = "statsd: {listen: \"127.0.0.1:0\"}";

async fn send(datagrams: &[Vec<u8>], to: SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("client socket");
    for datagram in datagrams {
        socket.send_to(datagram, to).await.expect("send");
    }
}

/// Waits until the service has counted `points` received points. UDP may
/// lose datagrams, so a loss fails here, with the counters, not later.
async fn wait_received(service: &TestService, points: u64) -> TelemetrySnapshot {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let snapshot = service.handle().telemetry().snapshot();
        if snapshot.received_points >= points {
            assert_eq!(snapshot.received_points, points, "more points than sent");
            return snapshot;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after 5 s only {} of {points} points arrived: {}",
            snapshot.received_points,
            snapshot.progress_line()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn statsd_addr(service: &TestService) -> SocketAddr {
    service.handle().statsd_addr().expect("statsd is on")
}

#[tokio::test]
async fn sampled_counters_gauges_and_timers_land_exactly_under_their_tags() {
    let mut service = start_service_with("", T0 + 1_000, STATSD_ON).await;
    let address = statsd_addr(&service);

    // Counters: 40 lines of 1 @0.5 (each stands for 2) and one unsampled 2.5.
    let mut counters = String::new();
    for _ in 0..40 {
        counters.push_str("api.requests:1|c|@0.5|#service:api,http.status:200\n");
    }
    counters.push_str("api.requests:2.5|c|#http.status:200,service:api\n");
    counters.push_str("api.requests:-1.5|c|#service:web\n");
    // Gauges in one datagram, so arrival order (which decides `last` on equal timestamps) is kept.
    let gauges = "queue.depth:5|g|#service:api\nqueue.depth:9|g|#service:api\nqueue.depth:3|g|#service:api\nqueue.depth:7|g|#service:api\n";

    // Timers @0.1: each value stands for exactly 10 observations.
    let mut rng = SmallRng::seed_from_u64(11);
    let shape = LogNormal::<f64>::new(3.0, 0.8).unwrap();
    let values: Vec<f64> = (0..600)
        .map(|_| (shape.sample(&mut rng) * 1000.0).round() / 1000.0)
        .collect();
    let mut datagrams = vec![counters.into_bytes(), gauges.as_bytes().to_vec()];
    for chunk in values.chunks(40) {
        let mut datagram = String::new();
        // DogStatsD multi-value lines and single-value lines mixed.
        for pair in chunk.chunks(2) {
            let joined: Vec<String> = pair.iter().map(f64::to_string).collect();
            datagram.push_str(&format!(
                "api.latency:{}|ms|@0.1|#service:api|c:container42\n",
                joined.join(":")
            ));
        }
        datagrams.push(datagram.into_bytes());
    }
    send(&datagrams, address).await;
    let snapshot = wait_received(&service, 42 + 4 + values.len() as u64).await;
    assert_eq!(
        snapshot.ingest.accepted,
        snapshot.received_points,
        "{}",
        snapshot.progress_line()
    );
    assert_eq!(snapshot.statsd_malformed_lines, 0);

    service.flush_at(T0 + 30_000).await;
    let records = service.records();
    assert!(records.iter().all(|record| record.tenant == "default"));

    let api = [("service", "api"), ("http_status", "200")];
    let sum = one(&records, &[&[("__name__", "api_requests:sum")], &api[..]].concat(), T0);
    assert_eq!(value(sum), 40.0 * 2.0 + 2.5);
    assert_eq!(
        value(one(
            &records,
            &[("__name__", "api_requests:rate"), ("service", "api")],
            T0
        )),
        82.5 / 10.0
    );
    assert_eq!(
        value(one(
            &records,
            &[("__name__", "api_requests:sum"), ("service", "web")],
            T0
        )),
        -1.5
    );

    let depth = [("service", "api")];
    for (name, expected) in [("queue_depth", 7.0), ("queue_depth:min", 3.0), ("queue_depth:max", 9.0)] {
        assert_eq!(
            value(one(&records, &[&[("__name__", name)], &depth[..]].concat(), T0)),
            expected,
            "{name}"
        );
    }

    let timer = |name| vec![("__name__", name), ("service", "api")];
    assert_eq!(
        value(one(&records, &timer("api_latency:count"), T0)),
        10.0 * values.len() as f64
    );
    let exact_sum: f64 = values.iter().map(|value| value * 10.0).sum();
    let sum = value(one(&records, &timer("api_latency:sum"), T0));
    assert!((sum - exact_sum).abs() <= exact_sum * 1e-12, "sum {sum} vs {exact_sum}");
    // The exact quantile of what the samples stand for: each value ten times.
    let mut expanded: Vec<f64> = values.iter().flat_map(|value| [*value; 10]).collect();
    expanded.sort_by(f64::total_cmp);
    assert_eq!(value(one(&records, &timer("api_latency:min"), T0)), expanded[0]);
    assert_eq!(
        value(one(&records, &timer("api_latency:max"), T0)),
        *expanded.last().unwrap()
    );
    for q in [0.5, 0.9, 0.99, 0.999] {
        let quantile = q.to_string();
        let pairs = [
            ("__name__", "api_latency:quantile"),
            ("service", "api"),
            ("quantile", &quantile),
        ];
        let reported = value(one(&records, &pairs, T0));
        let exact = exact_quantile(&expanded, q);
        let error = (reported - exact).abs() / exact;
        assert!(
            error <= relative_error(6) + 1e-12,
            "p{q}: {reported} vs exact {exact}: error {error}"
        );
    }
    service.shutdown().await;
}

#[tokio::test]
async fn malformed_lines_are_refused_alone_and_counted_and_serving_goes_on() {
    let config = "statsd: {listen: \"127.0.0.1:0\", tenant: team-a}";
    let mut service = start_service_with("", T0 + 1_000, config).await;
    let address = statsd_addr(&service);

    let mut mixed = b"good:1|c\nno_colon\nname:abc|c\ngood:2|c|#k:v\nname:|s\nname:+1:2|g\n".to_vec();
    mixed.extend_from_slice(b"\xff\xfe:1|c\nname:1|c|@0\ngood:3:4|c\n\n");
    send(&[mixed], address).await;
    let snapshot = wait_received(&service, 4 + 6).await;
    assert_eq!(snapshot.statsd_malformed_lines, 6, "{}", snapshot.progress_line());
    assert_eq!(snapshot.ingest.rejected_for(DropReason::InvalidSeries), 6);
    assert_eq!(snapshot.ingest.accepted, 4);
    assert!(snapshot.progress_line().contains("statsd_malformed_lines=6"));

    // A datagram with nothing good in it, then good traffic again.
    send(&[b"\xff\n:|\n".to_vec(), b"good:10|c\n".to_vec()], address).await;
    let snapshot = wait_received(&service, 10 + 2 + 1).await;
    assert_eq!(snapshot.statsd_malformed_lines, 8);
    assert_eq!(snapshot.ingest.accepted, 5);

    service.flush_at(T0 + 30_000).await;
    let records = service.records();
    assert!(records.iter().all(|record| record.tenant == "team-a"));
    let sums = find(&records, &[("__name__", "good:sum")]);
    let untagged: Vec<f64> = sums
        .iter()
        .filter(|record| !record.labels.contains_key("k"))
        .map(|record| value(record))
        .collect();
    assert_eq!(untagged, [1.0 + 3.0 + 4.0 + 10.0]);
    assert_eq!(value(one(&records, &[("__name__", "good:sum"), ("k", "v")], T0)), 2.0);
    assert!(find(&records, &[("__name__", "name:sum")]).is_empty());
    service.shutdown().await;
}

#[tokio::test]
async fn shutdown_flushes_statsd_samples_and_releases_the_socket() {
    let mut service = start_service_with("", T0 + 1_000, STATSD_ON).await;
    let address = statsd_addr(&service);
    send(&[b"late.night:4|c\nlate.night:5|c".to_vec()], address).await;
    wait_received(&service, 2).await;

    service.shutdown().await;
    let records = service.records();
    let sum = one(&records, &[("__name__", "late_night:sum")], T0);
    assert_eq!((value(sum), sum.partial), (9.0, true));
    // The listener task has ended and dropped its socket: the port is free again.
    UdpSocket::bind(address)
        .await
        .expect("statsd socket released at shutdown");
}

#[tokio::test]
async fn statsd_is_off_unless_configured() {
    let mut service = start_service("", T0).await;
    assert_eq!(service.handle().statsd_addr(), None);
    service.shutdown().await;
}

#[tokio::test]
async fn several_readers_share_the_port_and_count_every_line_of_every_sender() {
    let config = "statsd: {listen: \"127.0.0.1:0\", readers: 4, batch_datagrams: 16}";
    let mut service = start_service_with("", T0 + 1_000, config).await;
    let address = statsd_addr(&service);
    // Eight senders (eight source ports, spread over the sockets by the kernel), 50 datagrams of 20 lines each.
    let mut senders = Vec::new();
    for sender in 0..8 {
        senders.push(tokio::spawn(async move {
            let line = format!("hits:1|c|#sender:s{sender}\n");
            let datagrams: Vec<Vec<u8>> = (0..50).map(|_| line.repeat(20).into_bytes()).collect();
            send(&datagrams, address).await;
        }));
    }
    for sender in senders {
        sender.await.unwrap();
    }
    let snapshot = wait_received(&service, 8 * 50 * 20).await;
    assert_eq!(snapshot.statsd_receive_dropped, 0, "{}", snapshot.progress_line());
    assert_eq!(snapshot.ingest.accepted, 8 * 50 * 20);

    service.flush_at(T0 + 30_000).await;
    let records = service.records();
    for sender in 0..8 {
        let sum = one(
            &records,
            &[("__name__", "hits:sum"), ("sender", &format!("s{sender}"))],
            T0,
        );
        assert_eq!(value(sum), 1_000.0, "sender {sender}");
    }
    service.shutdown().await;
}

#[tokio::test]
async fn datagrams_the_kernel_drops_on_a_full_receive_buffer_are_counted() {
    // The smallest buffer and one reader: a burst overflows it.
    let config = "statsd: {listen: \"127.0.0.1:0\", readers: 1, receive_buffer_bytes: 4096}";
    let mut service = start_service_with("", T0 + 1_000, config).await;
    let address = statsd_addr(&service);
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let datagram = "burst:1|c|#padding:0123456789012345678901234567890123456789\n".repeat(10);
    for _ in 0..3_000 {
        socket.send_to(datagram.as_bytes(), address).unwrap();
    }
    // The kernel reports a socket's drops with the next datagram it delivers.
    tokio::time::sleep(Duration::from_millis(300)).await;
    socket.send_to(b"burst:1|c|#padding:last\n", address).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let snapshot = service.handle().telemetry().snapshot();
        // Every line sent was received or was in a datagram counted as dropped.
        let accounted = snapshot.received_points + snapshot.statsd_receive_dropped * 10;
        if accounted == 30_001 {
            // 3,000 datagrams into about 8 KiB of buffer: drops are certain, so the count is exercised.
            assert!(snapshot.statsd_receive_dropped > 0, "{}", snapshot.progress_line());
            assert_eq!(snapshot.ingest.accepted, snapshot.received_points);
            break;
        }
        assert!(
            accounted < 30_001 && tokio::time::Instant::now() < deadline,
            "{accounted} of 30001 lines accounted: {}",
            snapshot.progress_line()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    service.shutdown().await;
}

#[test]
fn a_port_held_by_another_listener_is_refused_even_with_several_readers() {
    let settings = |listen: SocketAddr| StatsdSettings {
        listen,
        tenant: "default".to_string(),
        max_packet_bytes: 1432,
        max_gauges: 10,
        gauge_idle_ms: 60_000,
        readers: 3,
        batch_datagrams: 4,
        batch_wait_ms: 0,
        receive_buffer_bytes: 65_536,
        limits: IngestLimits::default(),
    };
    let first = bind_statsd(&settings("127.0.0.1:0".parse().unwrap())).expect("free port");
    let address = first.local_addr();
    assert_ne!(address.port(), 0);
    // SO_REUSEPORT alone would let this second group join the first one's port.
    let error = bind_statsd(&settings(address)).err().expect("port held");
    assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);
    drop(first);
    bind_statsd(&settings(address)).expect("free again once the first is gone");
}
