//! Engine behaviour with time passed in: watermarks, multi-policy lateness,
//! kind conflicts, accounting of every point, partial windows at shutdown.

use std::sync::Arc;

use super::*;
use crate::model::{Kind, Labels, Point, SeriesBatch};

const T0: i64 = 1_800_000_000_000;

fn batch(name: &str, kind: Kind, points: &[(f64, i64)]) -> IngestBatch {
    IngestBatch {
        tenant: Arc::from("t"),
        series: vec![SeriesBatch {
            labels: Labels::from_pairs([("__name__", name), ("pod", "a")]),
            kind,
            cumulative: false,
            histograms: Vec::new(),
            points: points
                .iter()
                .map(|(value, timestamp)| Point::new(*value, Some(*timestamp), None))
                .collect(),
        }],
    }
}

/// An engine with 4 shards and `rules` (YAML); shared with the histogram tests.
pub(super) fn engine(rules: &str) -> Engine {
    let settings = EngineSettings {
        shards: 4,
        ..EngineSettings::default()
    };
    Engine::new(settings, RuleSet::parse(rules, "test.yaml").unwrap())
}

/// Records of every window due at `now_ms`.
pub(super) fn flush(engine: &Engine, now_ms: i64) -> Vec<AggregateRecord> {
    let mut records = Vec::new();
    engine.flush_due(now_ms, |chunk| records.extend(chunk));
    records
}

#[test]
fn a_sample_for_a_flushed_window_is_refused_even_when_its_clock_lags() {
    let engine = engine("defaults: {storage_policies: [\"10s:1h\"]}");
    assert_eq!(
        engine
            .ingest(&batch("jobs", Kind::Counter, &[(1.0, T0 + 1)]), T0 + 2)
            .unwrap()
            .accepted,
        1
    );
    assert_eq!(flush(&engine, T0 + 15_000).len(), 2, "sum and rate of one window");
    // An ingest call whose clock was read before the flush still must not reopen the window.
    let outcome = engine
        .ingest(&batch("jobs", Kind::Counter, &[(5.0, T0 + 2)]), T0 + 14_000)
        .unwrap();
    assert_eq!((outcome.accepted, outcome.rejected_for(DropReason::TooLate)), (0, 1));
    assert!(flush(&engine, T0 + 100_000).is_empty(), "the window was emitted twice");
}

#[test]
fn a_point_late_for_one_policy_still_counts_for_another() {
    let engine = engine(
        "mapping_rules:\n  - {name: r, filter: '__name__:jobs', aggregations: [sum], storage_policies: [\"10s:1h\", \"1m:1d\"]}",
    );
    // At T0+16s the 10s window [T0, T0+10s) is closed (lateness 5s); the 1m window is open.
    let outcome = engine
        .ingest(&batch("jobs", Kind::Counter, &[(2.0, T0 + 1_000)]), T0 + 16_000)
        .unwrap();
    assert_eq!((outcome.accepted, outcome.rejected_total()), (1, 0));
    let records = flush(&engine, T0 + 120_000);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].policy.to_string(), "1m:1d");
}

#[test]
fn one_output_fed_by_two_kinds_refuses_the_second_kind() {
    let engine = engine(
        "rollup_rules:\n  - name: all\n    filter: '__name__:x_*'\n    rollup: {name: x_all, group_by: [], aggregations: [count]}\n",
    );
    assert_eq!(
        engine
            .ingest(&batch("x_a", Kind::Counter, &[(1.0, T0)]), T0)
            .unwrap()
            .accepted,
        1
    );
    // The gauge's own output is fine; only its rollup share collides.
    let outcome = engine.ingest(&batch("x_b", Kind::Gauge, &[(1.0, T0)]), T0).unwrap();
    assert_eq!(outcome.accepted, 1);
    let outcome = engine
        .ingest(
            &IngestBatch {
                tenant: Arc::from("t"),
                series: vec![SeriesBatch {
                    labels: Labels::from_pairs([("__name__", "x_c")]),
                    kind: Kind::Gauge,
                    cumulative: false,
                    histograms: Vec::new(),
                    points: vec![Point::new(1.0, Some(T0), None)],
                }],
            },
            T0,
        )
        .unwrap();
    assert_eq!(outcome.accepted, 1, "own output still lands");
    let records = flush(&engine, T0 + 60_000);
    let rollup: Vec<_> = records.iter().filter(|r| r.output_name() == "x_all:count").collect();
    assert_eq!(rollup.len(), 1);
    assert!(
        matches!(rollup[0].value, RecordValue::Scalar(v) if v == 1.0),
        "{rollup:?}"
    );
}

