//! Links (a window with a plan): every emitted quantile's exemplar lies in
//! the quantile's own bucket on log-normal data with a slow tail; `above` and
//! `below` select exactly the most extreme traced samples; counts per
//! threshold are exact; merges keep all of it.

use std::sync::Arc;

use super::*;
use crate::aggregate::Aggregation;

const DEFAULT: [&str; 8] = ["count", "sum", "min", "max", "p50", "p90", "p99", "p999"];

fn plan(aggregations: &[&str]) -> Arc<LinkPlan> {
    let parsed: Vec<Aggregation> = aggregations.iter().map(|text| text.parse().unwrap()).collect();
    LinkPlan::of(&parsed, 10).unwrap()
}

/// Log-normal latencies around 250 ms with a slow tail: one in twenty around 1.2 s.
pub(super) fn slow_tail(n: usize, seed: u64) -> Vec<f64> {
    let body = LogNormal::new(0.25f64.ln(), 0.6).unwrap();
    let tail = LogNormal::new(1.2f64.ln(), 0.4).unwrap();
    let mut r = rng(seed);
    (0..n)
        .map(|_| {
            if r.random_bool(0.05) {
                tail.sample(&mut r)
            } else {
                body.sample(&mut r)
            }
        })
        .collect()
}

fn traced(value: f64, tag: u64) -> Exemplar {
    let mut trace_id = [0u8; 16];
    trace_id[..8].copy_from_slice(&tag.to_le_bytes());
    trace_id[15] = 1;
    Exemplar {
        trace_id,
        span_id: [1; 8],
        value,
        timestamp_ms: tag as i64,
    }
}

fn window(data: &[f64], plan: &Arc<LinkPlan>, seed: u64) -> ExpHistogram {
    let mut h = ExpHistogram::with_plan(HistogramConfig::default(), Some(plan));
    let mut r = rng(seed);
    for (tag, value) in data.iter().enumerate() {
        h.record(*value, Some(traced(*value, tag as u64)), &mut r);
    }
    h
}

/// Share of `quantiles` whose exemplar lies in the quantile's own bucket, over `windows` windows of `n`.
fn own_bucket_share(n: usize, windows: u64) -> (usize, usize, usize) {
    let plan = plan(&DEFAULT);
    let (mut own, mut total, mut bytes) = (0, 0, 0);
    for w in 0..windows {
        let data = slow_tail(n, 1_000 + w);
        let h = window(&data, &plan, w);
        bytes = bytes.max(h.heap_bytes() + size_of::<ExpHistogram>());
        for q in [0.5, 0.9, 0.99, 0.999] {
            let estimate = h.quantile(q).unwrap();
            let exemplar = estimate.exemplar.expect("every quantile links a trace");
            total += 1;
            let in_bucket = bucket_index(h.scale(), exemplar.value) == bucket_index(h.scale(), estimate.value);
            match estimate.tightness {
                Some(Tightness::OwnBucket { scale, lower, upper }) => {
                    assert!(in_bucket, "n {n} q {q}: own-bucket link {} outside", exemplar.value);
                    assert_eq!(scale, h.scale());
                    assert!(lower < exemplar.value && exemplar.value <= upper);
                    own += 1;
                }
                other => {
                    assert!(!in_bucket);
                    println!("n {n} window {w} q {q}: {other:?}");
                }
            }
        }
    }
    (own, total, bytes)
}

#[test]
fn every_quantile_links_its_own_bucket_on_slow_tailed_data() {
    for (n, windows) in [(100, 200), (2_000, 40), (50_000, 4)] {
        let (own, total, bytes) = own_bucket_share(n, windows);
        println!("n {n}: {own}/{total} own bucket, largest window {bytes} B");
        assert!(own * 100 >= total * 99, "n {n}: {own}/{total}");
    }
}

#[test]
fn above_counts_and_selects_exactly_off_bucket_boundaries() {
    // 50 samples at 1.497 and one at 1.505 share a bucket at scale 6.
    assert_eq!(bucket_index(6, 1.497), bucket_index(6, 1.505));
    let plan = plan(&["above(1.5)", "below(1.5)", "p50"]);
    let mut data = vec![1.497; 50];
    data.push(1.505);
    data.extend([0.2, 0.3, 0.1]);
    let h = window(&data, &plan, 1);
    assert_eq!(h.count_above(1.5), 1);
    assert!(h.count_above_is_exact(1.5));
    assert_eq!(h.count_at_or_below(1.5), 53);
    let slowest = h.exemplars_above(1.5, 10);
    assert_eq!(slowest.iter().map(|e| e.value).collect::<Vec<_>>(), vec![1.505]);
    let fastest = h.exemplars_at_or_below(1.5, 10);
    let values: Vec<f64> = fastest.iter().map(|e| e.value).collect();
    assert_eq!(values[..4], [0.1, 0.2, 0.3, 1.497], "fastest first");
    assert_eq!(values.len(), 10);
}

