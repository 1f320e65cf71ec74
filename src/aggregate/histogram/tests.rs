//! Property tests for the exponential histogram against exact computations.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal};

use super::*;

mod compact;
mod exemplars;
mod limit;
mod links;

pub(super) fn rng(seed: u64) -> SmallRng {
    SmallRng::seed_from_u64(seed)
}

fn lognormal(n: usize, seed: u64) -> Vec<f64> {
    let dist = LogNormal::new(0.05f64.ln(), 0.6).unwrap();
    let mut r = rng(seed);
    (0..n).map(|_| dist.sample(&mut r)).collect()
}

/// 90% around 10ms, 10% around 2s.
fn bimodal(n: usize, seed: u64) -> Vec<f64> {
    let fast = LogNormal::new(0.010f64.ln(), 0.3).unwrap();
    let slow = LogNormal::new(2.0f64.ln(), 0.2).unwrap();
    let mut r = rng(seed);
    (0..n)
        .map(|_| {
            if r.random_bool(0.9) {
                fast.sample(&mut r)
            } else {
                slow.sample(&mut r)
            }
        })
        .collect()
}

fn build(data: &[f64], config: HistogramConfig) -> ExpHistogram {
    let mut h = ExpHistogram::new(config);
    let mut r = rng(99);
    for &v in data {
        h.record(v, None, &mut r);
    }
    h
}

/// Nearest-rank sample, computed independently by sorting.
fn exact_quantile(data: &[f64], q: f64) -> f64 {
    let mut sorted = data.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * data.len() as f64).ceil() as usize).max(1);
    sorted[rank - 1]
}

const QS: [f64; 5] = [0.5, 0.9, 0.99, 0.999, 0.9999];

fn assert_quantiles_within_bound(h: &ExpHistogram, data: &[f64], qs: &[f64]) {
    let bound = relative_error(h.scale()) + 1e-12;
    for &q in qs {
        let exact = exact_quantile(data, q);
        let est = h.quantile(q).unwrap();
        if est.bucket == BucketRef::Zero {
            assert!((est.value - exact).abs() <= h.config().zero_threshold, "q={q}");
            continue;
        }
        let err = ((est.value - exact) / exact).abs();
        assert!(
            err <= bound,
            "q={q} est={} exact={exact} err={err} bound={bound}",
            est.value
        );
        // The reported bucket really holds the exact sample.
        let (l, u) = bucket_bounds(h.scale(), bucket_index(h.scale(), exact));
        let i = bucket_index(h.scale(), exact);
        assert!(l < exact.abs() && exact.abs() <= u);
        let expected = if exact > 0.0 {
            BucketRef::Positive(i)
        } else {
            BucketRef::Negative(i)
        };
        assert_eq!(est.bucket, expected, "q={q}");
    }
}

/// `2^k` built from bits (`powi` underflows to zero for deep subnormals).
fn exact_pow2(k: i32) -> f64 {
    if k >= -1022 {
        f64::from_bits(((k + 1023) as u64) << 52)
    } else {
        f64::from_bits(1 << (k + 1074))
    }
}

#[test]
fn powers_of_two_map_exactly() {
    for s in MIN_SCALE..=MAX_SCALE {
        for k in -1074i32..=1023 {
            let v = exact_pow2(k);
            let expected = if s > 0 { (k << s) - 1 } else { (k - 1) >> -s };
            assert_eq!(bucket_index(s, v), expected, "scale {s} 2^{k}");
            assert_eq!(bucket_index(s, -v), expected, "negative mirrors");
            if k >= -1022 {
                let (l, u) = bucket_bounds(s, expected);
                assert!(l < v && v <= u, "scale {s} 2^{k} not in ({l}, {u}]");
                if s >= 0 {
                    assert_eq!(u, v, "a power of two is an upper bound");
                }
            }
        }
    }
    assert_eq!(bucket_index(6, 1.0), -1);
    assert_eq!(bucket_index(6, 2.0), 63);
    assert_eq!(bucket_index(0, 1.5), 0);
    assert_eq!(bucket_index(-1, 4.0), 0);
    assert_eq!(bucket_index(-1, 8.0), 1);
}

