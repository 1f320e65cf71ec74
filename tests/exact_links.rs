//! Exact links through a real gRPC socket with the default exemplar settings:
//! log-normal latencies with a slow tail at 100, 2,000 and 50,000 traced
//! samples per window. Every emitted quantile's trace lies in the quantile's
//! own bucket and says so; `above(1.5)` selects exactly the slowest traced
//! samples and counts exactly (1.497 and 1.505 share a bucket); a rollup of
//! two inputs keeps all of it. The same checks hold for spans sent over OTLP
//! by the real OpenTelemetry Python SDK (tests/otlp/export.py).

mod common;

use std::collections::HashMap;

use common::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal};
use tailfold::aggregate::histogram::bucket_index;
use tailfold::api::v1::Kind;
use tailfold::model::DropReason;
use tailfold::sink::JsonRecord;

const T0: i64 = 1_800_000_000_000;
const SCALE: i8 = 6;
const RULES: &str = r#"
defaults:
  storage_policies: ["10s:2d"]
mapping_rules:
  - name: latency
    filter: '__name__:latency_seconds'
    aggregations: [count, sum, min, max, p50, p90, p99, p999, above(1.5)]
rollup_rules:
  - name: latency-by-service
    filter: '__name__:latency_seconds'
    rollup:
      name: latency_seconds:by_service
      group_by: [service]
      aggregations: [count, p50, p90, p99, p999, above(1.5)]
"#;

/// The same outputs for spans (OTLP ingest), rolled up across span names.
const SPAN_RULES: &str = r#"
defaults:
  storage_policies: ["10s:2d"]
mapping_rules:
  - name: spans
    filter: '__name__:span_duration_seconds'
    aggregations: [count, sum, min, max, p50, p90, p99, p999, above(1.5)]
rollup_rules:
  - name: spans-by-service
    filter: '__name__:span_duration_seconds'
    rollup:
      name: span_duration_seconds:by_service
      group_by: [service_name]
      aggregations: [count, p50, p90, p99, p999, above(1.5)]
"#;

/// Log-normal latencies around 250 ms, one in twenty in a slow tail around 1.2 s.
fn slow_tail(n: usize, rng: &mut SmallRng) -> Vec<f64> {
    let body = LogNormal::new(0.25f64.ln(), 0.6).unwrap();
    let tail = LogNormal::new(1.2f64.ln(), 0.4).unwrap();
    (0..n)
        .map(|_| {
            if rng.random_bool(0.05) {
                tail.sample(rng)
            } else {
                body.sample(rng)
            }
        })
        .collect()
}

/// Sends every value traced; returns trace id hex -> value.
async fn send(
    service: &mut TestService,
    pairs: &[(&str, &str)],
    values: &[f64],
    rng: &mut SmallRng,
) -> HashMap<String, f64> {
    let mut traces = HashMap::new();
    for chunk in values.chunks(5_000) {
        let points = chunk
            .iter()
            .map(|value| {
                let (mut trace, mut span) = ([0u8; 16], [0u8; 8]);
                rng.fill(&mut trace);
                rng.fill(&mut span);
                trace[0] |= 1;
                span[0] |= 1;
                traces.insert(hex::encode(trace), *value);
                traced_point(*value, T0 + rng.random_range(0..10_000), trace, span)
            })
            .collect();
        let response = service
            .write(vec![series(pairs, Kind::Distribution, points)])
            .await
            .unwrap();
        assert_eq!(response.accepted, chunk.len() as u64);
    }
    traces
}

