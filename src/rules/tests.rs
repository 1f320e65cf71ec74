//! Tests of `RuleSet::resolve`: which outputs a series feeds, with which
//! labels, aggregations and policies.

use std::sync::Arc;

use super::*;
use crate::aggregate::Aggregation;
use crate::model::{Kind, Labels, StoragePolicy};

fn rules(yaml: &str) -> RuleSet {
    RuleSet::parse(yaml, "rules.yaml").unwrap_or_else(|error| panic!("{error}"))
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    Labels::from_pairs(pairs.iter().copied())
}

fn policy(text: &str) -> StoragePolicy {
    text.parse().unwrap()
}

fn aggregations(names: &[&str]) -> Vec<Aggregation> {
    names.iter().map(|name| name.parse().unwrap()).collect()
}

/// (policy, aggregations) pairs of an output, for compact assertions.
/// Compared as values, not as their display names.
fn summary(output: &PlannedOutput) -> Vec<(String, Vec<Aggregation>)> {
    output
        .policies
        .iter()
        .map(|entry| (entry.policy.to_string(), entry.aggregations.to_vec()))
        .collect()
}

fn expected(pairs: &[(&str, &[&str])]) -> Vec<(String, Vec<Aggregation>)> {
    pairs
        .iter()
        .map(|(policy, names)| (policy.to_string(), aggregations(names)))
        .collect()
}

const LATENCY: &[(&str, &str)] = &[
    ("__name__", "http_request_duration_seconds"),
    ("service", "api-eu"),
    ("endpoint", "/users"),
    ("pod", "api-eu-7f9c"),
];

#[test]
fn matching_mapping_rules_are_unioned_per_policy() {
    let rules = rules(
        "
mapping_rules:
  - name: latency
    filter: '__name__:http_request_duration_seconds'
    aggregations: [count, p99, sum]
    storage_policies: ['1m:40d', '10s:2d']
  - name: api
    filter: 'service:api-*'
    aggregations: [p99, p999, count, above(1.5)]
    storage_policies: ['10s:2d', '1h:1y']
  - name: web-only
    filter: 'service:web-*'
    aggregations: [max]
",
    );
    let plan = rules.resolve(&labels(LATENCY), Kind::Distribution);
    assert_eq!(plan.dropped_by, None);
    assert_eq!(plan.outputs.len(), 1);
    let own = &plan.outputs[0];
    assert_eq!(own.labels, labels(LATENCY));
    assert_eq!(
        own.origin,
        OutputOrigin::Mapping {
            rules: vec![Arc::from("latency"), Arc::from("api")]
        }
    );
    assert_eq!(
        summary(own),
        expected(&[
            ("10s:2d", &["count", "p99", "sum", "p999", "above(1.5)"]),
            ("1m:40d", &["count", "p99", "sum"]),
            ("1h:1y", &["p99", "p999", "count", "above(1.5)"]),
        ])
    );
}

#[test]
fn defaults_apply_when_no_mapping_rule_matches() {
    let rules = rules(
        "
defaults:
  storage_policies: ['1m:40d', '10s:2d']
  gauge: { aggregations: [last, mean] }
mapping_rules:
  - { name: other, filter: '__name__:other', aggregations: [sum] }
",
    );
    let series = labels(&[("__name__", "temperature")]);
    let gauge = rules.resolve(&series, Kind::Gauge);
    assert_eq!(gauge.outputs.len(), 1);
    assert_eq!(gauge.outputs[0].origin, OutputOrigin::Defaults);
    assert_eq!(
        summary(&gauge.outputs[0]),
        expected(&[("10s:2d", &["last", "mean"]), ("1m:40d", &["last", "mean"])])
    );
    let counter = rules.resolve(&series, Kind::Counter);
    assert_eq!(
        summary(&counter.outputs[0]),
        expected(&[("10s:2d", &["sum", "rate"]), ("1m:40d", &["sum", "rate"])])
    );
}

