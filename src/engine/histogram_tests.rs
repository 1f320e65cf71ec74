//! Native histograms through the engine with time passed in: cumulative ones
//! become per-window deltas equal to histograms of the raw observations,
//! rollups merge them, exemplars follow their bucket, every one is tallied.

use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::SeedableRng;
use rand_distr::{Distribution, LogNormal};

use super::*;
use crate::aggregate::histogram::{bucket_index, ExpHistogram, HistogramConfig, Tightness};
use crate::model::{Labels, NativeHistogram, SeriesBatch, TraceContext};

const T0: i64 = 1_800_000_000_000;
const SCALE: i8 = 3;
const WINDOW: i64 = 10_000;

use super::tests::{engine, flush};

/// Observations of window `window` of pod `seed`: lognormal around 50 ms.
fn observations(seed: u64, window: i64) -> Vec<f64> {
    let dist = LogNormal::new(0.05f64.ln(), 0.8).unwrap();
    let mut rng = SmallRng::seed_from_u64(seed * 1_000 + window as u64);
    (0..60).map(|_| dist.sample(&mut rng)).collect()
}

/// The histogram of `values` at `SCALE`, as a sender would report it.
fn native(values: &[f64], timestamp_ms: i64) -> NativeHistogram {
    let mut positive: Vec<(i32, u64)> = Vec::new();
    let mut indices: Vec<i32> = values.iter().map(|v| bucket_index(SCALE, *v)).collect();
    indices.sort_unstable();
    for index in indices {
        match positive.last_mut() {
            Some((last, count)) if *last == index => *count += 1,
            _ => positive.push((index, 1)),
        }
    }
    NativeHistogram {
        timestamp_ms: Some(timestamp_ms),
        scale: SCALE,
        zero_threshold: 0.0,
        zero_count: 0,
        count: values.len() as u64,
        sum: values.iter().sum(),
        positive,
        negative: Vec::new(),
        exemplars: Vec::new(),
    }
}

/// An ExpHistogram of the raw values at `SCALE`.
fn raw(values: &[f64]) -> ExpHistogram {
    let mut histogram = ExpHistogram::new(HistogramConfig {
        scale: SCALE,
        ..HistogramConfig::default()
    });
    let mut rng = SmallRng::seed_from_u64(0);
    for &value in values {
        histogram.record(value, None, &mut rng);
    }
    histogram
}

fn series(name: &str, pod: &str, cumulative: bool, histograms: Vec<NativeHistogram>) -> SeriesBatch {
    SeriesBatch {
        labels: Labels::from_pairs([("__name__", name), ("pod", pod)]),
        kind: Kind::Distribution,
        cumulative,
        points: Vec::new(),
        histograms,
    }
}

fn batch(series: Vec<SeriesBatch>) -> IngestBatch {
    IngestBatch {
        tenant: Arc::from("t"),
        series,
    }
}

fn find<'a>(
    records: &'a [AggregateRecord],
    name: &str,
    statistic: Statistic,
    start: i64,
) -> Option<&'a AggregateRecord> {
    records
        .iter()
        .find(|r| r.output_name() == name && r.statistic == statistic && r.window_start_ms == start)
}

fn scalar(records: &[AggregateRecord], name: &str, statistic: Statistic, start: i64) -> Option<f64> {
    find(records, name, statistic, start).map(|record| match record.value {
        RecordValue::Scalar(value) => value,
        RecordValue::Histogram(_) => f64::NAN,
    })
}

fn histogram(records: &[AggregateRecord], name: &str, start: i64) -> Arc<ExpHistogram> {
    match &find(records, name, Statistic::Histogram, start)
        .expect("histogram record")
        .value
    {
        RecordValue::Histogram(histogram) => Arc::clone(histogram),
        RecordValue::Scalar(_) => panic!("not a histogram"),
    }
}

fn buckets(histogram: &ExpHistogram) -> (i8, Vec<(i32, u64)>, u64) {
    (
        histogram.scale(),
        histogram.positive_buckets().collect(),
        histogram.count(),
    )
}