#[test]
fn random_values_lie_in_their_bucket() {
    let mut r = rng(1);
    for s in MIN_SCALE..=MAX_SCALE {
        for _ in 0..20_000 {
            let v = 10f64.powf(r.random_range(-300.0..300.0));
            let i = bucket_index(s, v);
            let (l, u) = bucket_bounds(s, i);
            assert!(l < v && v <= u, "scale {s}: {v} not in ({l}, {u}] (index {i})");
        }
    }
}

#[test]
fn bucket_boundaries_are_exact() {
    let mut r = rng(2);
    for s in MIN_SCALE..=MAX_SCALE {
        let lo = bucket_index(s, 1e-300);
        let hi = bucket_index(s, 1e300) - 1;
        for _ in 0..5_000 {
            let i = r.random_range(lo..=hi);
            let (l, u) = bucket_bounds(s, i);
            assert_eq!(bucket_bounds(s, i + 1).0, u, "bounds chain");
            assert_eq!(bucket_index(s, u), i, "upper bound is inclusive (scale {s})");
            assert_eq!(bucket_index(s, u.next_up()), i + 1, "scale {s}");
            assert_eq!(bucket_index(s, l.next_up()), i, "scale {s}");
        }
    }
}

#[test]
fn coarse_boundaries_are_fine_boundaries() {
    // Downscaling by `index >> 1` is only exact if this holds bit for bit.
    let mut r = rng(3);
    for s in (MIN_SCALE + 1)..=MAX_SCALE {
        for _ in 0..2_000 {
            let i = r.random_range(bucket_index(s - 1, 1e-300)..bucket_index(s - 1, 1e300));
            assert_eq!(bucket_bounds(s - 1, i).0, bucket_bounds(s, 2 * i).0);
            let v = 10f64.powf(r.random_range(-300.0..300.0));
            assert_eq!(bucket_index(s, v) >> 1, bucket_index(s - 1, v));
        }
    }
}

#[test]
fn extreme_magnitudes_do_not_panic() {
    for s in MIN_SCALE..=MAX_SCALE {
        let mut prev = i32::MIN;
        let mut v = f64::from_bits(1);
        while v.is_finite() {
            let i = bucket_index(s, v);
            assert!(i >= prev, "index not monotonic at {v}");
            prev = i;
            let (l, u) = bucket_bounds(s, i);
            assert!(l <= v && v <= u, "scale {s}: {v} outside [{l}, {u}]");
            // Plain multiplication stalls on the smallest subnormals.
            v = (v * 1.37).max(v.next_up());
        }
        assert!(bucket_index(s, f64::MAX) >= prev);
        assert_eq!(bucket_index(s, 0.0), bucket_index(s, f64::from_bits(1)));
        let _ = bucket_bounds(s, i32::MAX);
        let _ = bucket_bounds(s, i32::MIN);
    }
    // Subnormals at non-positive scales have exact power-of-two bounds.
    let v = f64::from_bits(12345);
    let (l, u) = bucket_bounds(0, bucket_index(0, v));
    assert!(l < v && v <= u);
}

#[test]
fn relative_error_matches_base() {
    let base = 2f64.powf(1.0 / 64.0);
    assert!((relative_error(6) - (base - 1.0) / (base + 1.0)).abs() < 1e-15);
    assert!((relative_error(6) - 0.0054).abs() < 1e-4);
    assert_eq!(relative_error(MIN_SCALE), 1.0);
    for s in MIN_SCALE..MAX_SCALE {
        // Below scale -5 the ratio is within an ulp of 1.0.
        assert!(relative_error(s) >= relative_error(s + 1));
        assert!(s < -5 || relative_error(s) > relative_error(s + 1));
    }
    // The representative value achieves the bound at both ends of a bucket.
    for s in [0, 3, 6, 8] {
        let (l, u) = bucket_bounds(s, 17);
        let m = mapping::representative(l, u);
        for edge in [l, u] {
            assert!(((m - edge) / edge).abs() <= relative_error(s) + 1e-12);
        }
    }
}