#[test]
fn default_rules_are_the_builtin_defaults() {
    let rules = RuleSet::default_rules();
    assert_eq!(rules.rule_count(), 0);
    assert_eq!(rules.storage_policies(), vec![policy("10s:2d")]);
    let plan = rules.resolve(&labels(LATENCY), Kind::Distribution);
    assert_eq!(
        summary(&plan.outputs[0]),
        expected(&[("10s:2d", &["count", "sum", "min", "max", "p50", "p90", "p99", "p999"])])
    );
    let empty = RuleSet::parse("# nothing yet\n", "rules.yaml").unwrap();
    assert_eq!(
        empty.resolve(&labels(LATENCY), Kind::Gauge),
        rules.resolve(&labels(LATENCY), Kind::Gauge)
    );
    assert!(RuleSet::parse("", "rules.yaml").is_ok());
}

#[test]
fn kind_restriction_and_kind_filtering_decide_matches() {
    let rules = rules(
        "
mapping_rules:
  - { name: dist-only, filter: '__name__:*', kind: distribution, aggregations: [p99] }
  - { name: mixed, filter: '__name__:*', aggregations: [rate, p50, count] }
  - { name: gauge-agg, filter: '__name__:*', aggregations: [last] }
",
    );
    let series = labels(&[("__name__", "x")]);
    let counter = rules.resolve(&series, Kind::Counter);
    assert_eq!(
        counter.outputs[0].origin,
        OutputOrigin::Mapping {
            rules: vec![Arc::from("mixed")]
        }
    );
    assert_eq!(
        summary(&counter.outputs[0]),
        expected(&[("10s:2d", &["rate", "count"])])
    );
    let gauge = rules.resolve(&series, Kind::Gauge);
    assert_eq!(
        gauge.outputs[0].origin,
        OutputOrigin::Mapping {
            rules: vec![Arc::from("mixed"), Arc::from("gauge-agg")]
        }
    );
    assert_eq!(summary(&gauge.outputs[0]), expected(&[("10s:2d", &["count", "last"])]));
    let distribution = rules.resolve(&series, Kind::Distribution);
    assert_eq!(
        summary(&distribution.outputs[0]),
        expected(&[("10s:2d", &["p99", "p50", "count"])])
    );

    // A rule with nothing for this kind does not count, so the defaults apply.
    let only_rate = self::rules("mapping_rules:\n  - { name: r, filter: '__name__:*', aggregations: [rate] }\n");
    let plan = only_rate.resolve(&series, Kind::Gauge);
    assert_eq!(plan.outputs[0].origin, OutputOrigin::Defaults);
    assert_eq!(
        summary(&plan.outputs[0]),
        expected(&[("10s:2d", &["last", "min", "max"])])
    );
}

const DROP_AND_ROLLUP: &str = "
mapping_rules:
  - { name: per-pod, filter: 'pod:*', drop: true }
  - { name: also-pod, filter: 'pod:api-*', drop: true }
  - { name: latency, filter: '__name__:http_request_duration_seconds', aggregations: [p99] }
rollup_rules:
  - name: by-service
    filter: '__name__:http_request_duration_seconds'
    rollup:
      name: http_request_duration_seconds:by_service
      group_by: [service, endpoint, zone]
      aggregations: [p50, p99, count, rate]
    storage_policies: ['1m:40d']
  - name: without-pod
    filter: '__name__:http_*'
    kind: distribution
    rollup: { name: http:without_pod, without: [pod, instance], aggregations: [max] }
  - name: counters-only
    filter: '__name__:http_*'
    rollup: { name: http:rate, group_by: [service], aggregations: [rate] }
";