#[test]
fn every_point_is_accounted_for() {
    let engine = engine("mapping_rules:\n  - {name: d, filter: '__name__:debug_*', drop: true}");
    let mut batch = batch(
        "ok",
        Kind::Counter,
        &[(1.0, T0), (1.0, T0 - 3_600_000), (1.0, T0 + 3_600_000)],
    );
    batch
        .series
        .extend(self::batch("debug_x", Kind::Counter, &[(1.0, T0)]).series);
    let outcome = engine.ingest(&batch, T0).unwrap();
    assert_eq!(outcome.accepted, 1);
    assert_eq!(outcome.rejected_for(DropReason::TooLate), 1);
    assert_eq!(outcome.rejected_for(DropReason::TooFarInFuture), 1);
    assert_eq!(outcome.by_rule, vec![(Arc::from("d"), 1)]);
    assert_eq!(outcome.accepted + outcome.rejected_total(), 4);
}

#[test]
fn flush_all_closes_open_windows_as_partial_and_forgets_idle_outputs() {
    let engine = engine("");
    engine
        .ingest(&batch("jobs", Kind::Counter, &[(1.0, T0 + 1)]), T0 + 2)
        .unwrap();
    assert_eq!((engine.active_outputs(), engine.open_windows()), (1, 1));
    let mut records = Vec::new();
    let stats = engine.flush_all(T0 + 5, |chunk| records.extend(chunk));
    assert_eq!(stats.windows, 1);
    assert!(records.iter().all(|r| r.partial));
    assert_eq!((engine.active_outputs(), engine.open_windows()), (0, 0));
}

fn cumulative(pod: &str, points: &[(f64, i64)]) -> SeriesBatch {
    SeriesBatch {
        labels: Labels::from_pairs([("__name__", "http_requests_total"), ("pod", pod)]),
        kind: Kind::Counter,
        cumulative: true,
        points: points.iter().map(|(v, t)| Point::new(*v, Some(*t), None)).collect(),
        histograms: Vec::new(),
    }
}

#[test]
fn a_pod_restart_neither_dips_nor_spikes_a_rollup_and_total_stays_monotonic() {
    let engine = engine(
        "rollup_rules:\n  - name: no-pod\n    filter: '__name__:http_requests_total'\n    rollup: {name: http_requests_total:all, without: [pod], aggregations: [sum, rate, total]}\n",
    );
    // Two pods each serve 10 requests per 10 s window; pod b restarts in the third window.
    let pod_a = [
        (100.0, T0),
        (110.0, T0 + 10_000),
        (120.0, T0 + 20_000),
        (130.0, T0 + 30_000),
    ];
    let pod_b = [
        (500.0, T0),
        (510.0, T0 + 10_000),
        (4.0, T0 + 20_000),
        (14.0, T0 + 30_000),
    ];
    for index in 0..4 {
        let now = pod_a[index].1 + 1;
        let batch = IngestBatch {
            tenant: Arc::from("t"),
            series: vec![
                cumulative("a", &pod_a[index..=index]),
                cumulative("b", &pod_b[index..=index]),
            ],
        };
        assert_eq!(engine.ingest(&batch, now).unwrap().accepted, 2);
    }
    let records = flush(&engine, T0 + 100_000);
    let values = |name: &str| -> Vec<f64> {
        let mut found: Vec<_> = records
            .iter()
            .filter(|r| r.output_name() == name)
            .map(|r| {
                (
                    r.window_start_ms,
                    if let RecordValue::Scalar(v) = r.value {
                        v
                    } else {
                        f64::NAN
                    },
                )
            })
            .collect();
        found.sort_by_key(|(start, _)| *start);
        found.into_iter().map(|(_, v)| v).collect()
    };
    // First window is the baseline; then 10 + 10, then 10 + 4 (restart counts the new 4), then 10 + 10.
    assert_eq!(values("http_requests_total:all:sum"), [0.0, 20.0, 14.0, 20.0]);
    assert_eq!(values("http_requests_total:all:rate"), [0.0, 2.0, 1.4, 2.0]);
    assert_eq!(values("http_requests_total:all_total"), [0.0, 20.0, 34.0, 54.0]);
}

