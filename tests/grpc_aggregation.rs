//! Known inputs through a real gRPC socket, outputs read back from the
//! embedded store: exact counts and sums, quantiles within the stated error,
//! inverse quantiles, exemplars that belong to their window and bucket,
//! rollups equal to the merge of their inputs, drop rules, late and future samples.

mod common;

use std::collections::{BTreeMap, HashMap};

use common::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Normal};
use tailfold::aggregate::histogram::{bucket_index, relative_error};
use tailfold::api::v1::Kind;

const T0: i64 = 1_800_000_000_000; // a window boundary for 10s and 1m
const RULES: &str = r#"
defaults:
  storage_policies: ["10s:2d"]
mapping_rules:
  - name: latency
    filter: '__name__:latency_seconds'
    aggregations: [count, sum, min, max, mean, p50, p90, p99, p999, above(1.0), above(0.3), below(0.05), histogram]
    storage_policies: ["10s:2d", "1m:40d"]
  - name: drop-debug
    filter: '__name__:debug_*'
    drop: true
rollup_rules:
  - name: latency-by-service
    filter: '__name__:latency_seconds'
    rollup:
      name: latency_seconds:by_service
      group_by: [service]
      aggregations: [count, sum, p99, histogram]
  - name: latency-without-pod
    filter: '__name__:latency_seconds'
    rollup:
      name: latency_seconds:without_pod
      without: [pod]
      aggregations: [count, sum, histogram]
  - name: requests-by-service
    filter: '__name__:requests'
    rollup:
      name: requests:by_service
      group_by: [service]
      aggregations: [sum, count]
"#;

#[tokio::test]
async fn counters_and_gauges_are_exact_per_window() {
    let mut service = start_service(RULES, T0).await;
    let response = service
        .write(vec![
            series(
                &[("__name__", "requests"), ("service", "a"), ("pod", "1")],
                Kind::Counter,
                vec![point(1.0, T0 + 1_000), point(2.5, T0 + 9_999), point(4.0, T0 + 10_000)],
            ),
            series(
                &[("__name__", "requests"), ("service", "a"), ("pod", "2")],
                Kind::Counter,
                vec![point(10.0, T0 + 5_000)],
            ),
            series(
                &[("__name__", "memory"), ("pod", "1")],
                Kind::Gauge,
                vec![point(7.0, T0 + 3_000), point(3.0, T0 + 1_000), point(9.0, T0 + 2_000)],
            ),
        ])
        .await
        .unwrap();
    assert_eq!((response.accepted, response.rejected), (7, 0), "{response:?}");
    service.flush_at(T0 + 30_000).await;
    let records = service.records();

    let sum = one(&records, &[("__name__", "requests:sum"), ("pod", "1")], T0);
    assert_eq!(value(sum), 3.5);
    assert_eq!(sum.window_end_ms, T0 + 10_000);
    assert_eq!(
        value(one(
            &records,
            &[("__name__", "requests:sum"), ("pod", "1")],
            T0 + 10_000
        )),
        4.0
    );
    assert_eq!(
        value(one(&records, &[("__name__", "requests:rate"), ("pod", "2")], T0)),
        1.0
    );
    // The rollup sums both pods of service a: 1 + 2.5 + 10.
    let rolled = one(
        &records,
        &[("__name__", "requests:by_service:sum"), ("service", "a")],
        T0,
    );
    assert_eq!(value(rolled), 13.5);
    assert!(!rolled.labels.contains_key("pod"));
    assert_eq!(
        value(one(
            &records,
            &[("__name__", "requests:by_service:count"), ("service", "a")],
            T0
        )),
        3.0
    );
    // Gauge last follows event time, not arrival order.
    assert_eq!(value(one(&records, &[("__name__", "memory"), ("pod", "1")], T0)), 7.0);
    assert_eq!(value(one(&records, &[("__name__", "memory:min")], T0)), 3.0);
    assert_eq!(value(one(&records, &[("__name__", "memory:max")], T0)), 9.0);
    service.shutdown().await;
}