#[test]
fn drop_suppresses_own_output_but_rollups_still_consume() {
    let rules = rules(DROP_AND_ROLLUP);
    let plan = rules.resolve(&labels(LATENCY), Kind::Distribution);
    assert_eq!(plan.dropped_by.as_deref(), Some("per-pod"));
    assert_eq!(plan.outputs.len(), 2, "{plan:#?}");

    let by_service = &plan.outputs[0];
    assert_eq!(
        by_service.origin,
        OutputOrigin::Rollup {
            rule: Arc::from("by-service")
        }
    );
    assert_eq!(
        by_service.labels,
        labels(&[
            ("__name__", "http_request_duration_seconds:by_service"),
            ("endpoint", "/users"),
            ("service", "api-eu"),
        ])
    );
    assert_eq!(summary(by_service), expected(&[("1m:40d", &["p50", "p99", "count"])]));

    let without_pod = &plan.outputs[1];
    assert_eq!(
        without_pod.labels,
        labels(&[
            ("__name__", "http:without_pod"),
            ("endpoint", "/users"),
            ("service", "api-eu")
        ])
    );
    assert_eq!(summary(without_pod), expected(&[("10s:2d", &["max"])]));
}

#[test]
fn undropped_series_keep_their_own_output_first() {
    let rules = rules(DROP_AND_ROLLUP);
    let series = labels(&[("__name__", "http_request_duration_seconds"), ("service", "web")]);
    let plan = rules.resolve(&series, Kind::Distribution);
    assert_eq!(plan.dropped_by, None);
    let origins: Vec<_> = plan.outputs.iter().map(|output| output.origin.clone()).collect();
    assert_eq!(
        origins,
        vec![
            OutputOrigin::Mapping {
                rules: vec![Arc::from("latency")]
            },
            OutputOrigin::Rollup {
                rule: Arc::from("by-service")
            },
            OutputOrigin::Rollup {
                rule: Arc::from("without-pod")
            },
        ]
    );
    assert_eq!(plan.outputs[0].labels, series);

    // A counter: by-service filters another name, without-pod is distribution-only.
    let counter = labels(&[("__name__", "http_requests"), ("service", "web"), ("pod", "w-1")]);
    let plan = rules.resolve(&counter, Kind::Counter);
    assert_eq!(plan.dropped_by.as_deref(), Some("per-pod"));
    assert_eq!(plan.outputs.len(), 1);
    assert_eq!(
        plan.outputs[0].labels,
        labels(&[("__name__", "http:rate"), ("service", "web")])
    );
}

#[test]
fn rollup_policies_default_and_rule_inventory() {
    let rules = rules(DROP_AND_ROLLUP);
    assert_eq!(rules.rule_count(), 6);
    assert_eq!(rules.storage_policies(), vec![policy("10s:2d"), policy("1m:40d")]);
    let plan = rules.resolve(&labels(&[("__name__", "http_x")]), Kind::Counter);
    assert_eq!(
        plan.outputs[1].origin,
        OutputOrigin::Rollup {
            rule: Arc::from("counters-only")
        }
    );
    assert_eq!(summary(&plan.outputs[1]), expected(&[("10s:2d", &["rate"])]));
}

#[test]
fn a_fully_dropped_series_feeds_nothing() {
    let rules = rules("mapping_rules:\n  - { name: debug, filter: '__name__:debug_*', drop: true }\n");
    let plan = rules.resolve(&labels(&[("__name__", "debug_x")]), Kind::Gauge);
    assert!(plan.is_empty());
    assert_eq!(plan.dropped_by.as_deref(), Some("debug"));
    let kept = rules.resolve(&labels(&[("__name__", "x_debug")]), Kind::Gauge);
    assert_eq!(kept.outputs.len(), 1);
}

#[test]
fn plans_share_rule_aggregation_lists() {
    let rules = rules("mapping_rules:\n  - { name: a, filter: '__name__:*', aggregations: [sum] }\n");
    let first = rules.resolve(&labels(&[("__name__", "x")]), Kind::Counter);
    let second = rules.resolve(&labels(&[("__name__", "y")]), Kind::Counter);
    assert!(Arc::ptr_eq(
        &first.outputs[0].policies[0].aggregations,
        &second.outputs[0].policies[0].aggregations
    ));
    assert_eq!(&*first.outputs[0].policies[0].aggregations, &aggregations(&["sum"])[..]);
}

#[test]
fn rule_set_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RuleSet>();
    assert_send_sync::<MatchCache>();
    assert_send_sync::<RulesError>();
}
