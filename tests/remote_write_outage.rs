//! A downstream outage: a real Prometheus is stopped for 30 seconds while
//! tailfold keeps taking writes, then restarted on the same port and data.
//! The remote-write buffer (a small memory bound, spilling to disk) rides it
//! out: every window acknowledged during the outage reaches Prometheus
//! afterwards, in order (Prometheus refuses out-of-order samples), and the
//! drop counters stay at zero.

mod common;
mod prometheus;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use parking_lot::Mutex;
use prometheus::Prometheus;
use tailfold::api::v1::Kind;

const RULES: &str = "defaults:\n  storage_policies: [\"1s:1h\"]\n  counter: { aggregations: [sum] }\n";
/// Points per write; the load writes every 100 ms.
const POINTS: usize = 3;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Backlog over all shards of the sink, in series.
fn backlog(service: &TestService) -> u64 {
    service.handle().telemetry().snapshot().sinks.backlog.values().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30_second_prometheus_outage_loses_no_acknowledged_window() {
    let prometheus = tokio::task::spawn_blocking(|| Prometheus::start("global: {scrape_interval: 1m}\n"))
        .await
        .unwrap();
    let spill_dir = tempfile::tempdir().unwrap();
    // Four series of memory buffer: during the outage nearly everything spills to disk.
    let config = format!(
        "engine: {{lateness_ms: {{\"1s\": 500}}}}\nremote_write: [{{name: prom, url: \"{}\", storage_policies: [\"1s:1h\"], \
         shards: 1, min_backoff_ms: 100, max_backoff_ms: 1000, max_buffered_series: 4, spill_dir: \"{}\"}}]\n",
        prometheus.remote_write_url(),
        spill_dir.path().display()
    );
    let service = start_service_real_clock(RULES, 200, &config).await;
    let mut client = service.client.clone();
    let prometheus = Arc::new(Mutex::new(prometheus));

    // The load: every 100 ms, POINTS points stamped now; per window end, what was acknowledged.
    let acknowledged: Arc<Mutex<BTreeMap<i64, f64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let acknowledged = Arc::clone(&acknowledged);
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let now = now_ms();
                let stamps: Vec<i64> = (0..POINTS as i64).map(|i| now - i * 10).collect();
                let points = stamps.iter().map(|t| point(1.0, *t)).collect();
                let request = tailfold::api::v1::WriteRequest {
                    series: vec![series(&[("__name__", "outage_points")], Kind::Counter, points)],
                };
                let response = client.write(request).await.expect("tailfold stays up").into_inner();
                assert_eq!(response.accepted, POINTS as u64, "{response:?}");
                {
                    let mut acknowledged = acknowledged.lock();
                    for stamp in stamps {
                        *acknowledged.entry(stamp.div_euclid(1000) * 1000 + 1000).or_default() += 1.0;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    tokio::time::sleep(Duration::from_secs(4)).await;
    let before = service.handle().telemetry().snapshot().sinks;
    assert!(before.sent.get("prom").copied().unwrap_or(0) > 0, "{before:?}");
    let outage_start = now_ms();
    {
        let prometheus = Arc::clone(&prometheus);
        tokio::task::spawn_blocking(move || prometheus.lock().stop())
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    let during = service.handle().telemetry().snapshot().sinks;
    assert!(during.retries.get("prom").copied().unwrap_or(0) > 0, "{during:?}");
    let spilled = backlog(&service);
    assert!(spilled > 4, "the backlog outgrew memory and spilled: {during:?}");
    let spill_file = spill_dir.path().join("prom-0.spill");
    assert!(
        std::fs::metadata(&spill_file).unwrap().len() > 0,
        "the spill file holds the backlog"
    );
    let outage_end = now_ms();
    {
        let prometheus = Arc::clone(&prometheus);
        tokio::task::spawn_blocking(move || prometheus.lock().restart())
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();

    // Every acknowledged window is flushed (1 s + 0.5 s lateness) and the backlog delivered.
    let deadline = Instant::now() + Duration::from_secs(30);
    let last_end = *acknowledged.lock().keys().last().unwrap();
    while now_ms() < last_end + 1_500 || backlog(&service) > 0 {
        assert!(
            Instant::now() < deadline,
            "backlog not delivered: {:?}",
            service.handle().telemetry().snapshot().sinks
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    service.handle().flush_now().await;
    let after = service.handle().telemetry().snapshot().sinks;
    assert!(after.dropped.is_empty(), "nothing dropped: {after:?}");
    assert_eq!(std::fs::metadata(&spill_file).unwrap().len(), 0, "the spill emptied");

    let expected = acknowledged.lock().clone();
    let outage_windows = expected
        .keys()
        .filter(|end| **end > outage_start && **end <= outage_end)
        .count();
    assert!(outage_windows >= 25, "{outage_windows} windows fell in the outage");
    let found = tokio::task::spawn_blocking(move || {
        let prometheus = prometheus.lock();
        let expected_len = expected.len();
        prometheus.wait_for(Duration::from_secs(20), |p| {
            let result = p.query("outage_points:sum[10m]", last_end + 1);
            let values = result.first()?["values"].as_array()?.clone();
            let found: BTreeMap<i64, f64> = values
                .iter()
                .map(|pair| {
                    let at = (pair[0].as_f64().unwrap() * 1000.0).round() as i64;
                    (at, pair[1].as_str().unwrap().parse::<f64>().unwrap())
                })
                .collect();
            (found.len() >= expected_len).then_some(found)
        })
    })
    .await
    .unwrap();
    assert_eq!(
        found,
        acknowledged.lock().clone(),
        "every acknowledged window, with its count"
    );
}