fn with_name<'a>(name: &'a str, base: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut pairs = vec![("__name__", name)];
    pairs.extend_from_slice(base);
    pairs
}

struct Sent {
    values: Vec<f64>,
    /// trace id hex -> (value, timestamp)
    traces: HashMap<String, (f64, i64)>,
}

fn trace_of(rng: &mut SmallRng) -> ([u8; 16], [u8; 8]) {
    let mut trace = [0u8; 16];
    let mut span = [0u8; 8];
    rng.fill(&mut trace);
    rng.fill(&mut span);
    trace[0] |= 1;
    span[0] |= 1;
    (trace, span)
}

/// Sends `values` for one series in window [T0, T0+10s), every point traced, in batches.
async fn send_traced(service: &mut TestService, pairs: &[(&str, &str)], values: &[f64], rng: &mut SmallRng) -> Sent {
    let mut traces = HashMap::new();
    for chunk in values.chunks(2_000) {
        let points = chunk
            .iter()
            .map(|value| {
                let (trace, span) = trace_of(rng);
                let timestamp = T0 + rng.random_range(0..10_000);
                traces.insert(hex::encode(trace), (*value, timestamp));
                traced_point(*value, timestamp, trace, span)
            })
            .collect();
        let response = service
            .write(vec![series(pairs, Kind::Distribution, points)])
            .await
            .unwrap();
        assert_eq!(response.accepted, chunk.len() as u64, "{response:?}");
    }
    Sent {
        values: values.to_vec(),
        traces,
    }
}

