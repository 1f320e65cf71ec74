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
    // A rollup alone removes nothing from storage: it adds its outputs.
    assert_eq!(
        rule_rows(&report),
        [
            ("drop-debug", "drop", 10, 10, 0, 10, 10, 10),
            ("by-service", "rollup", 20, 60, 2, 0, 0, 0)
        ]
    );
}

const DROP_AND_ROLLUP: &str = r#"
mapping_rules:
  - name: drop-per-user
    filter: '__name__:requests'
    drop: true
  - name: drop-debug
    filter: '__name__:debug_*'
    drop: true
rollup_rules:
  - name: by-route
    filter: '__name__:requests'
    rollup:
      name: requests:by_route
      without: [user]
      aggregations: [sum]
"#;

/// (rule, kind, input series, input samples, added, removed, samples removed, dropped)
type RuleRow<'a> = (&'a str, &'a str, u64, u64, u64, u64, u64, u64);

fn rule_rows(report: &ProfileReport) -> Vec<RuleRow<'_>> {
    report
        .rules
        .iter()
        .map(|r| {
            (
                r.rule.as_str(),
                r.kind.as_str(),
                r.input_series,
                r.input_samples,
                r.output_series,
                r.series_removed,
                r.samples_removed,
                r.samples_dropped,
            )
        })
        .collect()
}

#[test]
fn a_drop_on_what_a_rollup_folds_removes_the_inputs_once_and_drops_no_sample() {
    let rules = RuleSet::parse(DROP_AND_ROLLUP, "test.yaml").unwrap();
    let profiler = Profiler::new(settings(), 0);
    // 50 users on 2 routes, 4 samples each: 200 samples sent to the rollup's inputs.
    for user in 0..50 {
        let user = user.to_string();
        let route = if user.len() == 1 { "/a" } else { "/b" };
        send(
            &profiler,
            &rules,
            &[("__name__", "requests"), ("route", route), ("user", &user)],
            4,
        );
    }
    send(&profiler, &rules, &[("__name__", "debug_x")], 7);
    let report = profiler.report(30_000, &ProfileQuery::default());
    // The drop removes the 50 per-user series, and their 200 samples are
    // accepted (the rollup folds them), so none is `dropped_by_rule`; the
    // rollup adds 2 series and removes nothing. Removed samples never exceed
    // the 207 sent.
    assert_eq!(
        rule_rows(&report),
        [
            ("drop-per-user", "drop", 50, 200, 0, 50, 200, 0),
            ("drop-debug", "drop", 1, 7, 0, 1, 7, 7),
            ("by-route", "rollup", 50, 200, 2, 0, 0, 0),
        ]
    );
    let removed: u64 = report.rules.iter().map(|r| r.samples_removed).sum();
    assert!(removed <= 207);
    assert!(report.rules.iter().all(|r| r.exact));
}

#[test]
fn the_rule_table_answers_tenant_and_metric_filters_and_rates_cover_only_the_process_life() {
    let rules = RuleSet::parse(DROP_AND_ROLLUP, "test.yaml").unwrap();
    // Started 50 s into a 60 s period: rates are over 10 s, not 60.
    let profiler = Profiler::new(settings(), 50_000);
    send(&profiler, &rules, &[("__name__", "requests"), ("user", "1")], 20);
    send(&profiler, &rules, &[("__name__", "debug_x")], 5);
    let report = profiler.report(60_000, &ProfileQuery::default());
    assert_eq!(report.from_ms, 50_000);
    let requests = report.top_by_series.iter().find(|m| m.metric == "requests").unwrap();
    assert_eq!(requests.samples_per_second, 2.0);
    let only = |tenant: Option<&str>, metric: Option<&str>| {
        let query = ProfileQuery {
            tenant: tenant.map(str::to_string),
            metric: metric.map(str::to_string),
            limit: None,
        };
        profiler
            .report(60_000, &query)
            .rules
            .into_iter()
            .map(|r| r.rule)
            .collect::<Vec<_>>()
    };
    assert_eq!(only(None, Some("debug_x")), ["drop-debug"]);
    assert_eq!(only(None, Some("requests")), ["drop-per-user", "by-route"]);
    assert!(only(Some("another"), None).is_empty());
    assert_eq!(only(Some("t"), None).len(), 3);
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
