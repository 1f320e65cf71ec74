//! Rule sets staged at a window boundary: one batch straddling the boundary is
//! split between the two sets, a window shared by a 10 s and a 1 m policy is
//! never folded under both, and once the old set's windows are all due it is
//! retired and samples older than the boundary are refused as too late.

use std::sync::Arc;

use super::tests::{engine, flush};
use super::*;
use crate::model::{Kind, Labels, Point, SeriesBatch};

const T0: i64 = 1_800_000_000_000;

fn batch(points: &[(f64, i64)]) -> IngestBatch {
    IngestBatch {
        tenant: Arc::from("t"),
        series: vec![SeriesBatch {
            labels: Labels::from_pairs([("__name__", "jobs")]),
            kind: Kind::Counter,
            cumulative: false,
            histograms: Vec::new(),
            points: points.iter().map(|(v, t)| Point::new(*v, Some(*t), None)).collect(),
        }],
    }
}

fn rules(aggregations: &str, policies: &str) -> RuleSet {
    let yaml = format!(
        "mapping_rules:\n  - {{name: r, filter: '__name__:jobs', aggregations: [{aggregations}], storage_policies: [{policies}]}}"
    );
    RuleSet::parse(&yaml, "test.yaml").unwrap()
}

#[test]
fn a_staged_rule_set_takes_over_at_the_common_boundary_only() {
    let engine = engine(
        "mapping_rules:\n  - {name: r, filter: '__name__:jobs', aggregations: [sum], storage_policies: [\"10s:1h\"]}",
    );
    // Old rules use 10 s windows, new ones add 1 m: the boundary is the next full minute.
    let from = engine.stage_rules(rules("count", "\"10s:1h\", \"1m:1d\""), T0 + 5_000);
    assert_eq!(from, T0 + 60_000);
    assert_eq!(engine.rule_sets().len(), 2);
    // One batch straddling the boundary, sent just after it.
    let outcome = engine
        .ingest(
            &batch(&[(1.0, T0 + 55_000), (2.0, T0 + 58_000), (4.0, T0 + 61_000)]),
            T0 + 61_500,
        )
        .unwrap();
    assert_eq!((outcome.accepted, outcome.rejected_total()), (3, 0));
    let mut records: Vec<_> = flush(&engine, T0 + 200_000)
        .iter()
        .map(|r| {
            (
                r.window_start_ms - T0,
                r.policy.to_string(),
                r.output_name(),
                match r.value {
                    RecordValue::Scalar(value) => value,
                    RecordValue::Histogram(_) => f64::NAN,
                },
            )
        })
        .collect();
    records.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    assert_eq!(
        records,
        [
            (50_000, "10s:1h".to_string(), "jobs:sum".to_string(), 3.0),
            (60_000, "10s:1h".to_string(), "jobs:count".to_string(), 1.0),
            (60_000, "1m:1d".to_string(), "jobs:count".to_string(), 1.0),
        ]
    );
    // The old set is retired once its windows are all due (boundary + 5 s lateness) ...
    engine.ingest(&batch(&[(1.0, T0 + 130_000)]), T0 + 130_000).unwrap();
    assert_eq!(engine.rule_sets().len(), 1);
    // ... after which an event from before the boundary cannot reach any window.
    let outcome = engine.ingest(&batch(&[(1.0, T0 + 59_000)]), T0 + 131_000).unwrap();
    assert_eq!(outcome.rejected_for(DropReason::TooLate), 1);
}

#[test]
fn a_drop_rule_staged_applies_per_point() {
    let engine = engine("defaults: {storage_policies: [\"10s:1h\"]}");
    let dropping = RuleSet::parse(
        "defaults: {storage_policies: [\"10s:1h\"]}\nmapping_rules:\n  - {name: d, filter: '__name__:jobs', drop: true}",
        "test.yaml",
    )
    .unwrap();
    assert_eq!(engine.stage_rules(dropping, T0 + 1_000), T0 + 10_000);
    let outcome = engine
        .ingest(&batch(&[(1.0, T0 + 9_000), (1.0, T0 + 11_000)]), T0 + 11_000)
        .unwrap();
    assert_eq!(outcome.accepted, 1);
    assert_eq!(outcome.by_rule, [(Arc::from("d"), 1)]);
    // Before the boundary nothing changes, even for events sent afterwards.
    assert!(engine.rules_at(T0 + 9_999).rule_count() == 0 && engine.rules_at(T0 + 10_000).rule_count() == 1);
}

#[test]
fn a_rule_set_staged_at_a_given_boundary_takes_over_there_and_not_before_the_newest() {
    let engine = engine(
        "mapping_rules:\n  - {name: r, filter: '__name__:jobs', aggregations: [sum], storage_policies: [\"10s:1h\"]}",
    );
    // A cluster's publisher chose T0 + 20 s: later than this engine's own next boundary.
    assert_eq!(
        engine.stage_rules_at(rules("count", "\"10s:1h\""), T0 + 20_000),
        Ok(T0 + 20_000)
    );
    // Not at or before the newest set's start: that would fold some windows twice.
    assert_eq!(
        engine.stage_rules_at(rules("sum", "\"10s:1h\""), T0 + 20_000),
        Err(StageRulesError {
            from_ms: T0 + 20_000,
            newest_from_ms: T0 + 20_000
        })
    );
    engine
        .ingest(&batch(&[(1.0, T0 + 15_000), (2.0, T0 + 21_000)]), T0 + 22_000)
        .unwrap();
    let mut records: Vec<_> = flush(&engine, T0 + 200_000)
        .iter()
        .map(|r| (r.window_start_ms - T0, r.output_name()))
        .collect();
    records.sort();
    assert_eq!(
        records,
        [(10_000, "jobs:sum".to_string()), (20_000, "jobs:count".to_string())]
    );
}