#[test]
fn weights_scale_counts_sums_and_histograms() {
    let engine =
        engine("defaults: {distribution: {aggregations: [count, p50]}, counter: {aggregations: [sum, count]}}");
    let mut counter = batch("hits", Kind::Counter, &[(2.0, T0)]);
    counter.series[0].points[0].weight = 10;
    let mut timer = batch("lat", Kind::Distribution, &[(0.5, T0)]);
    timer.series[0].points[0].weight = 4;
    engine.ingest(&counter, T0).unwrap();
    engine.ingest(&timer, T0).unwrap();
    let records = flush(&engine, T0 + 60_000);
    let get = |name: &str| {
        records.iter().find(|r| r.output_name() == name).map(|r| match r.value {
            RecordValue::Scalar(v) => v,
            _ => f64::NAN,
        })
    };
    assert_eq!(get("hits:sum"), Some(20.0));
    assert_eq!(get("hits:count"), Some(10.0));
    assert_eq!(get("lat:count"), Some(4.0));
}

#[test]
fn a_distribution_total_is_a_running_count_and_sum_that_starts_its_series() {
    let engine =
        engine("defaults: {storage_policies: [\"10s:1h\"], distribution: {aggregations: [count, sum, total]}}");
    let first = batch("lat", Kind::Distribution, &[(0.5, T0), (1.5, T0 + 1)]);
    let second = batch(
        "lat",
        Kind::Distribution,
        &[(1.0, T0 + 10_000), (2.0, T0 + 10_001), (4.0, T0 + 10_002)],
    );
    engine.ingest(&first, T0 + 2).unwrap();
    engine.ingest(&second, T0 + 10_003).unwrap();
    let records = flush(&engine, T0 + 100_000);
    let values = |name: &str| -> Vec<(i64, f64, bool)> {
        let mut found: Vec<_> = records
            .iter()
            .filter(|r| r.output_name() == name)
            .map(|r| match r.value {
                RecordValue::Scalar(v) => (r.window_start_ms, v, r.starts_series),
                RecordValue::Histogram(_) => (r.window_start_ms, f64::NAN, r.starts_series),
            })
            .collect();
        found.sort_by_key(|(start, _, _)| *start);
        found
    };
    // Per window under `:`, cumulative under Prometheus' counter suffixes; only
    // the first window of a cumulative series starts it.
    assert_eq!(values("lat:count"), [(T0, 2.0, false), (T0 + 10_000, 3.0, false)]);
    assert_eq!(values("lat:sum"), [(T0, 2.0, false), (T0 + 10_000, 7.0, false)]);
    assert_eq!(values("lat_count"), [(T0, 2.0, true), (T0 + 10_000, 5.0, false)]);
    assert_eq!(values("lat_sum"), [(T0, 2.0, true), (T0 + 10_000, 9.0, false)]);
}

