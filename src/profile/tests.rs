//! The profiler over a real rule set: metric, label, owner and rule accounting.

use std::sync::Arc;

use super::*;
use crate::model::{series_key, Kind};
use crate::rules::RuleSet;

const RULES: &str = r#"
mapping_rules:
  - name: drop-debug
    filter: '__name__:debug_*'
    drop: true
rollup_rules:
  - name: by-service
    filter: '__name__:requests'
    rollup:
      name: requests:by_service
      group_by: [service]
      aggregations: [sum]
    storage_policies: ["1m:1d"]
"#;

fn settings() -> ProfileSettings {
    ProfileSettings {
        period_ms: 60_000,
        owner_label: Some("team".to_string()),
        max_metrics: 3,
    }
}

/// Observes one series with `samples` samples, as the engine does.
fn send(profiler: &Profiler, rules: &RuleSet, pairs: &[(&str, &str)], samples: u64) {
    let tenant: Arc<str> = Arc::from("t");
    let labels = Labels::from_pairs(pairs.iter().copied());
    let key = series_key(&tenant, &labels);
    let plan = rules.resolve(&labels, Kind::Counter);
    profiler
        .series(&tenant, &labels, key.hash, &plan)
        .observe(profiler, samples);
}

#[test]
fn metrics_labels_owners_and_rules_are_accounted() {
    let rules = RuleSet::parse(RULES, "test.yaml").unwrap();
    let profiler = Profiler::new(settings(), 0);
    for pod in 0..10 {
        let pod = pod.to_string();
        for service in ["a", "b"] {
            send(
                &profiler,
                &rules,
                &[
                    ("__name__", "requests"),
                    ("pod", &pod),
                    ("service", service),
                    ("team", "web"),
                ],
                3,
            );
        }
        send(&profiler, &rules, &[("__name__", "debug_x"), ("pod", &pod)], 1);
    }
    let report = profiler.report(30_000, &ProfileQuery::default());
    let top = &report.top_by_series[0];
    assert_eq!(
        (top.metric.as_str(), top.active_series, top.samples),
        ("requests", 20, 60)
    );
    assert_eq!(top.labels[0].label, "pod");
    assert_eq!(top.labels[0].distinct_values, 10);
    assert_eq!(top.samples_per_second, 2.0);
    let owners: Vec<_> = report
        .owners
        .iter()
        .map(|o| (o.owner.as_str(), o.active_series))
        .collect();
    assert_eq!(owners, [("web", 20), (NO_OWNER, 10)]);
    let rules: Vec<_> = report
        .rules
        .iter()
        .map(|r| {
            (
                r.rule.as_str(),
                r.kind.as_str(),
                r.input_series,
                r.output_series,
                r.series_removed,
                r.samples_removed,
            )
        })
        .collect();
    assert_eq!(
        rules,
        [
            ("by-service", "rollup", 20, 2, 18, 60),
            ("drop-debug", "drop", 10, 0, 10, 10)
        ]
    );
}

#[test]
fn periods_roll_and_metric_names_are_bounded() {
    let rules = RuleSet::default_rules();
    let profiler = Profiler::new(settings(), 0);
    for name in ["a", "b", "c", "d", "e"] {
        send(&profiler, &rules, &[("__name__", name)], 1);
    }
    let names: Vec<_> = profiler
        .report(1_000, &ProfileQuery::default())
        .top_by_samples
        .into_iter()
        .map(|usage| (usage.metric, usage.samples))
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names.contains(&(OTHER_METRICS.to_string(), 2)), "{names:?}");
    // One period later the counts are still reported; two periods later they are gone.
    profiler.roll(60_000);
    assert_eq!(
        profiler.report(61_000, &ProfileQuery::default()).top_by_samples.len(),
        4
    );
    profiler.roll(120_000);
    assert!(profiler
        .report(121_000, &ProfileQuery::default())
        .top_by_samples
        .is_empty());
}
