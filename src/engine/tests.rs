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

fn engine(rules: &str) -> Engine {
    let settings = EngineSettings {
        shards: 4,
        ..EngineSettings::default()
    };
    Engine::new(settings, RuleSet::parse(rules, "test.yaml").unwrap())
}

fn flush(engine: &Engine, now_ms: i64) -> Vec<AggregateRecord> {
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
    let rollup: Vec<_> = records.iter().filter(|r| r.output_name() == "x_all_count").collect();
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
