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