/// The `k` slowest of `data` beyond `t` (ties by arrival), as trace tags.
fn slowest_tags(data: &[f64], t: f64, k: usize) -> Vec<u64> {
    let mut tagged: Vec<(usize, f64)> = data.iter().copied().enumerate().filter(|(_, v)| *v > t).collect();
    tagged.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    tagged.iter().take(k).map(|(tag, _)| *tag as u64).collect()
}

fn tags(exemplars: &[Exemplar]) -> Vec<u64> {
    exemplars
        .iter()
        .map(|e| u64::from_le_bytes(e.trace_id[..8].try_into().unwrap()))
        .collect()
}

#[test]
fn above_selects_the_k_slowest_traced_samples_slowest_first() {
    let plan = plan(&["p99", "above(1.5)", "above(0.3)"]);
    for n in [100, 2_000, 50_000] {
        let data = slow_tail(n, 7);
        let h = window(&data, &plan, 3);
        for t in [1.5, 0.3] {
            let exact = data.iter().filter(|v| **v > t).count() as u64;
            assert_eq!(h.count_above(t), exact, "n {n} above({t})");
            assert_eq!(
                tags(&h.exemplars_above(t, 10)),
                slowest_tags(&data, t, 10),
                "n {n} above({t})"
            );
        }
    }
}

#[test]
fn merged_windows_keep_exact_counts_selections_and_own_bucket_links() {
    let plan = plan(&["p50", "p90", "p99", "p999", "above(1.5)"]);
    let mut r = rng(11);
    for n in [100, 2_000, 50_000] {
        // A rollup of three inputs (or a cluster's forwarded partials): each
        // input's window, merged, against the exact union.
        let parts: Vec<Vec<f64>> = (0..3).map(|i| slow_tail(n / 3, 50 + i)).collect();
        let mut merged = ExpHistogram::with_plan(HistogramConfig::default(), Some(&plan));
        let mut all = Vec::new();
        for part in &parts {
            let base = all.len() as u64;
            let mut h = ExpHistogram::with_plan(HistogramConfig::default(), Some(&plan));
            for (tag, value) in part.iter().enumerate() {
                h.record(*value, Some(traced(*value, base + tag as u64)), &mut r);
            }
            merged.merge(&h, &mut r);
            all.extend_from_slice(part);
        }
        assert_eq!(merged.count(), all.len() as u64);
        let exact = all.iter().filter(|v| **v > 1.5).count() as u64;
        assert_eq!(merged.count_above(1.5), exact, "n {n}");
        assert!(merged.count_above_is_exact(1.5));
        assert_eq!(
            tags(&merged.exemplars_above(1.5, 10)),
            slowest_tags(&all, 1.5, 10),
            "n {n}"
        );
        for q in [0.5, 0.9, 0.99, 0.999] {
            let estimate = merged.quantile(q).unwrap();
            let exemplar = estimate.exemplar.unwrap();
            match estimate.tightness {
                Some(Tightness::OwnBucket { .. }) => {
                    assert_eq!(
                        bucket_index(merged.scale(), exemplar.value),
                        bucket_index(merged.scale(), estimate.value)
                    );
                }
                Some(Tightness::Nearest { buckets_away, .. }) => {
                    assert!(buckets_away > 0);
                    println!("merged n {n} q {q}: nearest, {buckets_away} away");
                }
                other => panic!("n {n} q {q}: {other:?}"),
            }
        }
    }
}

#[test]
fn bucket_lists_make_threshold_counts_estimates_and_say_so() {
    let plan = plan(&["above(1.5)"]);
    let mut h = ExpHistogram::with_plan(HistogramConfig::default(), Some(&plan));
    let mut r = rng(1);
    h.record(2.0, None, &mut r);
    assert!(h.count_above_is_exact(1.5));
    let positive = [(bucket_index(6, 1.7), 3u64)];
    let lists = BucketCounts {
        scale: 6,
        zero_threshold: 0.0,
        zero_count: 0,
        positive: &positive,
        negative: &[],
        sum: 5.1,
    };
    h.merge_buckets(&lists, &mut r).unwrap();
    assert_eq!(h.count_above(1.5), 4);
    assert!(!h.count_above_is_exact(1.5));
}