const RULES: &str =
    "defaults: {storage_policies: [\"10s:1h\"], distribution: {aggregations: [count, sum, p50, p90, histogram]}}";

/// Running totals of pod `seed` over `windows` windows, one histogram 5 s into each.
fn running(seed: u64, windows: i64) -> (Vec<Vec<f64>>, Vec<NativeHistogram>) {
    let mut all = Vec::new();
    let mut per_window = Vec::new();
    let mut sent = Vec::new();
    for window in 0..windows {
        let values = observations(seed, window);
        all.extend_from_slice(&values);
        per_window.push(values);
        sent.push(native(&all, T0 + window * WINDOW + 5_000));
    }
    (per_window, sent)
}

#[test]
fn cumulative_histograms_become_per_window_deltas_with_the_raw_quantiles() {
    let engine = engine(RULES);
    let (per_window, sent) = running(1, 4);
    for histogram in &sent {
        let now = histogram.timestamp_ms.unwrap() + 1;
        let outcome = engine
            .ingest(&batch(vec![series("latency", "a", true, vec![histogram.clone()])]), now)
            .unwrap();
        assert_eq!((outcome.accepted, outcome.rejected_total()), (1, 0));
    }
    let records = flush(&engine, T0 + 100_000);
    // The first window holds only the baseline: seen, but nothing counted.
    assert_eq!(scalar(&records, "latency:count", Statistic::Count, T0), Some(0.0));
    assert_eq!(scalar(&records, "latency:sum", Statistic::Sum, T0), Some(0.0));
    assert_eq!(
        find(&records, "latency:quantile", Statistic::Quantile(0.5), T0).map(|r| r.window_start_ms),
        None
    );
    for window in 1..4 {
        let start = T0 + window * WINDOW;
        let values = &per_window[window as usize];
        let expected = raw(values);
        assert_eq!(
            scalar(&records, "latency:count", Statistic::Count, start),
            Some(values.len() as f64),
            "window {window}"
        );
        let sum = scalar(&records, "latency:sum", Statistic::Sum, start).unwrap();
        assert!(
            (sum - values.iter().sum::<f64>()).abs() < 1e-9,
            "window {window}: {sum}"
        );
        assert_eq!(buckets(&histogram(&records, "latency", start)), buckets(&expected));
        for q in [0.5, 0.9] {
            let got = scalar(&records, "latency:quantile", Statistic::Quantile(q), start);
            assert_eq!(got, Some(expected.quantile(q).unwrap().value), "window {window} q={q}");
        }
    }
}

#[test]
fn a_rollup_of_two_pods_equals_the_merge_of_their_windows() {
    let engine = engine(
        "defaults: {storage_policies: [\"10s:1h\"]}\nrollup_rules:\n  - name: no-pod\n    filter: '__name__:latency'\n    rollup: {name: 'latency:all', without: [pod], aggregations: [count, sum, histogram]}\n",
    );
    let (a_values, a_sent) = running(1, 3);
    let (b_values, mut b_sent) = running(2, 3);
    // An exemplar pod b resends from an earlier interval, in a bucket only pod a filled
    // this window: a real trace, but of no sample of the window, so it must not link.
    let b_buckets: Vec<i32> = b_sent[1].positive.iter().map(|(index, _)| *index).collect();
    let foreign = *a_values[1]
        .iter()
        .find(|v| !b_buckets.contains(&bucket_index(SCALE, **v)))
        .expect("a bucket of a alone");
    b_sent[1].exemplars = vec![(foreign, T0 - 60_000, trace(9))];
    for window in 0..3 {
        let now = T0 + window as i64 * WINDOW + 5_001;
        let sent = batch(vec![
            series("latency", "a", true, vec![a_sent[window].clone()]),
            series("latency", "b", true, vec![b_sent[window].clone()]),
        ]);
        assert_eq!(engine.ingest(&sent, now).unwrap().accepted, 2);
    }
    let records = flush(&engine, T0 + 100_000);
    for window in 1..3 {
        let start = T0 + window as i64 * WINDOW;
        let mut expected = raw(&a_values[window]);
        expected.merge(&raw(&b_values[window]), &mut SmallRng::seed_from_u64(1));
        let got = histogram(&records, "latency:all", start);
        assert_eq!(buckets(&got), buckets(&expected), "window {window}");
        assert_eq!(got.exemplars().len(), 0, "window {window}");
        let sum = scalar(&records, "latency:all:sum", Statistic::Sum, start).unwrap();
        assert!((sum - expected.sum()).abs() < 1e-9);
        assert_eq!(
            scalar(&records, "latency:all:count", Statistic::Count, start),
            Some(120.0)
        );
    }
}