#[tokio::test]
async fn quantiles_exemplars_and_inverse_quantiles_hold_on_lognormal_and_bimodal_data() {
    let mut service = start_service(RULES, T0).await;
    let mut rng = SmallRng::seed_from_u64(42);
    let lognormal = LogNormal::new((0.08f64).ln(), 0.7).unwrap();
    let lognormal_values: Vec<f64> = (0..20_000).map(|_| lognormal.sample(&mut rng)).collect();
    let fast = Normal::<f64>::new(0.020, 0.004).unwrap();
    let slow = Normal::<f64>::new(1.5, 0.2).unwrap();
    let bimodal_values: Vec<f64> = (0..20_000)
        .map(|i| {
            if i % 10 == 0 {
                slow.sample(&mut rng)
            } else {
                fast.sample(&mut rng)
            }
            .abs()
            .max(1e-4)
        })
        .collect();

    let cases = [
        (
            "lognormal",
            send_traced(
                &mut service,
                &[("__name__", "latency_seconds"), ("service", "s1"), ("pod", "p1")],
                &lognormal_values,
                &mut rng,
            )
            .await,
        ),
        (
            "bimodal",
            send_traced(
                &mut service,
                &[("__name__", "latency_seconds"), ("service", "s2"), ("pod", "p1")],
                &bimodal_values,
                &mut rng,
            )
            .await,
        ),
    ];
    service.flush_at(T0 + 120_000).await;
    let all_records = service.records();
    let records: Vec<_> = all_records.iter().filter(|r| r.policy == "10s:2d").cloned().collect();

    for ((shape, sent), service_name) in cases.iter().zip(["s1", "s2"]) {
        let base = [("service", service_name), ("pod", "p1")];
        let mut sorted = sent.values.clone();
        sorted.sort_by(f64::total_cmp);
        let histogram = one(&records, &with_name("latency_seconds", &base), T0);
        assert_eq!(histogram.aggregation, "histogram");
        let scale = histogram.value["scale"].as_i64().unwrap() as i8;
        let bound = relative_error(scale);
        assert!(
            bound <= 0.01,
            "default relative error {bound} should be about 1% or better"
        );

        assert_eq!(
            value(one(&records, &with_name("latency_seconds:count", &base), T0)),
            sent.values.len() as f64
        );
        let exact_sum: f64 = sent.values.iter().sum();
        let sum = value(one(&records, &with_name("latency_seconds:sum", &base), T0));
        assert!(
            (sum - exact_sum).abs() <= exact_sum * 1e-12,
            "{shape}: sum {sum} vs {exact_sum}"
        );
        assert_eq!(
            value(one(&records, &with_name("latency_seconds:min", &base), T0)),
            sorted[0]
        );
        assert_eq!(
            value(one(&records, &with_name("latency_seconds:max", &base), T0)),
            *sorted.last().unwrap()
        );

        for (aggregation, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
            let mut pairs = with_name("latency_seconds:quantile", &base);
            let quantile_label = q.to_string();
            pairs.push(("quantile", &quantile_label));
            let record = one(&records, &pairs, T0);
            assert_eq!(record.aggregation, aggregation);
            let reported = value(record);
            let exact = exact_quantile(&sorted, q);
            let error = (reported - exact).abs() / exact;
            assert!(
                error <= bound + 1e-12,
                "{shape} {aggregation}: {reported} vs exact {exact}: error {error} > {bound}"
            );

            // The exemplar is a real sample of this window and series, in the
            // bucket that holds the quantile, and the record says so.
            let exemplar = record
                .exemplar
                .as_ref()
                .unwrap_or_else(|| panic!("{shape} {aggregation} has no exemplar"));
            let (sent_value, sent_timestamp) = sent.traces.get(&exemplar.trace_id).unwrap_or_else(|| {
                panic!(
                    "{shape} {aggregation}: exemplar trace {} was never sent for this series",
                    exemplar.trace_id
                )
            });
            assert_eq!((exemplar.value, exemplar.timestamp_ms), (*sent_value, *sent_timestamp));
            assert!((T0..T0 + 10_000).contains(&exemplar.timestamp_ms));
            assert_eq!(
                bucket_index(scale, exemplar.value),
                bucket_index(scale, reported),
                "{shape} {aggregation}: exemplar {} not in the bucket of {reported}",
                exemplar.value
            );
            let link = record.link.as_ref().expect("a linked record states its tightness");
            assert_eq!((link.tightness.as_str(), link.scale), ("own_bucket", Some(scale)));
            assert!(exemplar.span_id.as_ref().is_some_and(|s| s.len() == 16));
        }

        // Inverse quantiles: exact, at a bucket boundary (1.0) or not (0.3).
        for threshold in [1.0, 0.3] {
            let exact = sorted.iter().filter(|v| **v > threshold).count() as f64;
            let label_value = threshold.to_string();
            let mut pairs = with_name("latency_seconds:above", &base);
            pairs.push(("threshold", &label_value));
            let count = value(one(&records, &pairs, T0));
            assert_eq!(count, exact, "{shape} above({threshold})");
            let mut ratio_pairs = with_name("latency_seconds:above_ratio", &base);
            ratio_pairs.push(("threshold", &label_value));
            let ratio = value(one(&records, &ratio_pairs, T0));
            assert!((ratio - count / sorted.len() as f64).abs() < 1e-12);
        }

        // The 1m policy saw the same samples.
        let minute: Vec<_> = find(&all_records, &with_name("latency_seconds:count", &base))
            .into_iter()
            .filter(|r| r.policy == "1m:40d")
            .collect();
        assert_eq!(minute.len(), 1);
        assert_eq!(value(minute[0]), sent.values.len() as f64);
    }

    // Every quantile exemplar also went out as a trace selection.
    let selections = service.selections();
    let quantile_records: Vec<_> = records
        .iter()
        .filter(|r| r.labels.contains_key("quantile") && r.exemplar.is_some())
        .collect();
    for record in &quantile_records {
        assert!(
            selections
                .iter()
                .any(|s| s.exemplar.trace_id == record.exemplar.as_ref().unwrap().trace_id
                    && s.aggregation == record.aggregation
                    && s.window_start_ms == record.window_start_ms
                    && s.policy == record.policy),
            "no selection for {record:?}"
        );
    }
    assert!(selections.len() >= quantile_records.len());
    service.shutdown().await;
}

