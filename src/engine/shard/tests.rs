//! Shard tables: inline and heap windows, flush order, kind conflicts, reloads.

use super::*;
use crate::engine::route::{SeriesRoute, SlotSets};
use crate::engine::EngineSettings;
use crate::model::Labels;
use crate::rules::RuleSet;

fn sample(window_start_ms: i64, value: f64) -> RoutedSample {
    RoutedSample {
        route: 0,
        target: 0,
        slot: 0,
        point: 0,
        output: 0,
        kind: Kind::Counter,
        window_start_ms,
        timestamp_ms: window_start_ms + 1,
        value,
        trace: None,
        weight: 1,
        input: 7,
    }
}

/// The first target of the route of `requests{pod="a"}` of `kind` under `rules` (YAML).
fn target_under(rules: &str, kind: Kind) -> Arc<OutputTarget> {
    let rules = RuleSet::parse(rules, "test.yaml").unwrap();
    let labels = Labels::from_pairs([("__name__", "requests"), ("pod", "a")]);
    let plan = rules.resolve(&labels, kind);
    let settings = EngineSettings::default();
    let route = SeriesRoute::build(&plan, &Arc::from("t"), &settings, kind, &SlotSets::default());
    Arc::clone(&route.targets[0])
}

/// Folds `sample` into `target`'s window as the engine does, with the
/// target's key, kind and slot.
fn fold(shard: &mut Shard, target: &Arc<OutputTarget>, sample: &RoutedSample, now_ms: i64) -> Result<(), DropReason> {
    let sample = RoutedSample {
        output: target.key,
        kind: target.kind,
        ..*sample
    };
    shard.fold(target, &target.slots[sample.slot as usize], &sample, now_ms)
}

fn slot_sample(slot: u16, window_start_ms: i64, value: f64) -> RoutedSample {
    RoutedSample {
        slot,
        ..sample(window_start_ms, value)
    }
}

fn counter_sum(state: &WindowState) -> f64 {
    match state {
        WindowState::Counter(counter) => counter.sum,
        other => panic!("not a counter window: {other:?}"),
    }
}

/// Whether output `key` keeps its windows inline, and how many it has.
fn layout(shard: &Shard, key: u64) -> Option<(bool, usize)> {
    shard.output(key).map(|entry| match &entry.windows {
        Windows::One(_) => (true, 1),
        Windows::Many(windows) => (false, windows.len()),
    })
}

const TEN_SECONDS: &str = "defaults: {storage_policies: [\"10s:1h\"]}";
const T0: i64 = 1_800_000_000_000;

#[test]
fn a_second_window_moves_to_the_heap_and_a_flush_brings_the_last_one_back_inline() {
    let target = target_under(TEN_SECONDS, Kind::Counter);
    let mut shard = Shard::new(1, HistogramConfig::default(), 60_000, 1_000);
    let (first, second) = (T0, T0 + 10_000);
    fold(&mut shard, &target, &sample(first, 2.0), T0).unwrap();
    fold(&mut shard, &target, &sample(first, 3.0), T0).unwrap();
    assert_eq!(layout(&shard, target.key), Some((true, 1)));
    fold(&mut shard, &target, &sample(second, 7.0), T0 + 10_001).unwrap();
    assert_eq!(layout(&shard, target.key), Some((false, 2)));
    assert_eq!(shard.open_windows(), 2);
    // The first window is due (10 s + 5 s lateness), the second is not.
    let (mut out, mut classes) = (Vec::new(), Vec::new());
    shard.take_windows(first + 15_000, false, None, &mut out, &mut classes);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].start_ms, counter_sum(&out[0].state)), (first, 5.0));
    assert_eq!(layout(&shard, target.key), Some((true, 1)));
    // The window kept inline is the second one, and still takes samples.
    fold(&mut shard, &target, &sample(second, 1.0), T0 + 15_001).unwrap();
    assert_eq!(shard.peek_state(target.key, 0, second).map(counter_sum), Some(8.0));
    out.clear();
    shard.take_windows(second + 15_000, false, None, &mut out, &mut classes);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].start_ms, counter_sum(&out[0].state)), (second, 8.0));
    assert_eq!(
        layout(&shard, target.key),
        None,
        "an output without windows leaves the table"
    );
    assert_eq!(shard.active_outputs(), 0);
    // The shard held the output only through its windows.
    drop(out);
    assert_eq!(Arc::strong_count(&target), 1);
}

