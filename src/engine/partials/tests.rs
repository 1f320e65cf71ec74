//! Rollups assembled from forwarded shares equal a single node's, bucket for
//! bucket; a re-sent share replaces, never adds; a follower drops what its
//! leader flushed; hostile shares are refused.

use std::sync::Arc;

use super::*;
use crate::engine::{AggregateRecord, Engine, EngineSettings, FlushGate, RecordValue};
use crate::model::{IngestBatch, Point, SeriesBatch, TraceContext};
use crate::rules::RuleSet;

const T0: i64 = 1_800_000_000_000;
const RULES: &str = "defaults: {storage_policies: [\"10s:1h\"]}\nrollup_rules:\n  - name: by-service\n    filter: '__name__:lat'\n    rollup: {name: lat_by_service, group_by: [service], aggregations: [count, sum, min, max, p50, p99, histogram]}\n  - name: req\n    filter: '__name__:req'\n    rollup: {name: req_all, group_by: [], aggregations: [sum, total]}\n  - name: mem\n    filter: '__name__:mem'\n    rollup: {name: mem_all, group_by: [], aggregations: [last, max]}\n  - name: users\n    filter: '__name__:users'\n    rollup: {name: users_all, group_by: [], aggregations: [count]}\n  - name: visitors\n    filter: '__name__:visitors'\n    rollup: {name: visitors_all, group_by: [], aggregations: [count]}\n";

fn engine(forwarding: bool) -> Engine {
    let engine = Engine::new(EngineSettings::default(), RuleSet::parse(RULES, "test.yaml").unwrap());
    if forwarding {
        engine.with_rollup_forwarding(5_000)
    } else {
        engine
    }
}

/// Series `pod` of three kinds, with values that depend on the pod.
fn batch(pod: usize) -> IngestBatch {
    let pod_name = format!("pod-{pod}");
    let series = |name: &str, kind: Kind, points: Vec<Point>| SeriesBatch {
        labels: Labels::from_pairs([("__name__", name), ("service", "api"), ("pod", pod_name.as_str())]),
        kind,
        cumulative: false,
        histograms: Vec::new(),
        points,
    };
    let traced = |n: usize| {
        Some(TraceContext {
            trace_id: [n as u8 + 1; 16],
            span_id: [1; 8],
        })
    };
    let latencies = (0..50)
        .map(|n| Point::new(0.01 * (1 + n * (pod + 1)) as f64, Some(T0 + n as i64), traced(n)))
        .collect();
    IngestBatch {
        tenant: Arc::from("t"),
        series: vec![
            series("lat", Kind::Distribution, latencies),
            series(
                "req",
                Kind::Counter,
                vec![Point::new(pod as f64 + 1.0, Some(T0 + 5), None)],
            ),
            series(
                "mem",
                Kind::Gauge,
                vec![Point::new(100.0 * pod as f64, Some(T0 + 7), None)],
            ),
        ],
    }
}

fn rollup_records(records: &[AggregateRecord]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = records
        .iter()
        .filter(|record| record.series.get("pod").is_none())
        .map(|record| {
            let value = match &record.value {
                // Sums of floats differ in the last bit with the order of addition.
                RecordValue::Scalar(value) => format!("{value:.9}"),
                RecordValue::Histogram(histogram) => format!("{:?}", histogram.to_parts().positive),
            };
            (format!("{}{:?}", record.output_name(), record.aggregation), value)
        })
        .collect();
    out.sort();
    out
}

const LEAD: FlushGate<'static> = FlushGate {
    lead: true,
    flushed_until: &[],
    rollups_until: &[],
    leaving_from_ms: None,
};