#[tokio::test]
async fn rollups_equal_the_merge_of_their_inputs() {
    let mut service = start_service(RULES, T0).await;
    let mut rng = SmallRng::seed_from_u64(7);
    let lognormal = LogNormal::new((0.05f64).ln(), 0.5).unwrap();
    let mut all_by_service: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for service_name in ["a", "b"] {
        for pod in ["1", "2", "3"] {
            for endpoint in ["/x", "/y"] {
                let values: Vec<f64> = (0..500).map(|_| lognormal.sample(&mut rng)).collect();
                send_traced(
                    &mut service,
                    &[
                        ("__name__", "latency_seconds"),
                        ("service", service_name),
                        ("pod", pod),
                        ("endpoint", endpoint),
                    ],
                    &values,
                    &mut rng,
                )
                .await;
                all_by_service.entry(service_name).or_default().extend(values);
            }
        }
    }
    service.flush_at(T0 + 60_000).await;
    let records = service.records();
    let ten_second = |r: &&tailfold::sink::JsonRecord| r.policy == "10s:2d";

    for (service_name, values) in &all_by_service {
        // group_by [service]: one output per service.
        let inputs: Vec<_> = find(&records, &[("__name__", "latency_seconds"), ("service", service_name)])
            .into_iter()
            .filter(ten_second)
            .filter(|r| r.aggregation == "histogram" && r.labels.contains_key("pod"))
            .collect();
        assert_eq!(inputs.len(), 6);
        let rollup = one(
            &records,
            &[("__name__", "latency_seconds:by_service"), ("service", service_name)],
            T0,
        );
        assert_eq!(
            rollup.labels.len(),
            2,
            "only __name__ and service survive group_by: {:?}",
            rollup.labels
        );
        let merged = merged_buckets(&inputs.iter().map(|r| &r.value).collect::<Vec<_>>());
        assert_eq!(
            merged,
            merged_buckets(&[&rollup.value]),
            "rollup histogram differs from the merge of its inputs"
        );
        assert_eq!(
            value(one(
                &records,
                &[
                    ("__name__", "latency_seconds:by_service:count"),
                    ("service", service_name)
                ],
                T0
            )),
            values.len() as f64
        );
        let exact_sum: f64 = values.iter().sum();
        let sum = value(one(
            &records,
            &[
                ("__name__", "latency_seconds:by_service:sum"),
                ("service", service_name),
            ],
            T0,
        ));
        assert!((sum - exact_sum).abs() < 1e-9 * exact_sum);
        // The rollup's p99 is the p99 of all raw samples, not an average of p99s.
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        let p99 = value(one(
            &records,
            &[
                ("__name__", "latency_seconds:by_service:quantile"),
                ("service", service_name),
                ("quantile", "0.99"),
            ],
            T0,
        ));
        let exact = exact_quantile(&sorted, 0.99);
        assert!(
            (p99 - exact).abs() / exact <= relative_error(6) + 1e-12,
            "rollup p99 {p99} vs {exact}"
        );

        // without [pod]: one output per (service, endpoint).
        for endpoint in ["/x", "/y"] {
            let inputs: Vec<_> = find(
                &records,
                &[
                    ("__name__", "latency_seconds"),
                    ("service", service_name),
                    ("endpoint", endpoint),
                ],
            )
            .into_iter()
            .filter(ten_second)
            .filter(|r| r.aggregation == "histogram")
            .collect();
            assert_eq!(inputs.len(), 3);
            let rollup = one(
                &records,
                &[
                    ("__name__", "latency_seconds:without_pod"),
                    ("service", service_name),
                    ("endpoint", endpoint),
                ],
                T0,
            );
            assert!(!rollup.labels.contains_key("pod"));
            assert_eq!(
                merged_buckets(&inputs.iter().map(|r| &r.value).collect::<Vec<_>>()),
                merged_buckets(&[&rollup.value])
            );
            assert_eq!(
                value(one(
                    &records,
                    &[
                        ("__name__", "latency_seconds:without_pod:count"),
                        ("service", service_name),
                        ("endpoint", endpoint)
                    ],
                    T0
                )),
                1500.0
            );
        }
    }
    service.shutdown().await;
}

