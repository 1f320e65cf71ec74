//! Compact storage: exact counts past every cell width, and exemplar
//! reservoirs shared by `2^n` buckets (`exemplar_scale_reduction`).

use rand::Rng;

use super::exemplars::ex;
use super::{bimodal, rng};
use crate::aggregate::exemplar::Exemplar;
use crate::aggregate::histogram::*;

/// A fixed reduction of `n`: no reservoir limit coarsens it further.
fn reduced(n: u8) -> HistogramConfig {
    HistogramConfig {
        exemplar_scale_reduction: n,
        max_exemplars: 0,
        ..HistogramConfig::default()
    }
}

/// Sign and index of a bucket other than the zero bucket.
fn signed_index(bucket: BucketRef) -> (bool, i32) {
    match bucket {
        BucketRef::Positive(i) => (false, i),
        BucketRef::Negative(i) => (true, i),
        BucketRef::Zero => panic!("no zeros recorded"),
    }
}

#[test]
fn counts_past_u32_are_exact_through_record_merge_and_reads() {
    let mut r = rng(50);
    let mut h = ExpHistogram::default();
    let big = u64::from(u32::MAX);
    // One byte, then two, four and eight per count.
    h.record_n(1.0, 200, None, &mut r);
    h.record_n(1.0, 100, None, &mut r);
    h.record_n(2.0, 70_000, None, &mut r);
    h.record_n(1.0, big, None, &mut r);
    h.record_n(1.0, big, None, &mut r);
    h.record_n(4.0, 1, Some(ex(1)), &mut r);
    let ones = 300 + 2 * big;
    let expected = vec![
        (bucket_index(6, 1.0), ones),
        (bucket_index(6, 2.0), 70_000),
        (bucket_index(6, 4.0), 1),
    ];
    assert_eq!(h.positive_buckets().collect::<Vec<_>>(), expected);
    assert_eq!(h.count(), ones + 70_001);
    assert_eq!(h.count_above(1.5), 70_001);
    assert_eq!(h.count_above(0.5), h.count());
    assert_eq!(
        h.quantile(0.5).unwrap().bucket,
        BucketRef::Positive(bucket_index(6, 1.0))
    );
    let mut twice = h.clone();
    twice.merge(&h, &mut r);
    let doubled: Vec<(i32, u64)> = expected.iter().map(|&(i, c)| (i, 2 * c)).collect();
    assert_eq!(twice.positive_buckets().collect::<Vec<_>>(), doubled);
    assert_eq!(twice.count_above(3.0), 2);
    assert_eq!(twice.quantile(1.0).unwrap().exemplar.map(|e| e.value), Some(4.0));
    // Downscaling adds neighbours' counts: a wide count absorbs narrow ones.
    let mut narrow = ExpHistogram::new(HistogramConfig {
        max_buckets: 4,
        ..HistogramConfig::default()
    });
    narrow.record_n(1.0, 255, None, &mut r);
    narrow.record_n(1.0f64.next_up(), 255, None, &mut r);
    narrow.record_n(1.5, big, None, &mut r);
    assert!(narrow.scale() < 6);
    let total: u64 = narrow.positive_buckets().map(|(_, c)| c).sum();
    assert_eq!(total, 510 + big);
}

#[test]
fn a_quantile_takes_the_exemplar_of_its_coarse_bucket() {
    // Bucket 8 and 9 at scale 6 share bucket 1 at scale 3 (n = 3).
    let (lo8, hi8) = bucket_bounds(6, 8);
    let (lo9, hi9) = bucket_bounds(6, 9);
    let (lo16, _) = bucket_bounds(6, 16);
    let mut r = rng(51);
    for (n, expected) in [(0, None), (3, Some(7))] {
        let mut h = ExpHistogram::new(reduced(n));
        h.record((lo8 + hi8) / 2.0, Some(ex(7)), &mut r);
        for _ in 0..10 {
            h.record((lo9 + hi9) / 2.0, None, &mut r);
        }
        // Bucket 16 is in the next coarse bucket: its exemplar must not be lent.
        h.record(lo16.next_up(), Some(ex(9)), &mut r);
        let p50 = h.quantile(0.5).unwrap();
        assert_eq!(p50.bucket, BucketRef::Positive(9), "n={n}");
        assert_eq!(p50.exemplar.map(|e| e.trace_id[0]), expected, "n={n}");
        assert_eq!(h.quantile(0.0).unwrap().exemplar.map(|e| e.trace_id[0]), Some(7));
        assert_eq!(h.quantile(1.0).unwrap().exemplar.map(|e| e.trace_id[0]), Some(9));
        let buckets: Vec<BucketRef> = h.exemplars().into_iter().map(|(b, _)| b).collect();
        assert_eq!(buckets, vec![BucketRef::Positive(8), BucketRef::Positive(16)], "n={n}");
    }
}

