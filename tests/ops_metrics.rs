//! Self-metrics: `GET /metrics` during a run shows what was sent, accepted and
//! dropped by protocol, tenant, reason and rule, the open windows per tenant
//! and policy, and flush activity, with the values that were sent. Two
//! services in one process keep their own counts. A real Prometheus scrapes
//! the endpoint and reads the same values (the exposition parses).

mod common;
mod prometheus;

use std::collections::BTreeMap;

use common::*;
use tailfold::api::v1;

const T0: i64 = 1_800_000_000_000;

const RULES: &str = r#"
defaults:
  storage_policies: ["10s:1d"]
mapping_rules:
  - name: drop-debug
    filter: '__name__:debug_*'
    drop: true
  - name: long-term
    filter: '__name__:requests'
    aggregations: [sum]
    storage_policies: ["10s:1d", "1m:30d"]
"#;

/// Every sample of the exposition, by its full series text (`name{labels}`).
async fn scrape(service: &TestService) -> BTreeMap<String, f64> {
    let url = format!("http://{}/metrics", service.handle().http_addr());
    let text = tokio::task::spawn_blocking(move || {
        let response = reqwest::blocking::get(&url).expect("scrape");
        assert_eq!(response.status().as_u16(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        response.text().unwrap()
    })
    .await
    .unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect(line);
            (series.to_string(), value.parse::<f64>().expect(line))
        })
        .collect()
}

