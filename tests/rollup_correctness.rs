//! Rollups stay correct at their edges: an input series named like a rollup's
//! output is refused (answer and `/metrics`) instead of being mixed into it,
//! and a gauge rollup's `last` keeps each input's latest value across a
//! window that input missed.

mod common;

use common::*;
use tailfold::api::v1::Kind;

const COLLIDING_RULES: &str = r#"
defaults:
  storage_policies: ["10s:1h"]
  counter: { aggregations: [sum] }
rollup_rules:
  - name: by-service
    filter: '__name__:requests'
    rollup: {name: "requests:by_service", group_by: [service], aggregations: [sum]}
"#;

/// The value of the first exported sample whose series text starts with `name{` and holds every one of `labels`.
async fn scraped(service: &TestService, name: &str, labels: &[&str]) -> Option<f64> {
    let url = format!("http://{}/metrics", service.handle().http_addr());
    let text = tokio::task::spawn_blocking(move || reqwest::blocking::get(&url).unwrap().text().unwrap())
        .await
        .unwrap();
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .find(|line| labels.iter().all(|label| line.contains(label)))
        .map(|line| line.rsplit_once(' ').unwrap().1.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_named_like_a_rollup_output_is_refused_and_counted_not_mixed_in() {
    let mut service = start_service(COLLIDING_RULES, 5_000).await;
    let input = series(
        &[("__name__", "requests"), ("service", "api"), ("pod", "a")],
        Kind::Counter,
        vec![point(2.0, 1_000), point(3.0, 2_000)],
    );
    // Named, and labelled, exactly like the rollup's output series.
    let impostor = series(
        &[("__name__", "requests:by_service"), ("service", "api")],
        Kind::Counter,
        vec![point(100.0, 1_000), point(100.0, 2_000), point(100.0, 3_000)],
    );
    let answer = service.write(vec![input, impostor]).await.unwrap();
    assert_eq!((answer.accepted, answer.rejected), (2, 3), "{answer:?}");
    assert_eq!(answer.rejections.len(), 1, "{answer:?}");
    assert_eq!(
        (answer.rejections[0].reason.as_str(), answer.rejections[0].count),
        ("output_collision", 3)
    );
    assert_eq!(
        scraped(
            &service,
            "tailfold_samples_dropped_total",
            &["reason=\"output_collision\"", "protocol=\"grpc\""]
        )
        .await,
        Some(3.0)
    );

    service.flush_at(20_000).await;
    let records = service.records();
    let rollup = one(&records, &[("__name__", "requests:by_service:sum")], 0);
    assert_eq!(value(rollup), 5.0, "only the real input is in the rollup");
    assert!(
        find(&records, &[("__name__", "requests:by_service:sum:sum")]).is_empty(),
        "the impostor has no output of its own either"
    );
}

const GAUGE_RULES: &str = r#"
defaults:
  storage_policies: ["10s:1h"]
  gauge: { aggregations: [last] }
rollup_rules:
  - name: memory-by-service
    filter: '__name__:memory'
    rollup: {name: "memory:by_service", group_by: [service], aggregations: [last]}
"#;

fn memory(pod: &str, value: f64, timestamp_ms: i64) -> tailfold::api::v1::Series {
    series(
        &[("__name__", "memory"), ("service", "api"), ("pod", pod)],
        Kind::Gauge,
        vec![point(value, timestamp_ms)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gauge_rollups_last_holds_an_input_across_a_missed_window_until_it_is_idle() {
    let mut service = start_service_with(GAUGE_RULES, 5_000, "engine: {rollup_last_idle_ms: 15000}\n").await;
    let by_service = |records: &[tailfold::sink::JsonRecord], window: i64| {
        value(one(records, &[("__name__", "memory:by_service")], window))
    };
    // Window [0, 10 s): both pods.
    let answer = service
        .write(vec![memory("a", 100.0, 1_000), memory("b", 50.0, 2_000)])
        .await
        .unwrap();
    assert_eq!(answer.accepted, 2);
    service.flush_at(15_001).await;
    assert_eq!(by_service(&service.records(), 0), 150.0);

    // Window [10 s, 20 s): pod b sends nothing; its 50 still counts, no dip.
    service.write(vec![memory("a", 120.0, 11_000)]).await.unwrap();
    service.flush_at(25_001).await;
    assert_eq!(by_service(&service.records(), 10_000), 170.0);
    assert_eq!(
        value(one(&service.records(), &[("__name__", "memory"), ("pod", "a")], 10_000)),
        120.0,
        "the pod's own output is its own value"
    );

    // Window [20 s, 30 s): pod b silent for 20 s, past rollup_last_idle_ms: it no longer counts.
    service.write(vec![memory("a", 130.0, 21_000)]).await.unwrap();
    service.flush_at(35_001).await;
    assert_eq!(by_service(&service.records(), 20_000), 130.0);
}
