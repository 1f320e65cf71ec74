//! The profiler adds no allocation to engine ingest once a series is known:
//! warm batches through an engine with the profiler on allocate exactly as
//! much as through one with it off (nothing). Counted with a counting global
//! allocator, which is why this is its own test binary.

#[path = "alloc/counting.rs"]
mod counting;

use counting::allocations;

use std::sync::Arc;

use tailfold::engine::{Engine, EngineSettings};
use tailfold::model::{IngestBatch, Kind, Labels, Point, SeriesBatch};
use tailfold::profile::{ProfileSettings, Profiler};
use tailfold::rules::RuleSet;

const NOW_MS: i64 = 1_800_000_001_000;

/// Allocations of 20 warm ingests of a 500-series batch (after one cold one).
fn warm_allocations(engine: &Engine) -> usize {
    let batch = IngestBatch {
        tenant: Arc::from("t"),
        series: (0..500)
            .map(|i| SeriesBatch {
                labels: Labels::from_pairs([
                    ("__name__", "requests".to_string()),
                    ("user_id", format!("u{i}")),
                    ("team", format!("team{}", i % 7)),
                ]),
                kind: Kind::Counter,
                cumulative: false,
                histograms: Vec::new(),
                points: vec![Point::new(1.0, Some(NOW_MS - 10), None); 2],
            })
            .collect(),
    };
    assert_eq!(engine.ingest(&batch, NOW_MS).unwrap().accepted, 1_000);
    let before = allocations();
    for _ in 0..20 {
        assert_eq!(engine.ingest(&batch, NOW_MS).unwrap().accepted, 1_000);
    }
    allocations() - before
}

#[test]
fn warm_ingest_with_the_profiler_allocates_nothing_more() {
    let rules = "mapping_rules:\n  - {name: d, filter: '__name__:debug_*', drop: true}\n";
    let settings = EngineSettings {
        shards: 4,
        ..EngineSettings::default()
    };
    let plain = Engine::new(settings.clone(), RuleSet::parse(rules, "rules.yaml").unwrap());
    let profiler = Arc::new(Profiler::new(
        ProfileSettings {
            period_ms: 60_000,
            owner_label: Some("team".to_string()),
            max_metrics: 100,
        },
        NOW_MS,
    ));
    let profiled =
        Engine::new(settings, RuleSet::parse(rules, "rules.yaml").unwrap()).with_profiler(Arc::clone(&profiler));
    let without = warm_allocations(&plain);
    let with = warm_allocations(&profiled);
    assert_eq!(with, without, "the profiler allocated on warm ingest");
    assert_eq!(without, 0, "warm engine ingest allocated");
    // The profiler did count: 500 series, 21 x 1000 samples.
    let report = profiler.report(NOW_MS, &Default::default());
    assert_eq!(report.top_by_series[0].active_series, 500);
    assert_eq!(report.top_by_series[0].samples, 21_000);
}
