//! Tests of the limits stage with a fake clock: priority bands of the rate
//! limit, active-series caps with eviction of nice-to-have series, counters.

use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::config::ServiceSettings;
use crate::model::{Kind, Point};
use crate::telemetry::LimitDropKey;

fn limits(yaml: &str) -> (Limits, Arc<Telemetry>) {
    let settings = ServiceSettings::parse(yaml, Path::new("t/tailfold.yaml")).expect("config");
    let telemetry = Arc::new(Telemetry::default());
    (Limits::new(settings.limits, Arc::clone(&telemetry)), telemetry)
}

fn series(name: &str, id: usize, points: usize) -> SeriesBatch {
    SeriesBatch::new(
        Labels::from_pairs([("__name__", name.to_string()), ("id", id.to_string())]),
        Kind::Gauge,
        (0..points).map(|i| Point::new(i as f64, None, None)).collect(),
    )
}

fn batch(tenant: &str, series: Vec<SeriesBatch>) -> IngestBatch {
    IngestBatch {
        tenant: Arc::from(tenant),
        series,
    }
}

/// Admitted points per metric name.
fn admitted_by_name(batch: &IngestBatch) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for series in &batch.series {
        *out.entry(series.labels.metric_name().unwrap().to_string()).or_default() += series.points.len();
    }
    out
}

fn drops(telemetry: &Telemetry) -> BTreeMap<(String, &'static str, String), u64> {
    telemetry
        .snapshot()
        .limit_drops
        .into_iter()
        .map(|(LimitDropKey { tenant, reason, rule }, count)| ((tenant, reason.as_str(), rule), count))
        .collect()
}

const PRIORITY: &str = "  drop_priority:
    - {name: debug, filter: '__name__:debug_*'}
    - {name: experiments, filter: '__name__:exp_*'}
";

#[test]
fn without_limits_the_batch_passes_untouched() {
    let (limits, telemetry) = limits("");
    let input = batch("a", vec![series("m", 0, 1000)]);
    let mut outcome = Outcome::default();
    assert!(matches!(limits.admit(&input, 0, &mut outcome), Cow::Borrowed(_)));
    assert_eq!(outcome, Outcome::default());
    assert!(drops(&telemetry).is_empty());
}

#[test]
fn over_the_rate_nice_to_have_series_go_first() {
    let (limits, telemetry) = limits(&format!(
        "limits:\n  default: {{samples_per_second: 300, burst_samples: 300}}\n{PRIORITY}"
    ));
    // Three bands: debug may use tokens above 200, experiments above 100, the rest all.
    let input = batch(
        "a",
        vec![series("debug_x", 0, 30), series("exp_y", 0, 30), series("keep", 0, 30)],
    );
    let mut outcome = Outcome::default();
    let admitted = limits.admit(&input, 0, &mut outcome);
    assert!(
        matches!(admitted, Cow::Borrowed(_)),
        "under the limit nothing is dropped"
    );
    assert_eq!(outcome.series_keys.len(), 3, "the engine reuses the limits' hashes");
    outcome.series_keys.clear();
    assert_eq!(outcome, Outcome::default());

    // One second later 300 tokens again, but 500 points asked: debug gets nothing
    // above its band once keep and experiments took theirs.
    let input = batch(
        "a",
        vec![
            series("debug_x", 0, 200),
            series("exp_y", 0, 100),
            series("keep", 0, 200),
        ],
    );
    let mut outcome = Outcome::default();
    let admitted = limits.admit(&input, 1_000, &mut outcome);
    let by_name = admitted_by_name(&admitted);
    // keep took 200 (tokens 300 -> 100); experiments may only use tokens above 100, debug above 200.
    assert_eq!(by_name, BTreeMap::from([("keep".to_string(), 200)]));
    assert_eq!(outcome.rejected_for(DropReason::RateLimited), 300);
    assert_eq!(
        drops(&telemetry),
        BTreeMap::from([
            (("a".into(), "rate_limited", "debug".into()), 200),
            (("a".into(), "rate_limited", "experiments".into()), 100),
        ])
    );

    // Sustained: the bucket refills 300/s; the important series keeps flowing at
    // 200/s while nice-to-have traffic only gets what is left above its band.
    let mut keep = 0;
    for second in 2..12 {
        let input = batch(
            "a",
            vec![
                series("debug_x", 0, 1000),
                series("exp_y", 0, 1000),
                series("keep", 0, 200),
            ],
        );
        let mut outcome = Outcome::default();
        let admitted = limits.admit(&input, second * 1_000, &mut outcome);
        keep += admitted_by_name(&admitted).get("keep").copied().unwrap_or(0);
    }
    assert_eq!(
        keep, 2000,
        "every important point admitted under a flood of nice-to-have ones"
    );
    let counted = drops(&telemetry);
    assert_eq!(counted.get(&("a".into(), "rate_limited", String::new())), None);
    assert_eq!(counted[&("a".into(), "rate_limited", "debug".into())], 200 + 10 * 1000);
}