fn trace(tag: u8) -> TraceContext {
    TraceContext {
        trace_id: [tag; 16],
        span_id: [tag; 8],
    }
}

#[test]
fn exemplars_of_a_native_histogram_come_out_on_the_quantile_of_their_bucket() {
    let engine = engine(RULES);
    let (per_window, mut sent) = running(3, 2);
    let mut second = per_window[1].clone();
    second.sort_by(f64::total_cmp);
    let median = second[(second.len() - 1) / 2];
    // One exemplar of an observation of the window, one of a bucket the delta did not grow.
    let stale = 1_000.0;
    sent[1].exemplars = vec![(median, T0 + 14_000, trace(7)), (stale, T0 + 14_500, trace(8))];
    for histogram in &sent {
        let now = histogram.timestamp_ms.unwrap() + 1;
        engine
            .ingest(&batch(vec![series("latency", "a", true, vec![histogram.clone()])]), now)
            .unwrap();
    }
    let records = flush(&engine, T0 + 100_000);
    let p50 = find(&records, "latency:quantile", Statistic::Quantile(0.5), T0 + WINDOW).unwrap();
    let exemplar = p50.exemplar.expect("the median's bucket holds the exemplar");
    assert_eq!((exemplar.trace_id, exemplar.value), ([7; 16], median));
    assert_eq!(exemplar.timestamp_ms, T0 + 14_000);
    let window = histogram(&records, "latency", T0 + WINDOW);
    assert_eq!(window.exemplars().len(), 1, "the stale exemplar found no bucket");
    assert_eq!(window.count(), 60, "exemplars are not counted as samples");
}

#[test]
fn a_late_histogram_is_too_late_and_a_gauge_histogram_folds_as_it_is() {
    let engine = engine(RULES);
    let first = native(&[0.1, 0.2], T0 + 5_000);
    engine
        .ingest(&batch(vec![series("latency", "a", true, vec![first])]), T0 + 5_001)
        .unwrap();
    assert_eq!(
        flush(&engine, T0 + 20_000).len(),
        3,
        "count, sum and histogram of the baseline"
    );
    // Newer than the baseline (not out of order) but its window is flushed.
    let late = native(&[0.1, 0.2, 0.3], T0 + 8_000);
    let outcome = engine
        .ingest(&batch(vec![series("latency", "a", true, vec![late])]), T0 + 20_000)
        .unwrap();
    assert_eq!((outcome.accepted, outcome.rejected_for(DropReason::TooLate)), (0, 1));

    // Gauge histograms are each one interval's: no baseline, no differences.
    let gauges = vec![native(&[0.1, 0.2], T0 + 21_000), native(&[0.1, 0.4, 0.8], T0 + 22_000)];
    let outcome = engine
        .ingest(&batch(vec![series("queue_wait", "a", false, gauges)]), T0 + 22_001)
        .unwrap();
    assert_eq!(outcome.accepted, 2);
    let records = flush(&engine, T0 + 100_000);
    let expected = raw(&[0.1, 0.2, 0.1, 0.4, 0.8]);
    assert_eq!(
        buckets(&histogram(&records, "queue_wait", T0 + 20_000)),
        buckets(&expected)
    );
    assert!(
        find(&records, "latency:count", Statistic::Count, T0).is_none(),
        "emitted twice"
    );
}