#[tokio::test]
async fn drop_rules_drop_and_are_counted_by_rule() {
    let mut service = start_service(RULES, T0).await;
    let response = service
        .write(vec![
            series(
                &[("__name__", "debug_cache_probe")],
                Kind::Counter,
                vec![point(1.0, T0), point(1.0, T0 + 1)],
            ),
            series(&[("__name__", "kept")], Kind::Counter, vec![point(1.0, T0)]),
        ])
        .await
        .unwrap();
    assert_eq!(response.accepted, 1);
    assert_eq!(response.rejected, 2);
    let by_rule: Vec<_> = response
        .rejections
        .iter()
        .filter(|r| r.reason == "dropped_by_rule")
        .collect();
    assert_eq!(by_rule.len(), 1);
    assert_eq!((by_rule[0].rule.as_str(), by_rule[0].count), ("drop-debug", 2));
    service.flush_at(T0 + 60_000).await;
    let records = service.records();
    assert!(
        records.iter().all(|r| !r.name.starts_with("debug_")),
        "dropped series reached the store"
    );
    assert_eq!(value(one(&records, &[("__name__", "kept:sum")], T0)), 1.0);
    let counted = service.handle().telemetry().snapshot();
    assert_eq!(
        counted
            .ingest
            .by_rule
            .iter()
            .map(|(r, n)| (r.to_string(), *n))
            .collect::<Vec<_>>(),
        vec![("drop-debug".to_string(), 2)]
    );
    service.shutdown().await;
}

#[tokio::test]
async fn late_and_future_samples_are_counted_and_never_land_in_another_window() {
    let rules = "defaults: {storage_policies: [\"10s:1h\"]}\n";
    let mut service = start_service(rules, T0 + 1_000).await;
    let counter = |timestamp| {
        series(
            &[("__name__", "queue_depth")],
            Kind::Counter,
            vec![point(1.0, timestamp)],
        )
    };
    assert_eq!(service.write(vec![counter(T0 + 500)]).await.unwrap().accepted, 1);
    // Window [T0, T0+10s) is due at T0+15s (lateness: half a window, at least 1s).
    service.flush_at(T0 + 15_000).await;
    let response = service.write(vec![counter(T0 + 9_000)]).await.unwrap();
    assert_eq!((response.accepted, response.rejected), (0, 1));
    assert_eq!(response.rejections[0].reason, "too_late");
    // A sample for the open window [T0+10s, T0+20s) still counts there, alone.
    assert_eq!(service.write(vec![counter(T0 + 12_000)]).await.unwrap().accepted, 1);
    // Too far in the future (default tolerance 60 s).
    let response = service.write(vec![counter(T0 + 15_000 + 61_000)]).await.unwrap();
    assert_eq!(response.rejections[0].reason, "too_far_in_future");
    assert_eq!(response.rejected, 1);
    service.flush_at(T0 + 40_000).await;
    let records = service.records();
    assert_eq!(value(one(&records, &[("__name__", "queue_depth:sum")], T0)), 1.0);
    assert_eq!(
        value(one(&records, &[("__name__", "queue_depth:sum")], T0 + 10_000)),
        1.0
    );
    assert_eq!(
        find(&records, &[("__name__", "queue_depth:sum")]).len(),
        2,
        "the window was emitted twice or the late sample made a new one"
    );
    let snapshot = service.handle().telemetry().snapshot();
    assert_eq!(snapshot.ingest.rejected_for(tailfold::model::DropReason::TooLate), 1);
    assert_eq!(
        snapshot
            .ingest
            .rejected_for(tailfold::model::DropReason::TooFarInFuture),
        1
    );
    service.shutdown().await;
}

#[tokio::test]
async fn shutdown_flushes_open_windows_as_partial() {
    let mut service = start_service("", T0 + 2_000).await;
    service
        .write(vec![series(
            &[("__name__", "jobs")],
            Kind::Counter,
            vec![point(5.0, T0 + 1_000)],
        )])
        .await
        .unwrap();
    service.shutdown().await;
    let records = service.records();
    let sum = one(&records, &[("__name__", "jobs:sum")], T0);
    assert_eq!(value(sum), 5.0);
    assert!(sum.partial, "a window flushed before its end must say so");
}