#[test]
fn routes_of_series_that_stopped_sending_are_forgotten() {
    let settings = EngineSettings {
        shards: 4,
        idle_series_ms: 60_000,
        ..EngineSettings::default()
    };
    let engine = Engine::new(settings, RuleSet::default_rules());
    engine.ingest(&batch("gone", Kind::Counter, &[(1.0, T0)]), T0).unwrap();
    engine
        .ingest(&batch("kept", Kind::Counter, &[(1.0, T0 + 50_000)]), T0 + 50_000)
        .unwrap();
    assert_eq!(engine.cached_series(), 2);
    flush(&engine, T0 + 59_999);
    assert_eq!(engine.cached_series(), 2, "nothing is idle for a minute yet");
    // Eviction runs at most once a minute: the next scan is due at T0 + 119_999.
    flush(&engine, T0 + 119_998);
    assert_eq!(engine.cached_series(), 2, "no scan within a minute of the last one");
    flush(&engine, T0 + 119_999);
    assert_eq!(engine.cached_series(), 0, "both series were silent for a minute");
    // A returning series gets its route back.
    let outcome = engine
        .ingest(&batch("gone", Kind::Counter, &[(2.0, T0 + 120_000)]), T0 + 120_000)
        .unwrap();
    assert_eq!(outcome.accepted, 1);
    assert_eq!(engine.cached_series(), 1);
}

#[test]
fn each_window_flushes_under_its_own_slot_after_many_reloads_and_unused_slot_classes_are_dropped() {
    let rules = |hours: u64| format!("defaults: {{storage_policies: [\"10s:{hours}h\"]}}");
    let engine = engine(&rules(1));
    let shard_count =
        |engine: &Engine| -> Vec<usize> { engine.shards.iter().map(|shard| shard.lock().class_count()).collect() };
    // 100 reloads, each with its own retention: 100 windows of one output, each under its own policy.
    for hours in 1..=100u64 {
        engine.replace_rules(RuleSet::parse(&rules(hours), "test.yaml").unwrap());
        let outcome = engine
            .ingest(&batch("jobs", Kind::Counter, &[(hours as f64, T0 + 1)]), T0 + 2)
            .unwrap();
        assert_eq!(outcome.accepted, 1);
    }
    assert_eq!(shard_count(&engine).iter().sum::<usize>(), 100);
    let records = flush(&engine, T0 + 15_000);
    assert_eq!(records.len(), 200, "sum and rate of 100 windows");
    for record in &records {
        if record.statistic == Statistic::Sum {
            let RecordValue::Scalar(sum) = record.value else {
                panic!("scalar sum")
            };
            // The window folded `hours` under the policy kept for `hours` hours.
            assert_eq!(record.policy.retention_ms, sum as u64 * 3_600_000);
        }
    }
    // One more window under new rules: the next flush drops the 100 classes no window uses.
    engine.replace_rules(RuleSet::parse(&rules(500), "test.yaml").unwrap());
    engine
        .ingest(&batch("jobs", Kind::Counter, &[(7.0, T0 + 20_001)]), T0 + 20_002)
        .unwrap();
    let records = flush(&engine, T0 + 35_000);
    assert_eq!(records.len(), 2);
    assert!(records
        .iter()
        .all(|record| record.policy.retention_ms == 500 * 3_600_000 && record.window_start_ms == T0 + 20_000));
    assert_eq!(shard_count(&engine).iter().sum::<usize>(), 1, "unused classes dropped");
}

