//! tailfold -> a real Prometheus over remote write: per-window counts, sums
//! and quantiles are queryable, quantile exemplars come back from
//! `query_exemplars`, and one hour of 1-minute native histograms lets
//! `histogram_quantile(increase(...[1h]))` match the exact quantile of that
//! hour's raw samples, which the average of per-window quantiles cannot.

mod common;
mod prometheus;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use prometheus::Prometheus;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal};
use tailfold::aggregate::histogram::{bucket_index, relative_error};
use tailfold::api::v1::Kind;

const RULES: &str = r#"
mapping_rules:
  - name: latency
    filter: '__name__:latency_seconds'
    aggregations: [count, sum, p50, p99, histogram]
    storage_policies: ["1m:40d"]
"#;

/// One minute of raw samples, with the trace ID of each.
struct Minute {
    values: Vec<f64>,
    traces: HashMap<String, f64>,
}

fn exact(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    exact_quantile(values, q)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailfold_writes_queryable_aggregates_exemplars_and_native_histograms_to_prometheus() {
    let prometheus = tokio::task::spawn_blocking(|| Prometheus::start("global: {scrape_interval: 1m}\n"))
        .await
        .unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // 61 one-minute windows ending about now: Prometheus takes them in order into its head block.
    let t0 = (now_ms - 65 * 60_000) / 60_000 * 60_000;
    // No reservoir limit: every exemplar checked below lies in its quantile's own bucket.
    let config = format!(
        "remote_write: [{{name: prom, url: \"{}\", storage_policies: [\"1m:40d\"], shards: 1}}]\nengine: {{histogram: {{max_exemplars: 0}}}}\n",
        prometheus.remote_write_url()
    );
    let mut service = start_service_with(RULES, t0, &config).await;

    let mut rng = SmallRng::seed_from_u64(99);
    let fast = LogNormal::new((0.05f64).ln(), 0.4).unwrap();
    let slow = LogNormal::new((2.0f64).ln(), 0.3).unwrap();
    let mut minutes = Vec::new();
    for minute in 0..61i64 {
        let start = t0 + minute * 60_000;
        // Six minutes of the hour have a slow tail: per-minute p99s jump, the hour's p99 does not.
        let slow_share = if minute % 10 == 5 { 0.05 } else { 0.0 };
        let mut points = Vec::new();
        let mut data = Minute {
            values: Vec::new(),
            traces: HashMap::new(),
        };
        for i in 0..1000 {
            let value = if rng.random_bool(slow_share) {
                slow.sample(&mut rng)
            } else {
                fast.sample(&mut rng)
            };
            let mut trace = [0u8; 16];
            rng.fill(&mut trace);
            trace[0] |= 1;
            data.traces.insert(hex::encode(trace), value);
            data.values.push(value);
            points.push(traced_point(value, start + i * 59, trace, [7; 8]));
        }
        service.clock.set(start + 59_999);
        let response = service
            .write(vec![series(
                &[("__name__", "latency_seconds"), ("service", "api")],
                Kind::Distribution,
                points,
            )])
            .await
            .unwrap();
        assert_eq!(response.accepted, 1000);
        // The 1m window is due 30 s after its end (half a window of lateness).
        service.flush_at(start + 90_000).await;
        minutes.push(data);
    }
    let end = t0 + 61 * 60_000;
    let sent = service.handle().telemetry().snapshot().sinks;
    assert_eq!(sent.dropped, Default::default(), "the sink dropped data: {sent:?}");
    assert!(sent.sent.get("prom").copied().unwrap_or(0) >= 61 * 5, "{sent:?}");

    let checks = tokio::task::spawn_blocking(move || {
        // Per-window values, queried at each window's end (the sample timestamp).
        for minute in [3i64, 25, 55] {
            let at = t0 + (minute + 1) * 60_000;
            let data = &minutes[minute as usize];
            let count = prometheus.wait_for(Duration::from_secs(10), |p| {
                p.query_value("latency_seconds:count{service=\"api\"}", at)
            });
            assert_eq!(count, 1000.0);
            let sum = prometheus.query_value("latency_seconds:sum", at).unwrap();
            let exact_sum: f64 = data.values.iter().sum();
            assert!((sum - exact_sum).abs() <= 1e-9 * exact_sum, "sum {sum} vs {exact_sum}");
            let p99 = prometheus
                .query_value("latency_seconds:quantile{quantile=\"0.99\"}", at)
                .unwrap();
            let exact_p99 = exact(&mut data.values.clone(), 0.99);
            assert!(
                (p99 - exact_p99).abs() / exact_p99 <= relative_error(6) + 1e-12,
                "minute {minute}: p99 {p99} vs {exact_p99}"
            );
        }

        // Exemplars of the p99 series: real samples of their minute, in the p99's bucket.
        let exemplars = prometheus.query_exemplars("latency_seconds:quantile{quantile=\"0.99\"}", t0, end);
        let listed: Vec<&serde_json::Value> = exemplars
            .iter()
            .flat_map(|s| s["exemplars"].as_array().unwrap().iter())
            .collect();
        assert!(
            listed.len() >= 50,
            "expected an exemplar per window, got {}",
            listed.len()
        );
        for exemplar in listed {
            let trace = exemplar["labels"]["trace_id"].as_str().expect("trace_id label");
            assert_eq!(exemplar["labels"]["span_id"], "0707070707070707");
            let timestamp_ms = (exemplar["timestamp"].as_f64().unwrap() * 1000.0).round() as i64;
            let minute = ((timestamp_ms - t0) / 60_000) as usize;
            let value = *minutes[minute]
                .traces
                .get(trace)
                .unwrap_or_else(|| panic!("trace {trace} was not sent in minute {minute}"));
            let reported: f64 = exemplar["value"].as_str().unwrap().parse().unwrap();
            assert_eq!(reported, value);
            let p99 = prometheus
                .query_value(
                    "latency_seconds:quantile{quantile=\"0.99\"}",
                    t0 + (minute as i64 + 1) * 60_000,
                )
                .unwrap();
            assert_eq!(
                bucket_index(6, value),
                bucket_index(6, p99),
                "exemplar {value} not in the bucket of p99 {p99}"
            );
        }

        // One hour of native histograms: increase() over [1h] at the last window's end covers
        // minutes 1..=60 (minute 0's histogram is the baseline the increase starts from).
        let mut hour: Vec<f64> = minutes[1..].iter().flat_map(|m| m.values.iter().copied()).collect();
        let exact_p99 = exact(&mut hour, 0.99);
        let from_histograms = prometheus
            .query_value("histogram_quantile(0.99, increase(latency_seconds[1h]))", end)
            .expect("one histogram series");
        // Prometheus interpolates inside the bucket holding the rank: within one bucket width
        // (base - 1 = 1.09 % at scale 6), two when the rank sits on a bucket edge.
        let bucket_width = 2f64.powf(1.0 / 64.0) - 1.0;
        let error = (from_histograms - exact_p99).abs() / exact_p99;
        assert!(
            error <= 2.0 * bucket_width,
            "histogram_quantile {from_histograms} vs exact {exact_p99}: {error}"
        );
        let averaged = prometheus
            .query_value("avg_over_time(latency_seconds:quantile{quantile=\"0.99\"}[1h])", end)
            .unwrap();
        let averaged_error = (averaged - exact_p99).abs() / exact_p99;
        assert!(
            averaged_error > 10.0 * error.max(bucket_width),
            "averaging p99s ({averaged}) should miss the hour's p99 ({exact_p99}) by far"
        );
        (from_histograms, exact_p99, averaged)
    })
    .await
    .unwrap();
    eprintln!(
        "histogram_quantile={:.5} exact={:.5} average_of_p99s={:.5}",
        checks.0, checks.1, checks.2
    );
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_retried_with_a_bounded_buffer_and_the_backlog_arrives_in_order() {
    let port = prometheus::free_port();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let t0 = (now_ms - 30 * 60_000) / 60_000 * 60_000;
    let config = format!(
        "remote_write: [{{name: prom, url: \"http://127.0.0.1:{port}/api/v1/write\", storage_policies: [\"1m:1d\"], shards: 1, max_buffered_series: 6, min_backoff_ms: 1000, max_backoff_ms: 4000}}]\n"
    );
    let rules = "defaults: {storage_policies: [\"1m:1d\"], counter: {aggregations: [sum]}}\n";
    let mut service = start_service_with(rules, t0, &config).await;
    // Nothing listens on the port: ten windows of one series each, one record per window.
    for minute in 0..10i64 {
        let start = t0 + minute * 60_000;
        service.clock.set(start + 59_000);
        service
            .write(vec![series(
                &[("__name__", "jobs")],
                Kind::Counter,
                vec![point(minute as f64, start + 1)],
            )])
            .await
            .unwrap();
        service.flush_at(start + 90_000).await;
    }
    let sinks = service.handle().telemetry().snapshot().sinks;
    assert!(
        sinks.retries.get("prom").copied().unwrap_or(0) >= 1,
        "no retry: {sinks:?}"
    );
    assert_eq!(sinks.sent.get("prom"), None);
    // The buffer holds 6 series; the 4 oldest windows were dropped and counted.
    assert_eq!(
        sinks.dropped.get(&("prom".to_string(), "buffer_full".to_string())),
        Some(&4),
        "{sinks:?}"
    );
    assert_eq!(sinks.backlog.get(&("prom".to_string(), 0)), Some(&6));

    // Storage comes back: the next ticks after the backoff deliver the backlog, oldest first.
    let prometheus = tokio::task::spawn_blocking(move || Prometheus::start_on("", port))
        .await
        .unwrap();
    let mut clock = t0 + 10 * 60_000 + 30_000;
    for _ in 0..5 {
        clock += 5_000;
        service.flush_at(clock).await;
    }
    let sinks = service.handle().telemetry().snapshot().sinks;
    assert_eq!(sinks.sent.get("prom"), Some(&6), "{sinks:?}");
    assert_eq!(sinks.backlog.get(&("prom".to_string(), 0)), Some(&0));
    let values = tokio::task::spawn_blocking(move || {
        (4..10i64)
            .map(|minute| prometheus.query_value("jobs:sum", t0 + (minute + 1) * 60_000))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert_eq!(values, (4..10).map(|m| Some(m as f64)).collect::<Vec<_>>());
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_prometheus_refuses_is_counted_and_never_retried() {
    let prometheus = tokio::task::spawn_blocking(|| Prometheus::start("")).await.unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let t0 = (now_ms - 20 * 60_000) / 60_000 * 60_000;
    let config = format!(
        "remote_write: [{{name: prom, url: \"{}\", storage_policies: [\"1m:1d\"], shards: 1}}]\n",
        prometheus.remote_write_url()
    );
    let rules = "defaults: {storage_policies: [\"1m:1d\"], counter: {aggregations: [sum]}}\n";
    // A first instance writes minute 5; a second one (fresh state, as after a restart)
    // then writes minute 3 of the same series: Prometheus answers 400 (out of order).
    for (minute, value) in [(5i64, 1.0), (3, 2.0)] {
        let start = t0 + minute * 60_000;
        let mut service = start_service_with(rules, start + 59_000, &config).await;
        service
            .write(vec![series(
                &[("__name__", "jobs")],
                Kind::Counter,
                vec![point(value, start + 1)],
            )])
            .await
            .unwrap();
        service.flush_at(start + 90_000).await;
        service.flush_at(start + 120_000).await;
        let sinks = service.handle().telemetry().snapshot().sinks;
        if minute == 5 {
            assert_eq!(sinks.sent.get("prom"), Some(&1), "{sinks:?}");
        } else {
            assert_eq!(
                sinks.dropped.get(&("prom".to_string(), "refused".to_string())),
                Some(&1),
                "{sinks:?}"
            );
            assert_eq!(sinks.retries.get("prom"), None, "a 4xx must not be retried: {sinks:?}");
            assert_eq!(sinks.backlog.get(&("prom".to_string(), 0)), Some(&0));
        }
        service.shutdown().await;
    }
}
