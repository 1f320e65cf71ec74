//! Shutdown drains the remote-write buffer within the grace period: the
//! downstream Prometheus is down when SIGTERM-equivalent shutdown begins and
//! comes up a moment later; the sink keeps retrying with backoff and the
//! window flushed at shutdown reaches it, with nothing counted as dropped.

mod common;
mod prometheus;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use prometheus::{free_port, Prometheus};
use tailfold::api::v1::{self, Kind};
use tailfold::clock::ManualClock;
use tailfold::config::ServiceSettings;
use tailfold::rules::RuleSet;
use tailfold::server::start;

const RULES: &str = "defaults:\n  storage_policies: [\"10s:1h\"]\n  counter: { aggregations: [sum] }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_keeps_retrying_until_a_late_downstream_takes_the_last_window() {
    let port = free_port();
    let real_now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    let t0 = (real_now - 60_000).div_euclid(10_000) * 10_000;
    let data_dir = tempfile::tempdir().unwrap();
    // A long grace period (half of it for retries), so a slow Prometheus start never fails the test.
    let config = format!(
        "grpc: {{listen: \"127.0.0.1:0\"}}\nhttp: {{listen: \"127.0.0.1:0\"}}\ndata_dir: {}\n\
         flush: {{interval_ms: 3600000, shutdown_grace_ms: 120000, progress_interval_ms: 0}}\n\
         remote_write: [{{name: prom, url: \"http://127.0.0.1:{port}/api/v1/write\", \
         storage_policies: [\"10s:1h\"], shards: 2, min_backoff_ms: 100, max_backoff_ms: 500}}]\n",
        data_dir.path().display()
    );
    let settings = ServiceSettings::parse(&config, Path::new("test/tailfold.yaml")).unwrap();
    let clock = Arc::new(ManualClock::new(t0 + 2_000));
    let handle = start(settings, RuleSet::parse(RULES, "rules.yaml").unwrap(), clock.clone())
        .await
        .unwrap();
    let mut client = v1::ingest_client::IngestClient::connect(format!("http://{}", handle.grpc_addr()))
        .await
        .unwrap();
    let points = (0..7).map(|i| point(1.0, t0 + 1_000 + i)).collect();
    let request = v1::WriteRequest {
        series: vec![series(&[("__name__", "drained")], Kind::Counter, points)],
    };
    assert_eq!(client.write(request).await.unwrap().into_inner().accepted, 7);
    // Past the window's end but within its lateness: only the shutdown flush emits it.
    clock.set(t0 + 10_001);
    let telemetry = handle.telemetry().clone();

    let shutdown = tokio::spawn(handle.shutdown());
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(!shutdown.is_finished(), "shutdown waits for the downstream");
    let prometheus = tokio::task::spawn_blocking(move || Prometheus::start_on("global: {scrape_interval: 1m}\n", port))
        .await
        .unwrap();
    shutdown.await.unwrap().expect("clean shutdown within the grace period");

    let sinks = telemetry.snapshot().sinks;
    assert!(sinks.dropped.is_empty(), "nothing dropped: {sinks:?}");
    assert!(sinks.retries.get("prom").copied().unwrap_or(0) > 0, "{sinks:?}");
    assert_eq!(sinks.sent.get("prom").copied(), Some(1), "{sinks:?}");
    let value = tokio::task::spawn_blocking(move || {
        prometheus.wait_for(Duration::from_secs(10), |p| p.query_value("drained:sum", t0 + 10_000))
    })
    .await
    .unwrap();
    assert_eq!(value, 7.0);
}