#[test]
fn windows_of_two_policies_flush_in_window_order_with_running_totals() {
    let target = target_under(
        "defaults: {storage_policies: [\"10s:1h\", \"1m:1d\"]}\nmapping_rules:\n  - {name: r, filter: '__name__:requests', aggregations: [sum, total]}\n",
        Kind::Counter,
    );
    assert_eq!(target.slots.len(), 2);
    let mut shard = Shard::new(1, HistogramConfig::default(), 600_000, 1_000);
    // Folded newest first, so the flush must sort them for the totals.
    fold(&mut shard, &target, &slot_sample(0, T0 + 10_000, 5.0), T0).unwrap();
    fold(&mut shard, &target, &slot_sample(0, T0, 2.0), T0).unwrap();
    fold(&mut shard, &target, &slot_sample(1, T0, 4.0), T0).unwrap();
    fold(&mut shard, &target, &slot_sample(1, T0, 1.0), T0).unwrap();
    assert_eq!(layout(&shard, target.key), Some((false, 3)));
    let (mut out, mut classes) = (Vec::new(), Vec::new());
    shard.take_windows(T0 + 1_000_000, false, None, &mut out, &mut classes);
    // Windows of one start may come in either policy order; the totals
    // tell whether each policy's windows came in window order.
    out.sort_by_key(|window| (window.start_ms, classes[window.class as usize].policy.resolution_ms));
    // (policy, window start, window sum, (running total, starts the totals))
    type Taken = (StoragePolicy, i64, f64, Option<(f64, bool)>);
    let taken: Vec<Taken> = out
        .iter()
        .map(|window| {
            let policy = classes[window.class as usize].policy;
            (
                policy,
                window.start_ms,
                counter_sum(&window.state),
                window.running_total.map(|totals| (totals.sum, totals.first)),
            )
        })
        .collect();
    let (ten_seconds, one_minute) = (target.slots[0].policy, target.slots[1].policy);
    assert_eq!(
        taken,
        vec![
            // Each policy's first window starts its totals (the sink writes a zero before it).
            (ten_seconds, T0, 2.0, Some((2.0, true))),
            (one_minute, T0, 5.0, Some((5.0, true))),
            (ten_seconds, T0 + 10_000, 5.0, Some((7.0, false))),
        ]
    );
    assert_eq!(shard.active_outputs(), 0);
}

#[test]
fn another_kind_for_the_same_output_is_refused_with_one_window_or_many() {
    let counter = target_under(TEN_SECONDS, Kind::Counter);
    let gauge = target_under(TEN_SECONDS, Kind::Gauge);
    assert_eq!(counter.key, gauge.key);
    let mut shard = Shard::new(1, HistogramConfig::default(), 60_000, 1_000);
    fold(&mut shard, &counter, &sample(T0, 1.0), T0).unwrap();
    assert_eq!(
        fold(&mut shard, &gauge, &sample(T0, 1.0), T0),
        Err(DropReason::KindConflict)
    );
    assert_eq!(layout(&shard, counter.key), Some((true, 1)));
    fold(&mut shard, &counter, &sample(T0 + 10_000, 1.0), T0).unwrap();
    let later = sample(T0 + 20_000, 1.0);
    assert_eq!(fold(&mut shard, &gauge, &later, T0), Err(DropReason::KindConflict));
    assert_eq!(layout(&shard, counter.key), Some((false, 2)));
    assert_eq!(shard.peek_state(counter.key, 0, T0).map(counter_sum), Some(1.0));
}

#[test]
fn a_reloaded_target_shares_a_window_only_under_the_same_policy() {
    let old = target_under(TEN_SECONDS, Kind::Counter);
    let same_policy = target_under(TEN_SECONDS, Kind::Counter);
    let other_policy = target_under("defaults: {storage_policies: [\"1m:1d\"]}", Kind::Counter);
    assert!(!Arc::ptr_eq(&old, &same_policy));
    assert_eq!((old.key, old.key), (same_policy.key, other_policy.key));
    let mut shard = Shard::new(1, HistogramConfig::default(), 60_000, 1_000);
    fold(&mut shard, &old, &sample(T0, 1.0), T0).unwrap();
    // A window opened by the old target takes the new target's samples of the same policy ...
    fold(&mut shard, &same_policy, &sample(T0, 2.0), T0).unwrap();
    assert_eq!(layout(&shard, old.key), Some((true, 1)));
    // ... and not those of another policy with the same slot index and start.
    fold(&mut shard, &other_policy, &sample(T0, 4.0), T0).unwrap();
    assert_eq!(layout(&shard, old.key), Some((false, 2)));
    let (mut out, mut classes) = (Vec::new(), Vec::new());
    shard.take_windows(T0 + 1_000_000, false, None, &mut out, &mut classes);
    out.sort_by_key(|window| classes[window.class as usize].policy.resolution_ms);
    let taken: Vec<(StoragePolicy, f64, bool)> = out
        .iter()
        .map(|window| {
            let policy = classes[window.class as usize].policy;
            (policy, counter_sum(&window.state), Arc::ptr_eq(&window.target, &old))
        })
        .collect();
    assert_eq!(
        taken,
        vec![
            (old.slots[0].policy, 3.0, true),
            (other_policy.slots[0].policy, 4.0, false)
        ]
    );
}

#[test]
fn peek_state_finds_exactly_the_window_a_sample_folds_into() {
    let rules = RuleSet::default_rules();
    let labels = Labels::from_pairs([("__name__", "requests")]);
    let plan = rules.resolve(&labels, Kind::Counter);
    let settings = EngineSettings::default();
    let route = SeriesRoute::build(&plan, &Arc::from("t"), &settings, Kind::Counter, &SlotSets::default());
    let target = &route.targets[0];
    let resolution_ms = target.slots[0].policy.resolution_ms as i64;
    let mut shard = Shard::new(1, HistogramConfig::default(), 60_000, 1_000);
    let (first, second) = (10 * resolution_ms, 11 * resolution_ms);
    fold(&mut shard, target, &sample(first, 2.0), first).unwrap();
    fold(&mut shard, target, &sample(second, 5.0), first).unwrap();
    let sum = |state: Option<&WindowState>| match state {
        Some(WindowState::Counter(counter)) => Some(counter.sum),
        _ => None,
    };
    assert_eq!(sum(shard.peek_state(target.key, 0, first)), Some(2.0));
    assert_eq!(sum(shard.peek_state(target.key, 0, second)), Some(5.0));
    assert!(shard.peek_state(target.key, 0, second + resolution_ms).is_none());
    assert!(shard.peek_state(target.key, 1, first).is_none());
    assert!(shard.peek_state(target.key ^ 1, 0, first).is_none());
}