#[test]
fn config_validation_reports_the_bad_value() {
    assert_eq!(HistogramConfig::default().validate(), Ok(()));
    let bad = |f: fn(&mut HistogramConfig)| {
        let mut c = HistogramConfig::default();
        f(&mut c);
        c.validate().unwrap_err()
    };
    let e = bad(|c| c.scale = 9);
    assert_eq!(e, HistogramError::ScaleOutOfRange(9));
    assert!(e.to_string().contains('9'));
    assert_eq!(bad(|c| c.scale = -11), HistogramError::ScaleOutOfRange(-11));
    assert_eq!(bad(|c| c.max_buckets = 1), HistogramError::TooFewBuckets(1));
    let e = bad(|c| c.zero_threshold = -0.5);
    assert!(e.to_string().contains("-0.5"), "{e}");
    assert!(matches!(bad(|c| c.zero_threshold = f64::NAN), HistogramError::InvalidZeroThreshold(z) if z.is_nan()));
    assert!(ExpHistogram::try_new(HistogramConfig {
        max_buckets: 0,
        ..Default::default()
    })
    .is_err());
    let h = ExpHistogram::new(HistogramConfig {
        scale: 100,
        max_buckets: 0,
        zero_threshold: -1.0,
        exemplar_scale_reduction: 200,
        max_exemplars: 3,
    });
    assert_eq!(h.config().validate(), Ok(()));
    assert_eq!(h.config().max_exemplars, MIN_MAX_EXEMPLARS);
}

#[test]
fn lognormal_quantiles_within_relative_error() {
    let data = lognormal(100_000, 10);
    let h = build(&data, HistogramConfig::default());
    assert_eq!(h.scale(), 6, "no downscale expected");
    assert_quantiles_within_bound(&h, &data, &QS);
    assert_eq!(h.quantile(0.0).unwrap().value, exact_quantile(&data, 0.0));
    assert_eq!(h.quantile(1.0).unwrap().value, exact_quantile(&data, 1.0));
}

#[test]
fn bimodal_quantiles_within_relative_error() {
    let data = bimodal(100_000, 11);
    let h = build(&data, HistogramConfig::default());
    assert_quantiles_within_bound(&h, &data, &QS);
    // p50 sits in the fast mode, p99 in the slow one.
    assert!(h.quantile(0.5).unwrap().value < 0.05);
    assert!(h.quantile(0.99).unwrap().value > 1.0);
}

#[test]
fn negatives_and_zeros_mixed_in() {
    let mut r = rng(12);
    let data: Vec<f64> = lognormal(50_000, 13)
        .into_iter()
        .map(|v| match r.random_range(0..10) {
            0..=2 => -v,
            3 => 0.0,
            4 => -0.0,
            _ => v,
        })
        .collect();
    let h = build(&data, HistogramConfig::default());
    let zeros = data.iter().filter(|v| **v == 0.0).count() as u64;
    assert_eq!(h.zero_count(), zeros);
    let qs: Vec<f64> = (0..=100).map(|i| f64::from(i) / 100.0).chain(QS).collect();
    assert_quantiles_within_bound(&h, &data, &qs);
    let p30 = h.quantile(0.30).unwrap();
    assert_eq!((p30.bucket, p30.value), (BucketRef::Zero, 0.0));
    assert_eq!(h.quantile(0.0).unwrap().value, exact_quantile(&data, 0.0));
    let total: u64 = h.positive_buckets().chain(h.negative_buckets()).map(|(_, c)| c).sum();
    assert_eq!(total + zeros, h.count());
}