/// Checks one output series' quantiles, above(1.5) count and selections against the values sent.
fn check(
    records: &[JsonRecord],
    service: &TestService,
    name: &str,
    labels: &[(&str, &str)],
    sent: &HashMap<String, f64>,
) {
    let mut sorted: Vec<f64> = sent.values().copied().collect();
    sorted.sort_by(f64::total_cmp);
    let what = format!("{name} {labels:?} ({} samples)", sorted.len());
    let with = |extra: &[(&'static str, &str)], metric: &str| -> Vec<(String, String)> {
        let mut pairs = vec![("__name__".to_string(), metric.to_string())];
        pairs.extend(labels.iter().chain(extra).map(|(k, v)| (k.to_string(), v.to_string())));
        pairs
    };
    let find_one = |pairs: Vec<(String, String)>| {
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        one(records, &pairs, T0).clone()
    };
    for q in [0.5, 0.9, 0.99, 0.999] {
        let quantile = q.to_string();
        let record = find_one(with(&[("quantile", &quantile)], &format!("{name}:quantile")));
        let reported = value(&record);
        let exemplar = record
            .exemplar
            .as_ref()
            .unwrap_or_else(|| panic!("{what} q{q}: no exemplar"));
        assert_eq!(
            sent.get(&exemplar.trace_id),
            Some(&exemplar.value),
            "{what} q{q}: a sent trace"
        );
        assert_eq!(
            bucket_index(SCALE, exemplar.value),
            bucket_index(SCALE, reported),
            "{what} q{q}: trace {} not in the bucket of {reported}",
            exemplar.value
        );
        let link = record.link.as_ref().unwrap();
        assert_eq!(
            (link.tightness.as_str(), link.scale),
            ("own_bucket", Some(SCALE)),
            "{what} q{q}"
        );
        assert!(link.bucket_lower.unwrap() < exemplar.value && exemplar.value <= link.bucket_upper.unwrap());
    }
    let above = sorted.iter().filter(|v| **v > 1.5).count() as f64;
    let count = value(&find_one(with(&[("threshold", "1.5")], &format!("{name}:above"))));
    assert_eq!(count, above, "{what}: above(1.5) counts exactly");
    let mut selected: Vec<_> = service
        .selections()
        .into_iter()
        .filter(|s| s.aggregation == "above(1.5)" && s.series.get("__name__").map(String::as_str) == Some(name))
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.series.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    selected.sort_by_key(|s| s.rank);
    let slowest: Vec<f64> = sorted.iter().rev().copied().filter(|v| *v > 1.5).take(10).collect();
    let picked: Vec<f64> = selected.iter().map(|s| sent[&s.exemplar.trace_id]).collect();
    assert_eq!(
        picked, slowest,
        "{what}: above(1.5) selects exactly the slowest, slowest first"
    );
    for (rank, selection) in selected.iter().enumerate() {
        assert_eq!(selection.rank, Some(rank as u32));
        assert_eq!(selection.link.as_ref().map(|l| l.tightness.as_str()), Some("ranked"));
    }
    // The quantile selections say the same as the records.
    for selection in service.selections().iter().filter(|s| s.quantile.is_some()) {
        assert_eq!(
            selection.link.as_ref().map(|l| l.tightness.as_str()),
            Some("own_bucket")
        );
    }
}

#[tokio::test]
async fn quantile_traces_sit_in_their_own_bucket_and_above_selects_the_slowest() {
    let mut service = start_service(RULES, T0).await;
    let mut rng = SmallRng::seed_from_u64(15);
    let mut sent = Vec::new();
    for (service_name, n) in [("s100", 100), ("s2000", 2_000), ("s50000", 50_000)] {
        // Two pods per service: the rollup merges them into one window.
        let mut both = HashMap::new();
        for pod in ["a", "b"] {
            let values = slow_tail(n, &mut rng);
            let pairs = [("__name__", "latency_seconds"), ("service", service_name), ("pod", pod)];
            let traces = send(&mut service, &pairs, &values, &mut rng).await;
            both.extend(traces.clone());
            sent.push((service_name, pod, traces));
        }
        sent.push((service_name, "rollup", both));
    }
    service.flush_at(T0 + 60_000).await;
    let records = service.records();
    for (service_name, pod, traces) in &sent {
        if *pod == "rollup" {
            let labels = [("service", *service_name)];
            check(&records, &service, "latency_seconds:by_service", &labels, traces);
        } else {
            let labels = [("pod", *pod), ("service", *service_name)];
            check(&records, &service, "latency_seconds", &labels, traces);
        }
    }
    service.shutdown().await;
}

#[tokio::test]
async fn above_counts_exactly_inside_a_bucket() {
    // 50 samples at 1.497 and one at 1.505: one bucket at scale 6, one sample above 1.5.
    assert_eq!(bucket_index(SCALE, 1.497), bucket_index(SCALE, 1.505));
    let mut service = start_service(RULES, T0).await;
    let mut rng = SmallRng::seed_from_u64(3);
    let mut values = vec![1.497; 50];
    values.push(1.505);
    let pairs = [("__name__", "latency_seconds"), ("service", "edge"), ("pod", "a")];
    let sent = send(&mut service, &pairs, &values, &mut rng).await;
    service.flush_at(T0 + 60_000).await;
    let records = service.records();
    let count = value(one(
        &records,
        &[
            ("__name__", "latency_seconds:above"),
            ("service", "edge"),
            ("pod", "a"),
            ("threshold", "1.5"),
        ],
        T0,
    ));
    assert_eq!(count, 1.0);
    let selected: Vec<_> = service
        .selections()
        .into_iter()
        .filter(|s| s.aggregation == "above(1.5)" && s.series.get("pod").map(String::as_str) == Some("a"))
        .collect();
    assert_eq!(selected.len(), 1);
    assert_eq!(sent[&selected[0].exemplar.trace_id], 1.505);
    service.shutdown().await;
}

/// One span the SDK sent, as tests/otlp/export.py reports it.
#[derive(serde::Deserialize)]
struct SentSpan {
    trace_id: String,
    duration_ns: u64,
    service: String,
    name: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_spans_over_otlp_link_exactly_at_every_size() {
    let mut service = start_service_with(SPAN_RULES, T0, "otlp: {grpc_listen: \"127.0.0.1:0\"}").await;
    let endpoint = format!("http://{}", service.handle().otlp_grpc_addr().unwrap());
    // 2 x (100 + 2,000 + 50,000) slow-tailed spans and the 1.497 / 1.505 edge, in one 10 s window.
    let t0 = T0.to_string();
    let args = [
        "tail",
        "--protocol",
        "grpc",
        "--endpoint",
        &endpoint,
        "--seed",
        "15",
        "--base-ms",
        &t0,
        "--window-ms",
        "10000",
    ];
    let sent = otlp_export(args.map(String::from).to_vec()).await;
    // Per (service, span name) and per service (the rollup): trace id -> seconds, as ingest computes them.
    let mut by_series: HashMap<(String, String), HashMap<String, f64>> = HashMap::new();
    let mut by_service: HashMap<String, HashMap<String, f64>> = HashMap::new();
    for line in sent {
        let span: SentSpan = serde_json::from_value(line).unwrap();
        let seconds = span.duration_ns as f64 / 1e9;
        by_service
            .entry(span.service.clone())
            .or_default()
            .insert(span.trace_id.clone(), seconds);
        by_series
            .entry((span.service, span.name))
            .or_default()
            .insert(span.trace_id, seconds);
    }
    assert_eq!(by_series.len(), 7, "3 sizes x 2 span names and the edge");
    assert_eq!(by_service["s50000"].len(), 100_000);
    assert_eq!(by_service["edge"].len(), 51);
    service.flush_at(T0 + 60_000).await;
    let records = service.records();
    for ((name, span_name), sent) in &by_series {
        let labels = [("service_name", name.as_str()), ("span_name", span_name.as_str())];
        check(&records, &service, "span_duration_seconds", &labels, sent);
    }
    for (name, sent) in &by_service {
        let labels = [("service_name", name.as_str())];
        check(&records, &service, "span_duration_seconds:by_service", &labels, sent);
    }
    let snapshot = service.handle().telemetry().snapshot();
    assert_eq!(snapshot.ingest.rejected, [0; DropReason::ALL.len()], "{snapshot:?}");
    service.shutdown().await;
}