#[test]
fn coarse_exemplars_lie_in_the_coarse_bucket_of_every_quantile() {
    let data = bimodal(50_000, 52);
    for n in [1u8, 3, 6] {
        let mut h = ExpHistogram::new(reduced(n));
        let mut r = rng(53);
        for (i, &v) in data.iter().enumerate() {
            let v = if i % 5 == 0 { -v } else { v };
            let traced = r.random_bool(0.05).then(|| ex((i % 200) as u8 + 1));
            h.record(v, traced, &mut r);
        }
        let mut found = 0;
        let mut outside_fine = 0;
        for q in (0..=2000).map(|i| f64::from(i) / 2000.0) {
            let est = h.quantile(q).unwrap();
            let Some(e) = est.exemplar else { continue };
            found += 1;
            let (negative, i) = signed_index(est.bucket);
            assert_eq!(e.value < 0.0, negative, "n={n} q={q}");
            let coarse = h.scale() - n as i8;
            assert_eq!(bucket_index(coarse, e.value.abs()), i >> n, "n={n} q={q} {e:?}");
            outside_fine += usize::from(bucket_index(h.scale(), e.value.abs()) != i);
        }
        assert!(found > 1900, "n={n}: {found} quantiles with an exemplar");
        assert!(
            outside_fine > 0,
            "n={n}: reservoirs are shared, so some lie beside the fine bucket"
        );
        // One reservoir per coarse bucket, each exemplar reported in its own fine bucket.
        let mut coarse_keys = Vec::new();
        for (bucket, e) in h.exemplars() {
            let (negative, i) = signed_index(bucket);
            assert_eq!((negative, i), (e.value < 0.0, bucket_index(h.scale(), e.value.abs())));
            coarse_keys.push((negative, i >> n));
        }
        let kept = coarse_keys.len();
        coarse_keys.dedup();
        assert_eq!(coarse_keys.len(), kept, "n={n}: two reservoirs for one coarse bucket");
    }
}

#[test]
fn a_coarse_reservoir_keeps_each_traced_sample_of_its_buckets_uniformly() {
    let mut r = rng(54);
    let mut counts = [0u32; 8];
    // Tag t in fine bucket 8 + t: all eight share the coarse bucket at n = 3.
    let values: Vec<f64> = (0..8).map(|t| bucket_bounds(6, 8 + t).1).collect();
    for _ in 0..16_000 {
        let mut h = ExpHistogram::new(reduced(3));
        for (t, &v) in values.iter().enumerate() {
            h.record(v, Some(ex(t as u8 + 1)), &mut r);
        }
        let kept = h.exemplars();
        assert_eq!(kept.len(), 1);
        counts[usize::from(kept[0].1.trace_id[0]) - 1] += 1;
    }
    for c in counts {
        assert!((1_700..2_300).contains(&c), "{counts:?}");
    }
}