#[test]
fn a_rollup_assembled_from_shares_equals_a_single_nodes() {
    let single = engine(false);
    for pod in 0..4 {
        single.ingest(&batch(pod), T0 + 100).unwrap();
    }
    let mut expected = Vec::new();
    single.flush_due(T0 + 60_000, |chunk| expected.extend(chunk));

    // Pods 0 and 1 on one shard set, 2 and 3 on another; a third owns the rollups.
    let owners = [engine(true), engine(true)];
    let rollup_owner = engine(true);
    let mut own_records = Vec::new();
    for (source, owner) in owners.iter().enumerate() {
        for pod in [source * 2, source * 2 + 1] {
            owner.ingest(&batch(pod), T0 + 100).unwrap();
        }
        let mut shares = Vec::new();
        let stats = owner.flush_gated(
            T0 + 15_000,
            false,
            LEAD,
            |chunk| own_records.extend(chunk),
            |chunk| shares.extend(chunk),
        );
        assert_eq!(stats.partials, 3, "one share per rollup output");
        for share in shares {
            // Encoded and decoded as the wire carries it.
            let bytes = postcard::to_allocvec(&share).unwrap();
            let share: PartialWindow = postcard::from_bytes(&bytes).unwrap();
            rollup_owner.fold_partial(source as u32, share.clone()).unwrap();
            // A new leader re-sending the same share replaces it.
            rollup_owner.fold_partial(source as u32, share).unwrap();
        }
    }
    let mut assembled = Vec::new();
    let early = rollup_owner.flush_gated(T0 + 15_000, false, LEAD, |chunk| assembled.extend(chunk), |_| {});
    assert_eq!(
        early.flushed.windows, 0,
        "assembled windows wait out the forwarding lateness"
    );
    rollup_owner.flush_gated(T0 + 20_000, false, LEAD, |chunk| assembled.extend(chunk), |_| {});
    assert_eq!(rollup_records(&assembled), rollup_records(&expected));
    assert!(!rollup_records(&expected).is_empty());
    assert!(
        rollup_records(&own_records).is_empty(),
        "input owners emit no rollup records"
    );
    let late = PartialWindow {
        start_ms: T0,
        ..share_fixture()
    };
    assert!(matches!(
        rollup_owner.fold_partial(0, late),
        Err(PartialError::TooLate { .. })
    ));
}

/// Set members of `pod`: `users` overlapping a little (exact union), `visitors`
/// past the exact bound of 1,000 once pods are merged (a sketch).
fn set_batch(pod: usize) -> IngestBatch {
    let pod_name = format!("pod-{pod}");
    let series = |name: &str, members: std::ops::Range<usize>| SeriesBatch {
        labels: Labels::from_pairs([("__name__", name), ("pod", pod_name.as_str())]),
        kind: Kind::Set,
        cumulative: false,
        histograms: Vec::new(),
        points: members
            .map(|member| {
                Point::new(
                    crate::ingest::statsd::set_member(&format!("u{member}")),
                    Some(T0 + 3),
                    None,
                )
            })
            .collect(),
    };
    IngestBatch {
        tenant: Arc::from("t"),
        series: vec![
            series("users", pod * 10..pod * 10 + 20),
            series("visitors", pod * 300..pod * 300 + 600),
        ],
    }
}

#[test]
fn set_rollups_are_unions_whether_assembled_from_shares_or_not() {
    let single = engine(false);
    for pod in 0..4 {
        single.ingest(&set_batch(pod), T0 + 100).unwrap();
    }
    let mut expected = Vec::new();
    single.flush_due(T0 + 60_000, |chunk| expected.extend(chunk));
    let value = |records: &[AggregateRecord], name: &str| {
        records
            .iter()
            .find(|record| record.output_name() == name)
            .map(|record| match record.value {
                RecordValue::Scalar(value) => value,
                RecordValue::Histogram(_) => f64::NAN,
            })
    };
    // 0..50 exactly; 0..1500 estimated (the sketch's standard error is 0.81 %).
    assert_eq!(value(&expected, "users_all:count"), Some(50.0));
    let visitors = value(&expected, "visitors_all:count").unwrap();
    assert!((visitors - 1_500.0).abs() < 1_500.0 * 4.0 * 0.0081, "{visitors}");

    let owners = [engine(true), engine(true)];
    let rollup_owner = engine(true);
    for (source, owner) in owners.iter().enumerate() {
        for pod in [source * 2, source * 2 + 1] {
            owner.ingest(&set_batch(pod), T0 + 100).unwrap();
        }
        let mut shares = Vec::new();
        owner.flush_gated(T0 + 15_000, false, LEAD, |_| {}, |chunk| shares.extend(chunk));
        assert_eq!(shares.len(), 2);
        for share in shares {
            let bytes = postcard::to_allocvec(&share).unwrap();
            rollup_owner
                .fold_partial(source as u32, postcard::from_bytes(&bytes).unwrap())
                .unwrap();
        }
    }
    let mut assembled = Vec::new();
    rollup_owner.flush_gated(T0 + 20_000, false, LEAD, |chunk| assembled.extend(chunk), |_| {});
    assert_eq!(rollup_records(&assembled), rollup_records(&expected));
    // Each pod's own set is exact.
    let own = expected
        .iter()
        .find(|record| record.output_name() == "visitors:count" && record.series.get("pod") == Some("pod-1"))
        .unwrap();
    assert!(matches!(own.value, RecordValue::Scalar(v) if v == 600.0));
}

fn share_fixture() -> PartialWindow {
    PartialWindow {
        tenant: "t".into(),
        labels: vec![("__name__".into(), "req_all".into())],
        kind: Kind::Counter,
        policy: "10s:1h".parse().unwrap(),
        lateness_ms: 5_000,
        aggregations: vec!["sum".into()],
        start_ms: T0 + 600_000,
        state: PartialState::Counter(CounterState { sum: 2.0, count: 1 }),
    }
}