#[test]
fn only_when_nothing_droppable_is_left_are_other_samples_refused() {
    let (limits, telemetry) = limits(&format!("limits:\n  default: {{samples_per_second: 100}}\n{PRIORITY}"));
    let input = batch("a", vec![series("keep", 0, 150), series("debug_x", 0, 10)]);
    let mut outcome = Outcome::default();
    let admitted = limits.admit(&input, 0, &mut outcome);
    assert_eq!(admitted_by_name(&admitted), BTreeMap::from([("keep".to_string(), 100)]));
    assert_eq!(outcome.rejected_for(DropReason::RateLimited), 60);
    assert_eq!(
        outcome.by_limit,
        vec![
            (DropReason::RateLimited, Arc::from("debug"), 10),
            (DropReason::RateLimited, Arc::from(""), 50),
        ]
    );
    assert_eq!(
        drops(&telemetry),
        BTreeMap::from([
            (("a".into(), "rate_limited", "debug".into()), 10),
            (("a".into(), "rate_limited", String::new()), 50),
        ])
    );
    // Another tenant has its own bucket.
    let other = batch("b", vec![series("keep", 0, 100)]);
    assert!(matches!(
        limits.admit(&other, 0, &mut Outcome::default()),
        Cow::Borrowed(_)
    ));
}

#[test]
fn series_cap_refuses_new_series_and_evicts_nice_to_have_ones_first() {
    let (limits, telemetry) = limits(&format!(
        "limits:\n  default: {{max_active_series: 3}}\n  tenants: {{big: {{max_active_series: 100}}}}\n{PRIORITY}"
    ));
    let first = batch(
        "a",
        vec![series("keep", 0, 1), series("debug_x", 0, 1), series("exp_y", 0, 1)],
    );
    assert!(matches!(
        limits.admit(&first, 0, &mut Outcome::default()),
        Cow::Borrowed(_)
    ));
    assert_eq!(limits.active_series("a"), 3);

    // Two new important series: the debug one is evicted first, then the experiment.
    let mut outcome = Outcome::default();
    let second = batch(
        "a",
        vec![series("keep", 1, 1), series("keep", 2, 1), series("keep", 0, 5)],
    );
    let admitted = limits.admit(&second, 1, &mut outcome);
    assert_eq!(admitted.series.len(), 3);
    assert_eq!(outcome.rejected_total(), 0);
    assert_eq!(limits.active_series("a"), 3);

    // Now nothing droppable is left: a new series is refused, existing ones flow.
    let mut outcome = Outcome::default();
    let third = batch(
        "a",
        vec![series("keep", 3, 4), series("keep", 1, 2), series("debug_x", 0, 1)],
    );
    let admitted = limits.admit(&third, 2, &mut outcome);
    assert_eq!(admitted_by_name(&admitted), BTreeMap::from([("keep".to_string(), 2)]));
    assert_eq!(outcome.rejected_for(DropReason::SeriesLimited), 5);
    assert_eq!(
        drops(&telemetry),
        BTreeMap::from([
            (("a".into(), "series_limited", String::new()), 4),
            (("a".into(), "series_limited", "debug".into()), 1),
        ])
    );
    // A tenant with its own cap is not held by `a`'s.
    let other = batch("big", (0..50).map(|id| series("keep", id, 1)).collect());
    assert!(matches!(
        limits.admit(&other, 2, &mut Outcome::default()),
        Cow::Borrowed(_)
    ));

    // Series idle past engine.idle_series_ms stop counting.
    assert_eq!(limits.tracked_tenants(), 2);
    limits.evict_idle(2 + 3_600_000);
    assert_eq!(limits.active_series("a"), 1, "keep 1 was seen at 2, keep 0 and 2 at 1");
    limits.evict_idle(2 + 3_600_001);
    assert_eq!(limits.active_series("a"), 0);
    assert_eq!(limits.tracked_tenants(), 0, "idle tenants are forgotten too");
    let fourth = batch("a", vec![series("keep", 3, 1)]);
    assert!(matches!(
        limits.admit(&fourth, 3_600_010, &mut Outcome::default()),
        Cow::Borrowed(_)
    ));
}