#[test]
fn every_histogram_is_accepted_or_refused_exactly_once() {
    let engine = engine(&format!(
        "{RULES}\nmapping_rules:\n  - {{name: d, filter: '__name__:debug_*', drop: true}}\n  - {{name: twice, filter: '__name__:latency', aggregations: [count], storage_policies: [\"10s:1h\", \"1m:1d\"]}}"
    ));
    let now = T0 + 30_000;
    let mut counter = series("requests", "a", false, vec![native(&[1.0], now)]);
    counter.kind = Kind::Counter;
    let sent = batch(vec![
        // One in time, one too far ahead, one late for 10 s but not for 1 m, one out of order.
        series(
            "latency",
            "a",
            true,
            vec![
                native(&[1.0], now),
                native(&[1.0, 2.0], now + 3_600_000),
                native(&[1.0, 2.0, 3.0], now),
            ],
        ),
        series("debug_x", "a", false, vec![native(&[1.0], now)]),
        counter,
    ]);
    let outcome = engine.ingest(&sent, now).unwrap();
    assert_eq!(outcome.rejected_for(DropReason::TooFarInFuture), 1);
    assert_eq!(
        outcome.rejected_for(DropReason::OutOfOrder),
        1,
        "same timestamp as the first"
    );
    assert_eq!(outcome.by_rule, vec![(Arc::from("d"), 1)]);
    assert_eq!(
        outcome.rejected_for(DropReason::KindConflict),
        1,
        "a histogram is no counter"
    );
    assert_eq!(outcome.accepted, 1);
    assert_eq!(outcome.accepted + outcome.rejected_total(), 5);

    // 10 s windows up to T0+20s are flushed; the 1 m window of T0 is still open.
    flush(&engine, now);
    let old = native(&[1.0, 2.0, 3.0, 4.0], T0 + 31_000);
    let late = native(&[1.0], T0 + 15_000);
    let outcome = engine
        .ingest(
            &batch(vec![series("latency", "b", false, vec![late, old])]),
            T0 + 31_000,
        )
        .unwrap();
    assert_eq!(
        (outcome.accepted, outcome.rejected_total()),
        (2, 0),
        "the 1m window takes the late one"
    );
    let records = flush(&engine, T0 + 200_000);
    let minute: Vec<_> = records
        .iter()
        .filter(|r| r.policy.to_string() == "1m:1d" && r.series.get("pod") == Some("b"))
        .collect();
    assert_eq!(minute.len(), 1);
    assert!(
        matches!(minute[0].value, RecordValue::Scalar(v) if v == 5.0),
        "{minute:?}"
    );
}

#[test]
fn a_quantile_whose_bucket_kept_no_trace_names_the_nearest_and_how_far() {
    // At scale 3, 1.05 and 1.9 lie in buckets 0 and 7: the median's bucket
    // saw no traced sample, so its link is the one trace, said to be 7 away.
    let mut values = vec![1.05; 10];
    values.push(1.9);
    let mut sent = native(&values, T0 + 5_000);
    sent.exemplars = vec![(1.9, T0 + 5_000, trace(7))];
    let settings = EngineSettings {
        shards: 4,
        ..EngineSettings::default()
    };
    let engine = Engine::new(settings, crate::rules::RuleSet::parse(RULES, "test.yaml").unwrap());
    engine
        .ingest(
            &batch(vec![series("latency", "a", false, vec![sent.clone()])]),
            T0 + 5_001,
        )
        .unwrap();
    let records = flush(&engine, T0 + 100_000);
    let p50 = find(&records, "latency:quantile", Statistic::Quantile(0.5), T0).unwrap();
    let exemplar = p50.exemplar.as_ref().map(|e| (e.trace_id, e.value));
    assert_eq!(exemplar, Some(([7; 16], 1.9)));
    match p50.tightness {
        Some(Tightness::Nearest {
            scale,
            lower,
            upper,
            buckets_away,
        }) => {
            assert_eq!(scale, 3);
            assert!(lower < 1.9 && 1.9 <= upper);
            assert_eq!(buckets_away, 7);
        }
        other => panic!("p50 link {other:?} is not said to be a neighbour's"),
    }
    let kept: Vec<_> = histogram(&records, "latency", T0).exemplars();
    assert_eq!(kept.len(), 1);
    assert_eq!((kept[0].1.trace_id, kept[0].1.value), ([7; 16], 1.9));
}