#[test]
fn downscaling_and_merging_keep_reservoirs_on_coarse_keys() {
    let mut r = rng(55);
    let config = HistogramConfig {
        max_buckets: 64,
        ..reduced(2)
    };
    let mut h = ExpHistogram::new(config);
    let mut per_bucket = ExpHistogram::new(HistogramConfig {
        max_buckets: 64,
        ..HistogramConfig::default()
    });
    for i in 0..400 {
        let v = 1.0 + f64::from(i) / 100.0;
        h.record(v, Some(ex((i % 250) as u8 + 1)), &mut r);
        per_bucket.record(v * 1.001, Some(ex(251)), &mut r);
    }
    assert!(h.scale() < 6, "the range forced a downscale");
    let check = |h: &ExpHistogram| {
        let keys: Vec<i32> = h
            .exemplars()
            .iter()
            .map(|(_, e)| bucket_index(h.scale() - 2, e.value))
            .collect();
        let mut unique = keys.clone();
        unique.dedup();
        assert_eq!(keys, unique, "one reservoir per coarse bucket");
        for q in [0.1, 0.5, 0.9, 0.99] {
            let est = h.quantile(q).unwrap();
            let (_, i) = signed_index(est.bucket);
            let e = est.exemplar.expect("every coarse bucket saw traced samples");
            assert_eq!(bucket_index(h.scale() - 2, e.value), i >> 2, "q={q}");
        }
    };
    check(&h);
    // The other histogram keeps one reservoir per bucket: merged in, they are
    // folded into `h`'s coarse reservoirs.
    h.merge(&per_bucket, &mut r);
    check(&h);
    assert_eq!(h.count(), 800);
    // The other way round, `per_bucket` keeps one reservoir per bucket.
    per_bucket.merge(&h, &mut r);
    for (bucket, e) in per_bucket.exemplars() {
        assert_eq!(bucket, BucketRef::Positive(bucket_index(per_bucket.scale(), e.value)));
    }
}

#[test]
fn reduction_is_validated_and_sanitized() {
    assert_eq!(reduced(18).validate(), Ok(()));
    let error = reduced(19).validate().unwrap_err();
    assert_eq!(error, HistogramError::ExemplarScaleReductionOutOfRange(19));
    assert!(error.to_string().contains("19"), "{error}");
    assert_eq!(ExpHistogram::new(reduced(40)).config().exemplar_scale_reduction, 18);
}

#[test]
fn prefetch_hints_accept_any_value_and_change_nothing() {
    let mut rng = rng(11);
    let mut histogram = ExpHistogram::new(reduced(2));
    let odd_values = [
        0.0,
        -0.0,
        1e-300,
        -3.5,
        7.25,
        1e300,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ];
    for value in odd_values {
        // Empty sides first: nothing to ask for, nothing to index out of.
        histogram.prefetch_record(value, true);
        histogram.prefetch_reservoir(value);
    }
    for (i, value) in [0.5, 2.0, -4.0, 1_000.0].into_iter().enumerate() {
        histogram.record_n(value, 1, Some(ex(i as u8)), &mut rng);
    }
    let before = format!("{histogram:?}");
    for value in odd_values.into_iter().chain([0.5, 2.0, -4.0, 1_000.0, 1e6]) {
        histogram.prefetch_record(value, true);
        histogram.prefetch_record(value, false);
        histogram.prefetch_reservoir(value);
    }
    assert_eq!(format!("{histogram:?}"), before);
}

#[test]
fn the_negative_side_and_the_zero_exemplar_are_allocated_on_first_use() {
    let mut r = rng(56);
    let mut h = ExpHistogram::new(HistogramConfig {
        zero_threshold: 0.001,
        ..HistogramConfig::default()
    });
    h.record(2.0, Some(ex(1)), &mut r);
    assert!(h.negative.is_none() && h.zero_exemplar.is_none());
    assert_eq!(h.negative_buckets().count(), 0);
    assert_eq!(h.count_above(-1.0), 1);
    let mut other = h.clone();
    other.record(-3.0, Some(ex(2)), &mut r);
    other.record(0.0, Some(ex(3)), &mut r);
    assert!(other.negative.is_some() && other.zero_exemplar.is_some());
    // Merged in, the other histogram's negative side and zero exemplar arrive whole.
    h.merge(&other, &mut r);
    assert_eq!(
        h.negative_buckets().collect::<Vec<_>>(),
        vec![(bucket_index(6, 3.0), 1)]
    );
    assert_eq!(
        h.quantile(0.0).unwrap().exemplar,
        Some(Exemplar { value: -3.0, ..ex(2) })
    );
    assert_eq!(
        h.quantile(0.4).unwrap().exemplar,
        Some(Exemplar { value: 0.0, ..ex(3) })
    );
    assert_eq!(h.count(), 4);
    h.clear();
    assert_eq!((h.count(), h.negative_buckets().count()), (0, 0));
    assert!(h.zero_exemplar.is_none());
}