#[test]
fn a_series_refused_by_the_cap_gives_its_tokens_back() {
    let (limits, _) = limits("limits:\n  default: {samples_per_second: 10, max_active_series: 1}\n");
    let input = batch("a", vec![series("m", 0, 5), series("m", 1, 5)]);
    let mut outcome = Outcome::default();
    let admitted = limits.admit(&input, 0, &mut outcome);
    assert_eq!(admitted.series.len(), 1);
    assert_eq!(outcome.rejected_for(DropReason::SeriesLimited), 5);
    // 5 of 10 tokens used; the refused series' 5 came back.
    let again = batch("a", vec![series("m", 0, 5)]);
    assert!(matches!(
        limits.admit(&again, 0, &mut Outcome::default()),
        Cow::Borrowed(_)
    ));
}

#[test]
fn broken_limit_configs_name_the_field() {
    for (text, needle) in [
        (
            "limits: {default: {samples_per_second: 0}}",
            "limits.default.samples_per_second",
        ),
        (
            "limits: {default: {burst_samples: 10}}",
            "limits.default.burst_samples: is set but",
        ),
        (
            "limits: {tenants: {a: {max_active_series: 0}}}",
            "limits.tenants.a.max_active_series",
        ),
        (
            "limits: {drop_priority: [{name: x, filter: 'nocolon'}]}",
            "limits.drop_priority[0].filter",
        ),
        (
            "limits: {drop_priority: [{name: x, filter: 'a:b'}, {name: x, filter: 'c:d'}]}",
            "limits.drop_priority[1].name: \"x\" is used",
        ),
        (
            "limits: {drop_priority: [{name: '', filter: 'a:b'}]}",
            "limits.drop_priority[0].name",
        ),
        ("limits: {drop_priority: [{filter: 'a:b'}]}", "missing field `name`"),
        ("limits: {max_inflight_requests: 0}", "limits.max_inflight_requests"),
        ("limits: {default: {rate: 5}}", "unknown field `rate`"),
        ("limits: {tenants: {'a b': {}}}", "limits.tenants.a b"),
    ] {
        let error = ServiceSettings::parse(text, Path::new("t/tailfold.yaml"))
            .err()
            .unwrap_or_else(|| panic!("{text} should be refused"))
            .to_string();
        assert!(error.contains(needle), "{text}: {error} lacks {needle}");
        assert!(error.starts_with("t/tailfold.yaml"), "{error}");
    }
}

#[test]
fn tenant_entries_inherit_unset_fields_from_default() {
    let settings = ServiceSettings::parse(
        "limits: {default: {samples_per_second: 50, max_active_series: 7}, tenants: {a: {samples_per_second: 10}}}",
        Path::new("t.yaml"),
    )
    .unwrap()
    .limits;
    let a = settings.for_tenant("a");
    assert_eq!(
        (a.samples_per_second, a.burst_samples, a.max_active_series),
        (Some(10), 10, Some(7))
    );
    let other = settings.for_tenant("zzz");
    assert_eq!((other.samples_per_second, other.burst_samples), (Some(50), 50));
}

#[test]
fn tokens_of_new_series_refused_by_the_cap_go_to_the_series_that_keep_flowing() {
    let (limits, telemetry) = limits("limits:\n  default: {samples_per_second: 10, max_active_series: 1}\n");
    let first = batch("a", vec![series("m", 0, 1)]);
    assert!(matches!(
        limits.admit(&first, 0, &mut Outcome::default()),
        Cow::Borrowed(_)
    ));
    // At the cap: a new series comes first in the batch and asks for every
    // token; once it is refused, the existing series gets them.
    let input = batch("a", vec![series("m", 1, 9), series("m", 0, 9)]);
    let mut outcome = Outcome::default();
    let admitted = limits.admit(&input, 0, &mut outcome);
    assert_eq!(admitted.series.len(), 1);
    assert_eq!(admitted.series[0].labels.get("id"), Some("0"));
    assert_eq!(
        admitted.series[0].points.len(),
        9,
        "9 tokens were left after the first point"
    );
    assert_eq!(outcome.rejected_for(DropReason::SeriesLimited), 9);
    assert_eq!(outcome.rejected_for(DropReason::RateLimited), 0);
    assert_eq!(
        drops(&telemetry),
        BTreeMap::from([(("a".into(), "series_limited", String::new()), 9)])
    );
}