#[test]
fn zero_threshold_collects_small_magnitudes() {
    let config = HistogramConfig {
        zero_threshold: 1e-3,
        ..Default::default()
    };
    let mut r = rng(14);
    let data: Vec<f64> = (0..20_000).map(|_| r.random_range(-0.01..0.1)).collect();
    let h = build(&data, config);
    let small = data.iter().filter(|v| v.abs() <= 1e-3).count() as u64;
    assert!(small > 0);
    assert_eq!(h.zero_count(), small);
    assert_quantiles_within_bound(&h, &data, &(1..100).map(|i| f64::from(i) / 100.0).collect::<Vec<_>>());
    for t in [-0.005, -1e-3, -1e-4, 0.0, 5e-4, 1e-3, 0.02] {
        check_count_above(&h, &data, t);
    }
}

#[test]
fn quantile_rejects_bad_input() {
    let mut h = ExpHistogram::default();
    assert_eq!(h.quantile(0.5), None);
    assert_eq!(h.fraction_above(1.0), None);
    assert_eq!((h.min(), h.max(), h.mean(), h.stdev()), (None, None, None, None));
    h.record(3.0, None, &mut rng(0));
    for q in [-0.1, 1.1, f64::NAN, f64::INFINITY] {
        assert_eq!(h.quantile(q), None);
    }
    assert_eq!(h.quantile(0.5).unwrap().value, 3.0);
}

/// Exact count above `t`, and the estimate's error bound: the count of the
/// bucket holding `t` (zero when `t` is outside `[min, max)`).
fn check_count_above(h: &ExpHistogram, data: &[f64], t: f64) -> (u64, u64) {
    let exact = data.iter().filter(|v| **v > t).count() as u64;
    let est = h.count_above(t);
    let (min, max) = (h.min().unwrap(), h.max().unwrap());
    let slack = if t >= max || t < min {
        0
    } else if t.abs() <= h.config().zero_threshold {
        h.zero_count()
    } else {
        let i = bucket_index(h.scale(), t);
        let side = if t > 0.0 {
            h.positive_buckets().collect::<Vec<_>>()
        } else {
            h.negative_buckets().collect()
        };
        side.iter().find(|(j, _)| *j == i).map_or(0, |(_, c)| *c)
    };
    assert!(
        est.abs_diff(exact) <= slack,
        "t={t}: est {est} exact {exact} slack {slack}"
    );
    assert_eq!(h.count_at_or_below(t), h.count() - est);
    (est, exact)
}

#[test]
fn count_above_exact_at_boundaries_and_bounded_between() {
    let data = lognormal(100_000, 15);
    let h = build(&data, HistogramConfig::default());
    for t in [1.0, 2.0, 0.5, 0.25, 0.125, 0.0625, 1.0 / 32.0] {
        let (est, exact) = check_count_above(&h, &data, t);
        assert_eq!(est, exact, "power of two {t}");
    }
    let mut r = rng(16);
    for _ in 0..500 {
        let i = r.random_range(bucket_index(6, 0.01)..bucket_index(6, 0.5));
        let u = bucket_bounds(6, i).1;
        let (est, exact) = check_count_above(&h, &data, u);
        assert_eq!(est, exact, "boundary {u}");
        check_count_above(&h, &data, r.random_range(0.001..1.0));
    }
    for t in [-1.0, 0.0, 1e-9, 1e9, f64::MAX] {
        let (est, exact) = check_count_above(&h, &data, t);
        assert_eq!(est, exact);
    }
    assert_eq!(h.count_above(f64::NAN), 0);
    let frac = h.fraction_above(0.1).unwrap();
    let exact = data.iter().filter(|v| **v > 0.1).count() as f64 / data.len() as f64;
    assert!((frac - exact).abs() < 0.005);
}

#[test]
fn count_above_on_negative_side() {
    let data: Vec<f64> = lognormal(30_000, 17).into_iter().map(|v| -v).collect();
    let h = build(&data, HistogramConfig::default());
    let mut r = rng(18);
    for _ in 0..300 {
        check_count_above(&h, &data, -r.random_range(0.001..1.0));
    }
    for t in [-1.0, -0.5, -0.125] {
        let (est, exact) = check_count_above(&h, &data, t);
        assert_eq!(est, exact, "no sample equals {t}, so boundaries are exact");
    }
}