#[test]
fn links_travel_in_parts_and_broken_ones_are_refused() {
    let plan = plan(&["p50", "p99", "above(1.5)"]);
    let h = window(&slow_tail(2_000, 3), &plan, 1);
    let parts = h.to_parts();
    let back = ExpHistogram::from_parts(HistogramConfig::default(), &parts).unwrap();
    assert_eq!(back.count_above(1.5), h.count_above(1.5));
    assert_eq!(back.exemplars_above(1.5, 10), h.exemplars_above(1.5, 10));
    for q in [0.5, 0.99] {
        assert_eq!(back.quantile(q).unwrap().exemplar, h.quantile(q).unwrap().exemplar);
        assert_eq!(back.quantile(q).unwrap().tightness, h.quantile(q).unwrap().tightness);
    }
    let mut json = serde_json::to_value(&parts).unwrap();
    json["links"]["above"] = serde_json::json!([]);
    let broken: HistogramParts = serde_json::from_value(json).unwrap();
    let error = ExpHistogram::from_parts(HistogramConfig::default(), &broken).unwrap_err();
    assert!(matches!(error, PartsError::Links(_)), "{error}");
    assert!(
        error.to_string().contains("0 threshold counts for 1 thresholds"),
        "{error}"
    );
    // Two reservoirs in one bucket, or out of order: refused, not merged in.
    let mut json = serde_json::to_value(&parts).unwrap();
    let slots = json["links"]["bands"]["slots"].as_array_mut().unwrap();
    assert!(slots.len() > 2);
    let first = slots[0].clone();
    slots.insert(1, first);
    let broken: HistogramParts = serde_json::from_value(json).unwrap();
    let error = ExpHistogram::from_parts(HistogramConfig::default(), &broken).unwrap_err();
    assert!(error.to_string().contains("two in one bucket"), "{error}");
    let mut json = serde_json::to_value(&parts).unwrap();
    json["links"]["bands"]["slots"].as_array_mut().unwrap().swap(0, 1);
    let broken: HistogramParts = serde_json::from_value(json).unwrap();
    assert!(ExpHistogram::from_parts(HistogramConfig::default(), &broken).is_err());
}

/// Band cursors keep their bucket's count and the count below it instead of
/// reading the histogram per sample: after any mix of records (weighted,
/// negative, zero), merges, bucket lists and downscales, they equal the
/// histogram's own counts.
#[test]
fn band_cursors_keep_the_histograms_counts() {
    let plan = plan(&DEFAULT);
    let mut r = rng(41);
    let config = HistogramConfig {
        max_buckets: 160,
        ..HistogramConfig::default()
    };
    let mut h = ExpHistogram::with_plan(config, Some(&plan));
    let body = LogNormal::new(0.25f64.ln(), 0.6).unwrap();
    let mut checked = 0;
    for step in 0..8_000u64 {
        match step % 1_000 {
            999 => h.merge(&window(&slow_tail(300, step), &plan, step), &mut r),
            500 => {
                let buckets = BucketCounts {
                    scale: 4,
                    zero_threshold: 0.0,
                    zero_count: 2,
                    positive: &[(-10, 3), (-2, 40), (5, 1)],
                    negative: &[(-4, 2)],
                    sum: f64::NAN,
                };
                h.merge_buckets(&buckets, &mut r).unwrap();
            }
            _ => {
                let value = match r.random_range(0..40) {
                    0 => -body.sample(&mut r),
                    1 => 0.0,
                    // Far out: the histogram downscales, and the bands start over.
                    2 if step % 7 == 0 => body.sample(&mut r) * 1e4,
                    _ => body.sample(&mut r),
                };
                let weight = if r.random_bool(0.1) { r.random_range(2..5) } else { 1 };
                h.record_n(value, weight, Some(traced(value, step)), &mut r);
            }
        }
        let (links, order) = h.links_and_order().unwrap();
        for (kept, histogram) in links.cursor_counts(&order) {
            assert_eq!(
                kept, histogram,
                "step {step}: cursor (below, in, below band, through band)"
            );
            checked += 1;
        }
    }
    assert!(checked > 10_000, "bands were placed: {checked} cursor checks");
    assert!(h.scale() < HistogramConfig::default().scale, "the histogram downscaled");
}

/// Once bands are placed, a traced sample outside every band is not offered
/// to any reservoir, not even one its bucket still keeps from before.
#[test]
fn samples_outside_every_band_leave_the_reservoirs_alone() {
    let plan = plan(&DEFAULT);
    let mut r = rng(43);
    // 24 reservoirs far below what follows, then bands placed on the body:
    // the low reservoirs stay until storage fills, outside every band.
    let low: Vec<f64> = (0..24).map(|k| 0.001 * 1.05f64.powi(k)).collect();
    let mut h = window(&[low, slow_tail(40, 43)].concat(), &plan, 43);
    assert!(h.links().unwrap().banded());
    let (bucket, lowest) = h.exemplars()[0];
    assert!(
        lowest.value < 0.01 && h.quantile(0.5).unwrap().value > 0.1,
        "{lowest:?}"
    );
    // Exemplars offered apart from their samples (as a scraped native
    // histogram's are), so the quantiles stay where they are.
    for tag in 0..200 {
        assert!(h.offer_exemplar(traced(lowest.value, 1_000_000 + tag), &mut r));
    }
    // Offered, 200 more traced samples would have replaced the pick all but surely.
    assert_eq!(h.exemplars()[0], (bucket, lowest));
    assert_eq!(h.quantile(0.5).unwrap().tightness.unwrap().name(), "own_bucket");
}