/// `batch(0)` stamped one 10 s window later.
fn next_window_batch() -> IngestBatch {
    IngestBatch {
        series: batch(0)
            .series
            .into_iter()
            .map(|mut series| {
                for point in &mut series.points {
                    point.timestamp_ms = point.timestamp_ms.map(|t| t + 10_000);
                }
                series
            })
            .collect(),
        ..batch(0)
    }
}

#[test]
fn a_follower_drops_exactly_what_its_leader_recorded() {
    let follower = engine(true);
    follower.ingest(&batch(0), T0 + 100).unwrap();
    let later = next_window_batch();
    follower.ingest(&later, T0 + 10_100).unwrap();
    let policy: StoragePolicy = "10s:1h".parse().unwrap();
    let mut emitted = 0;
    let gate = FlushGate {
        lead: false,
        flushed_until: &[(policy, T0 + 10_000)],
        rollups_until: &[],
        leaving_from_ms: None,
    };
    let stats = follower.flush_gated(T0 + 30_000, false, gate, |chunk| emitted += chunk.len(), |_| {});
    assert_eq!((emitted, stats.partials), (0, 0), "a follower emits nothing");
    assert_eq!(stats.dropped, 6, "the first window of each of the six outputs");
    // Taking over, it emits the windows after the recorded flush and forwards their shares.
    let stats = follower.flush_gated(
        T0 + 30_000,
        false,
        FlushGate { lead: true, ..gate },
        |chunk| emitted += chunk.len(),
        |_| {},
    );
    assert_eq!((stats.flushed.windows, stats.partials, stats.dropped), (6, 3, 0));
    assert!(emitted > 0);
}

#[test]
fn a_leader_leaving_by_a_replace_flushes_only_the_windows_before_the_cutover() {
    let leaving = engine(true);
    leaving.ingest(&batch(0), T0 + 100).unwrap();
    let later = next_window_batch();
    leaving.ingest(&later, T0 + 10_100).unwrap();
    let gate = FlushGate {
        leaving_from_ms: Some(T0 + 10_000),
        ..LEAD
    };
    let mut starts = Vec::new();
    let mut shared = Vec::new();
    let stats = leaving.flush_gated(
        T0 + 30_000,
        false,
        gate,
        |chunk| starts.extend(chunk.iter().map(|record| record.window_start_ms)),
        |chunk| shared.extend(chunk.iter().map(|share| share.start_ms)),
    );
    assert!(
        !starts.is_empty() && starts.iter().all(|start| *start < T0 + 10_000),
        "{starts:?}"
    );
    assert!(
        !shared.is_empty() && shared.iter().all(|start| *start < T0 + 10_000),
        "{shared:?}"
    );
    assert_eq!(
        (stats.flushed.windows, stats.dropped),
        (6, 6),
        "the second window of each output is the joiner's"
    );
}

#[test]
fn hostile_shares_are_refused_with_the_reason() {
    let owner = engine(true);
    let refused = |edit: &dyn Fn(&mut PartialWindow)| {
        let mut share = share_fixture();
        edit(&mut share);
        owner.fold_partial(0, share).expect_err("refused").to_string()
    };
    assert!(refused(&|s| s.aggregations = vec!["p99".into()]).contains("does not apply"));
    assert!(refused(&|s| s.aggregations = vec!["p1000x".into()]).contains("aggregation"));
    assert!(refused(&|s| s.labels.clear()).contains("labels"));
    assert!(refused(&|s| s.start_ms += 1).contains("not aligned"));
    assert!(refused(&|s| s.state = PartialState::Gauge(GaugeState::new())).contains("not a counter"));
    assert!(refused(&|s| s.policy.resolution_ms = 0).contains("not aligned"));
    let set = |state: PartialState| PartialWindow {
        kind: Kind::Set,
        aggregations: vec!["count".into()],
        state,
        ..share_fixture()
    };
    let message = owner
        .fold_partial(0, set(PartialState::Set(SetParts::Sketch(vec![0; 10]))))
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("set sketch has 10 registers, expected 16384"),
        "{message}"
    );
    assert!(refused(&|s| *s = set(PartialState::Counter(CounterState::default()))).contains("not a set"));
    let mut histogram = ExpHistogram::default().to_parts();
    histogram.count = 5;
    let share = PartialWindow {
        kind: Kind::Distribution,
        aggregations: vec!["count".into()],
        state: PartialState::Distribution(histogram),
        ..share_fixture()
    };
    assert!(owner
        .fold_partial(0, share)
        .unwrap_err()
        .to_string()
        .contains("count says 5"));
    owner.fold_partial(0, share_fixture()).expect("a good share is kept");
}