fn direct_stdev(data: &[f64]) -> f64 {
    let n = data.len() as f64;
    let mean = data.iter().sum::<f64>() / n;
    (data.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt()
}

fn assert_same_buckets(a: &ExpHistogram, b: &ExpHistogram) {
    assert_eq!(a.scale(), b.scale());
    assert_eq!(
        a.positive_buckets().collect::<Vec<_>>(),
        b.positive_buckets().collect::<Vec<_>>()
    );
    assert_eq!(
        a.negative_buckets().collect::<Vec<_>>(),
        b.negative_buckets().collect::<Vec<_>>()
    );
    assert_eq!(
        (a.zero_count(), a.count(), a.min(), a.max()),
        (b.zero_count(), b.count(), b.min(), b.max())
    );
}

#[test]
fn merge_of_halves_equals_whole() {
    let mut data = bimodal(60_000, 19);
    for (i, v) in data.iter_mut().enumerate() {
        if i % 7 == 0 {
            *v = -*v;
        } else if i % 11 == 0 {
            *v = 0.0;
        }
    }
    // Small max_buckets so the whole and the halves downscale differently.
    let config = HistogramConfig {
        max_buckets: 300,
        ..Default::default()
    };
    let whole = build(&data, config);
    let (left, right) = data.split_at(20_000);
    let mut merged = build(left, config);
    let other = build(right, config);
    merged.merge(&other, &mut rng(20));
    assert!(whole.scale() < 6);
    assert_same_buckets(&merged, &whole);
    assert!((merged.sum() - whole.sum()).abs() <= 1e-9 * whole.sum().abs());
    for q in (0..=1000).map(|i| f64::from(i) / 1000.0) {
        assert_eq!(merged.quantile(q), whole.quantile(q), "q={q}");
    }
    let direct = direct_stdev(&data);
    assert!((merged.stdev().unwrap() - direct).abs() <= 1e-9 * direct);
    assert!((whole.stdev().unwrap() - direct).abs() <= 1e-9 * direct);
    let mean = data.iter().sum::<f64>() / data.len() as f64;
    assert!((merged.mean().unwrap() - mean).abs() <= 1e-9 * mean.abs());
}

#[test]
fn merge_across_scales_downscales_the_finer() {
    let a_data = lognormal(40_000, 21);
    let b_data = bimodal(40_000, 22);
    let coarse = HistogramConfig {
        scale: 3,
        ..Default::default()
    };
    let all: Vec<f64> = a_data.iter().chain(&b_data).copied().collect();
    let reference = build(&all, coarse);
    // Fine into coarse, and coarse into fine: both land at scale 3.
    let mut fine = build(&a_data, HistogramConfig::default());
    fine.merge(&build(&b_data, coarse), &mut rng(23));
    let mut c = build(&b_data, coarse);
    c.merge(&build(&a_data, HistogramConfig::default()), &mut rng(24));
    for h in [&fine, &c] {
        assert_same_buckets(h, &reference);
        assert_quantiles_within_bound(h, &all, &QS);
        let direct = direct_stdev(&all);
        assert!((h.stdev().unwrap() - direct).abs() <= 1e-9 * direct);
    }
    // Merging an empty histogram changes nothing, merging into one copies.
    let before = fine.clone();
    fine.merge(&ExpHistogram::default(), &mut rng(25));
    assert_same_buckets(&fine, &before);
    let mut empty = ExpHistogram::new(coarse);
    empty.merge(&before, &mut rng(26));
    assert_same_buckets(&empty, &before);
}

#[test]
fn wide_range_triggers_downscale() {
    let mut r = rng(27);
    let data: Vec<f64> = (0..50_000).map(|_| 10f64.powf(r.random_range(-6.0..6.0))).collect();
    let config = HistogramConfig {
        max_buckets: 160,
        ..Default::default()
    };
    let h = build(&data, config);
    assert!(h.scale() < 6);
    let idx: Vec<i32> = h.positive_buckets().map(|(i, _)| i).collect();
    assert!(idx[idx.len() - 1] - idx[0] < 160);
    assert_eq!(h.positive_buckets().map(|(_, c)| c).sum::<u64>(), 50_000);
    assert_quantiles_within_bound(&h, &data, &QS);
    // Downscaling is lossless with respect to a histogram built at that scale.
    let direct = build(
        &data,
        HistogramConfig {
            scale: h.scale(),
            max_buckets: 10_000,
            ..config
        },
    );
    assert_same_buckets(&h, &direct);
}

#[test]
fn tiny_max_buckets_and_extreme_values_do_not_panic() {
    let config = HistogramConfig {
        scale: MAX_SCALE,
        max_buckets: 2,
        zero_threshold: 0.0,
        exemplar_scale_reduction: 0,
        max_exemplars: MIN_MAX_EXEMPLARS,
    };
    let mut h = ExpHistogram::new(config);
    let mut r = rng(28);
    let values = [
        f64::MAX,
        f64::MIN,
        f64::from_bits(1),
        -f64::from_bits(1),
        0.0,
        1.0,
        f64::MIN_POSITIVE,
    ];
    for &v in &values {
        h.record(v, Some(exemplars::ex(1)), &mut r);
    }
    assert_eq!(h.scale(), MIN_SCALE);
    for q in [0.0, 0.3, 0.5, 0.7, 1.0] {
        let est = h.quantile(q).unwrap();
        assert!(est.value.is_finite());
    }
    assert_eq!(h.quantile(1.0).unwrap().value, f64::MAX);
    assert_eq!(h.quantile(0.0).unwrap().value, f64::MIN);
    for t in [f64::MIN, -1.0, 0.0, 1e-320, 1.0, 1e300, f64::MAX] {
        let _ = h.count_above(t);
        let _ = h.exemplar_above(t);
    }
    let mut m = h.clone();
    m.merge(&h, &mut r);
    assert_eq!(m.count(), 2 * values.len() as u64);
}

#[test]
fn clear_keeps_capacity_and_record_does_not_allocate_in_range() {
    let data = lognormal(10_000, 29);
    let mut h = build(&data, HistogramConfig::default());
    let bytes = h.heap_bytes();
    assert!(
        bytes >= h.positive_buckets().count(),
        "at least a byte per occupied bucket"
    );
    let mut r = rng(30);
    for &v in &data {
        h.record(v, None, &mut r);
    }
    assert_eq!(h.heap_bytes(), bytes, "values inside the range must not grow storage");
    h.clear();
    assert!(h.is_empty() && h.positive_buckets().next().is_none());
    assert_eq!((h.scale(), h.heap_bytes(), h.count_above(0.0)), (6, bytes, 0));
}

#[test]
fn weighted_records_equal_repeated_records() {
    let mut rng = SmallRng::seed_from_u64(3);
    let mut repeated = ExpHistogram::default();
    let mut weighted = ExpHistogram::default();
    for (value, n) in [(0.25, 3u64), (1.5, 10), (-2.0, 2), (0.0, 4), (7.0, 1)] {
        for _ in 0..n {
            repeated.record(value, None, &mut rng);
        }
        weighted.record_n(value, n, None, &mut rng);
    }
    weighted.record_n(99.0, 0, None, &mut rng);
    assert_eq!(weighted.count(), repeated.count());
    assert_eq!(weighted.zero_count(), 4);
    assert_eq!(
        weighted.positive_buckets().collect::<Vec<_>>(),
        repeated.positive_buckets().collect::<Vec<_>>()
    );
    assert_eq!(
        weighted.negative_buckets().collect::<Vec<_>>(),
        repeated.negative_buckets().collect::<Vec<_>>()
    );
    assert!((weighted.sum() - repeated.sum()).abs() < 1e-12);
    assert!((weighted.stdev().unwrap() - repeated.stdev().unwrap()).abs() < 1e-12);
    assert_eq!(weighted.max(), Some(7.0));
    assert_eq!(
        weighted.quantile(0.5).unwrap().value,
        repeated.quantile(0.5).unwrap().value
    );
}