fn get(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("{series} not exported; have {:#?}", samples.keys().collect::<Vec<_>>()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_what_was_sent_and_dropped() {
    let mut service = start_service(RULES, T0 + 2_000).await;
    let mut other = start_service(RULES, T0 + 2_000).await;
    // Accepted: 3 series x 4 points (one with two policies: still one point accepted each).
    let accepted = (0..3)
        .map(|pod| {
            let pod = pod.to_string();
            series(
                &[("__name__", "requests"), ("pod", &pod)],
                v1::Kind::Counter,
                (0..4).map(|i| point(1.0, T0 + i)).collect(),
            )
        })
        .collect();
    service.write(accepted).await.unwrap();
    // Dropped by rule: 5 points.
    let debug = vec![series(
        &[("__name__", "debug_x")],
        v1::Kind::Gauge,
        (0..5).map(|i| point(1.0, T0 + i)).collect(),
    )];
    service.write(debug).await.unwrap();
    // Too far in the future (tolerance 60 s): 2 points, from tenant "acme".
    let mut request = tonic::Request::new(v1::WriteRequest {
        series: vec![series(
            &[("__name__", "requests"), ("pod", "9")],
            v1::Kind::Counter,
            vec![point(1.0, T0 + 600_000), point(1.0, T0 + 700_000)],
        )],
    });
    request.metadata_mut().insert("x-scope-orgid", "acme".parse().unwrap());
    service.client.write(request).await.unwrap();

    let samples = scrape(&service).await;
    let grpc = r#"protocol="grpc",tenant="default""#;
    assert_eq!(
        get(&samples, &format!("tailfold_samples_received_total{{{grpc}}}")),
        17.0
    );
    assert_eq!(
        get(&samples, &format!("tailfold_samples_accepted_total{{{grpc}}}")),
        12.0
    );
    assert_eq!(
        get(
            &samples,
            &format!(r#"tailfold_samples_dropped_total{{{grpc},reason="dropped_by_rule",rule="drop-debug"}}"#)
        ),
        5.0
    );
    let acme = r#"protocol="grpc",tenant="acme""#;
    assert_eq!(
        get(&samples, &format!("tailfold_samples_received_total{{{acme}}}")),
        2.0
    );
    assert_eq!(
        get(
            &samples,
            &format!(r#"tailfold_samples_dropped_total{{{acme},reason="too_far_in_future"}}"#)
        ),
        2.0
    );
    // 3 outputs, each with one window under each of its two policies.
    assert_eq!(
        get(&samples, r#"tailfold_active_series{tenant="default",policy="10s:1d"}"#),
        3.0
    );
    assert_eq!(
        get(&samples, r#"tailfold_active_series{tenant="default",policy="1m:30d"}"#),
        3.0
    );
    assert_eq!(
        get(&samples, r#"tailfold_open_windows{tenant="default",policy="10s:1d"}"#),
        3.0
    );
    assert_eq!(get(&samples, "tailfold_rules_reloads_total{result=\"failure\"}"), 0.0);
    assert!(samples
        .keys()
        .all(|series| !series.starts_with("tailfold_wal_size_bytes")));

    // The other service in this process saw nothing.
    let untouched = scrape(&other).await;
    assert!(
        untouched
            .keys()
            .all(|series| !series.starts_with("tailfold_samples_received_total")),
        "{untouched:?}"
    );

    // After a flush of the 10 s windows: counts, a flush duration, and the gauges follow.
    service.flush_at(T0 + 20_000).await;
    let samples = scrape(&service).await;
    assert_eq!(get(&samples, "tailfold_windows_flushed_total"), 3.0);
    assert_eq!(get(&samples, "tailfold_records_emitted_total"), 3.0);
    assert_eq!(get(&samples, "tailfold_records_written_total"), 3.0);
    assert!(get(&samples, "tailfold_flush_duration_seconds_count") >= 1.0);
    assert_eq!(get(&samples, "tailfold_flush_lag_seconds"), 0.0);
    assert_eq!(
        get(&samples, r#"tailfold_active_series{tenant="default",policy="10s:1d"}"#),
        0.0
    );
    assert_eq!(
        get(&samples, r#"tailfold_active_series{tenant="default",policy="1m:30d"}"#),
        3.0
    );
    // The flush loop's lag behind the clock grows when it does not run.
    service.clock.set(T0 + 25_000);
    assert_eq!(get(&scrape(&service).await, "tailfold_flush_lag_seconds"), 5.0);
    other.shutdown().await;
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_self_metrics() {
    let mut service = start_service(RULES, T0 + 2_000).await;
    let accepted = vec![series(
        &[("__name__", "requests"), ("pod", "a")],
        v1::Kind::Counter,
        vec![point(1.0, T0), point(1.0, T0 + 1)],
    )];
    service.write(accepted).await.unwrap();
    let debug = vec![series(
        &[("__name__", "debug_x")],
        v1::Kind::Gauge,
        vec![point(1.0, T0)],
    )];
    service.write(debug).await.unwrap();
    service.flush_at(T0 + 20_000).await;

    let target = service.handle().http_addr();
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tailfold\n    static_configs:\n      - targets: [\"{target}\"]\n"
    );
    let values = tokio::task::spawn_blocking(move || {
        let prometheus = prometheus::Prometheus::start(&config);
        let now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64
        };
        prometheus.wait_for(std::time::Duration::from_secs(20), |p| {
            p.query_value(r#"up{job="tailfold"}"#, now()).filter(|up| *up == 1.0)
        });
        let query = |promql: &str| prometheus.query_value(promql, now());
        (
            query(r#"tailfold_samples_accepted_total{protocol="grpc",tenant="default"}"#),
            query(r#"tailfold_samples_dropped_total{reason="dropped_by_rule",rule="drop-debug"}"#),
            query("tailfold_flush_duration_seconds_count"),
            query(r#"tailfold_flush_duration_seconds_bucket{le="+Inf"}"#),
            query(r#"tailfold_active_series{policy="1m:30d"}"#),
        )
    })
    .await
    .unwrap();
    assert_eq!(values.0, Some(2.0));
    assert_eq!(values.1, Some(1.0));
    assert_eq!(values.2, values.3);
    assert!(values.2.is_some_and(|count| count >= 1.0), "{values:?}");
    assert_eq!(values.4, Some(1.0));
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_latency_backlog_and_failures_are_exported() {
    let prometheus = tokio::task::spawn_blocking(|| prometheus::Prometheus::start("global: {scrape_interval: 1m}\n"))
        .await
        .unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let t0 = (now_ms - 120_000) / 10_000 * 10_000;
    let dead = prometheus::free_port();
    let config = format!(
        "remote_write:\n  - {{name: prom, url: \"{}\", storage_policies: [\"10s:1d\"], shards: 1}}\n  - {{name: dead, url: \"http://127.0.0.1:{dead}/api/v1/write\", storage_policies: [\"10s:1d\"], shards: 1, min_backoff_ms: 60000, max_backoff_ms: 60000}}\n",
        prometheus.remote_write_url()
    );
    let mut service = start_service_with(RULES, t0 + 1_000, &config).await;
    let pods = (0..4)
        .map(|pod| {
            let pod = pod.to_string();
            series(
                &[("__name__", "requests"), ("pod", &pod)],
                v1::Kind::Counter,
                vec![point(1.0, t0)],
            )
        })
        .collect();
    service.write(pods).await.unwrap();
    service.flush_at(t0 + 20_000).await;

    let samples = scrape(&service).await;
    // Four `requests_sum` series of one 10 s window reach the live sink ...
    assert_eq!(get(&samples, r#"tailfold_sink_samples_sent_total{sink="prom"}"#), 4.0);
    assert!(get(&samples, r#"tailfold_sink_send_duration_seconds_count{sink="prom"}"#) >= 1.0);
    assert_eq!(get(&samples, r#"tailfold_sink_backlog_series{sink="prom"}"#), 0.0);
    // ... and wait for the dead one, which failed, will retry and holds them.
    assert!(get(&samples, r#"tailfold_sink_retries_total{sink="dead"}"#) >= 1.0);
    assert_eq!(get(&samples, r#"tailfold_sink_backlog_series{sink="dead"}"#), 4.0);
    assert!(get(&samples, r#"tailfold_sink_send_duration_seconds_count{sink="dead"}"#) >= 1.0);
    assert!(samples
        .keys()
        .all(|series| !series.starts_with("tailfold_sink_samples_sent_total{sink=\"dead\"")));
    // No graceful shutdown: draining the dead sink would take the whole grace period.
    drop(service.handle.take());
    tokio::task::spawn_blocking(move || drop(prometheus)).await.unwrap();
}

/// With the write-ahead log on, `tailfold_wal_size_bytes` is the size of the
/// segments on disk after a flush.
#[tokio::test]
async fn the_wal_size_gauge_is_the_bytes_of_its_segments() {
    let mut service = start_service_with(RULES, T0 + 2_000, "wal: {enabled: true}\n").await;
    service
        .write(vec![series(
            &[("__name__", "requests"), ("pod", "0")],
            v1::Kind::Counter,
            (0..50).map(|i| point(1.0, T0 + i)).collect(),
        )])
        .await
        .unwrap();
    // A window still open: the flush commits nothing, the segment stays.
    service.flush_at(T0 + 3_000).await;
    let on_disk: u64 = std::fs::read_dir(service.data_dir.path().join("wal"))
        .unwrap()
        .flatten()
        .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "wal"))
        .map(|entry| entry.metadata().unwrap().len())
        .sum();
    assert!(on_disk > 0);
    let samples = scrape(&service).await;
    assert_eq!(get(&samples, "tailfold_wal_size_bytes"), on_disk as f64);
    service.shutdown().await;
}