#[test]
fn with_limits_each_series_is_hashed_once_per_request() {
    use crate::model::SERIES_KEYS_COMPUTED;
    let config = "limits:\n  default: {samples_per_second: 1000000, max_active_series: 1000}\n";
    let settings = crate::config::ServiceSettings::parse(config, std::path::Path::new("t/tailfold.yaml")).unwrap();
    let telemetry = Arc::new(crate::telemetry::Telemetry::default());
    let limited = engine("").with_limits(Limits::new(settings.limits, telemetry));
    let request = |round: i64| IngestBatch {
        tenant: Arc::from("t"),
        series: (0..50)
            .map(|id| SeriesBatch {
                labels: Labels::from_pairs([("__name__", "requests".to_string()), ("id", id.to_string())]),
                kind: Kind::Counter,
                cumulative: false,
                histograms: Vec::new(),
                points: vec![Point::new(1.0, Some(T0 + round), None)],
            })
            .collect(),
    };
    let hashed = || SERIES_KEYS_COMPUTED.with(|count| count.get());
    // The first request also builds each series' route (its outputs are keyed then).
    assert_eq!(limited.ingest(&request(0), T0).unwrap().accepted, 50);
    let before = hashed();
    let outcome = limited.ingest(&request(1), T0).unwrap();
    assert_eq!(outcome.accepted, 50);
    assert_eq!(
        hashed() - before,
        50,
        "the limits' hash is the engine's: once per series"
    );
    assert!(
        outcome.series_keys.is_empty(),
        "the identities are consumed by the fold"
    );

    // Without limits the engine hashes once as well.
    let unlimited = engine("");
    unlimited.ingest(&request(0), T0).unwrap();
    let before = hashed();
    unlimited.ingest(&request(1), T0).unwrap();
    assert_eq!(hashed() - before, 50);
}

/// Many points per series (statsd's shape) route and fold in runs: points in
/// one window share a lookup, and every point is still folded or refused once.
#[test]
fn runs_of_points_per_series_fold_every_point_into_its_window_once() {
    let engine = engine(
        "rollup_rules:\n  - name: all\n    filter: '__name__:x_*'\n    rollup: {name: x_all, group_by: [], aggregations: [count]}\n",
    );
    // Window A is [T0, T0+10s), B the next; T0-20s is due at now (lateness 5 s).
    let (a, b, due, future) = (T0, T0 + 10_000, T0 - 20_000, T0 + 3_600_000);
    let now = T0 + 12_000;
    let mut times: Vec<i64> = (0..10).map(|i| a + i).collect();
    times.extend((0..5).map(|i| b + i));
    times.extend([a + 50, due, a + 51, due + 1, future, a + 52]);
    let points: Vec<(f64, i64)> = times.iter().enumerate().map(|(i, t)| (i as f64 + 1.0, *t)).collect();
    let mut input = batch("plain", Kind::Counter, &points);
    // A two-output series: its points take the general route, and the
    // rollup's runs refuse as a whole when the kind conflicts.
    input.series.extend(batch("x_a", Kind::Counter, &points[..4]).series);
    input.series.extend(batch("x_b", Kind::Gauge, &points[..6]).series);
    let outcome = engine.ingest(&input, now).unwrap();
    assert_eq!(outcome.rejected_for(DropReason::TooLate), 2);
    assert_eq!(outcome.rejected_for(DropReason::TooFarInFuture), 1);
    assert_eq!(outcome.accepted, 18 + 4 + 6);
    assert_eq!(
        outcome.partial, 6,
        "x_b's rollup share refused every point: {outcome:?}"
    );

    let records = flush(&engine, T0 + 100_000);
    let sum = |name: &str, start: i64| {
        let record = records
            .iter()
            .find(|r| r.output_name() == name && r.window_start_ms == start)
            .unwrap_or_else(|| panic!("no {name} at {start}: {records:?}"));
        match record.value {
            RecordValue::Scalar(v) => v,
            RecordValue::Histogram(_) => panic!("scalar expected"),
        }
    };
    let expected = |window: i64| -> f64 {
        points
            .iter()
            .filter(|(_, t)| (window..window + 10_000).contains(t))
            .map(|(v, _)| v)
            .sum()
    };
    assert_eq!(sum("plain:sum", a), expected(a));
    assert_eq!(sum("plain:sum", b), expected(b));
    assert_eq!(sum("x_all:count", a), 4.0, "only x_a's points count in the rollup");
}
