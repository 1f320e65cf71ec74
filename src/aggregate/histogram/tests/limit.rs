//! The reservoir limit (`max_exemplars`): reservoirs coarsen only past it,
//! stay uniform across the coarsening, and keep quantile exemplars in the
//! coarse bucket around the quantile's.

use rand_distr::{Distribution, LogNormal};

use super::exemplars::ex;
use super::rng;
use crate::aggregate::histogram::*;

fn limited(max: u32) -> HistogramConfig {
    HistogramConfig {
        max_exemplars: max,
        ..HistogramConfig::default()
    }
}

/// Upper bound of scale-6 bucket `i`: a value recorded into exactly that bucket.
fn in_bucket(i: i32) -> f64 {
    bucket_bounds(6, i).1
}

#[test]
fn reservoirs_coarsen_only_past_the_limit_and_then_fit_it() {
    let mut r = rng(60);
    let mut h = ExpHistogram::new(limited(8));
    for i in 0..8 {
        h.record(in_bucket(100 + 3 * i), Some(ex(i as u8 + 1)), &mut r);
    }
    assert_eq!(h.exemplar_shift(), 0, "eight buckets fit a limit of eight");
    assert_eq!(h.exemplars().len(), 8);
    // Untraced samples never count against the limit.
    h.record(in_bucket(400), None, &mut r);
    assert_eq!(h.exemplar_shift(), 0);
    h.record(in_bucket(200), Some(ex(9)), &mut r);
    let shift = h.exemplar_shift();
    assert!(shift > 0, "a ninth reservoir coarsens");
    let kept = h.exemplars();
    assert!(kept.len() <= 8, "{} reservoirs", kept.len());
    // Every traced sample is still represented by its coarse bucket's reservoir.
    let coarse = |v: f64| bucket_index(h.scale() - shift as i8, v);
    let mut keys: Vec<i32> = kept.iter().map(|(_, e)| coarse(e.value)).collect();
    keys.dedup();
    assert_eq!(keys.len(), kept.len(), "one reservoir per coarse bucket");
    for i in 0..8 {
        assert!(
            keys.contains(&coarse(in_bucket(100 + 3 * i))),
            "bucket {i} lost its reservoir"
        );
    }
    assert!(keys.contains(&coarse(in_bucket(200))));
    // The histogram itself stays at its scale: only the exemplar link coarsened.
    assert_eq!(h.scale(), 6);
    assert_eq!(h.count(), 10);
}

#[test]
fn no_limit_keeps_one_reservoir_per_bucket() {
    let mut r = rng(61);
    let mut h = ExpHistogram::new(limited(0));
    for i in 0..500 {
        h.record(in_bucket(i), Some(ex(1)), &mut r);
    }
    assert_eq!((h.exemplar_shift(), h.exemplars().len()), (0, 500));
}

#[test]
fn merged_pairs_keep_each_traced_sample_uniformly() {
    // Buckets 20 and 21 merge at the first coarsening: one traced sample in
    // 20 before it, one in 21 before it and two in 21 after it. Each of the
    // four must be kept one time in four.
    let mut r = rng(62);
    let mut counts = [0u64; 4];
    for _ in 0..16_000 {
        let mut h = ExpHistogram::new(limited(8));
        h.record(in_bucket(20), Some(ex(1)), &mut r);
        h.record(in_bucket(21), Some(ex(2)), &mut r);
        for i in 0..7 {
            h.record(in_bucket(40 + 2 * i), Some(ex(9)), &mut r);
        }
        assert_eq!(h.exemplar_shift(), 1);
        h.record(in_bucket(21), Some(ex(3)), &mut r);
        h.record(in_bucket(21), Some(ex(4)), &mut r);
        let quantile = h.quantile(0.1).unwrap();
        let kept = quantile.exemplar.expect("the pair's reservoir").trace_id[0];
        counts[usize::from(kept) - 1] += 1;
    }
    for c in counts {
        assert!((3_700..4_300).contains(&c), "{counts:?}");
    }
}

#[test]
fn a_window_of_100_lognormal_traced_samples_keeps_at_most_the_default_limit() {
    let mut r = rng(63);
    let shape = LogNormal::new((0.05f64).ln(), 0.5).unwrap();
    let mut h = ExpHistogram::default();
    for i in 0..100 {
        h.record(shape.sample(&mut r), Some(ex(i as u8 + 1)), &mut r);
    }
    let kept = h.exemplars().len();
    assert!(kept <= HistogramConfig::default().max_exemplars as usize, "{kept}");
    assert!(h.exemplar_shift() > 0, "100 spread samples fill more than 24 buckets");
    let shift = h.exemplar_shift() as i8;
    for q in [0.5, 0.9, 0.99, 0.999] {
        let estimate = h.quantile(q).unwrap();
        let BucketRef::Positive(i) = estimate.bucket else {
            panic!("positive samples only")
        };
        let e = estimate
            .exemplar
            .expect("every coarse bucket holding a quantile saw a traced sample");
        assert_eq!(bucket_index(h.scale() - shift, e.value), i >> shift, "q={q}");
    }
}

#[test]
fn merging_keys_both_sides_by_the_coarser_shift() {
    let mut r = rng(64);
    let mut fine = ExpHistogram::new(limited(8));
    let mut coarse = ExpHistogram::new(limited(8));
    for i in 0..4 {
        fine.record(in_bucket(10 * i), Some(ex(1)), &mut r);
    }
    for i in 0..64 {
        coarse.record(in_bucket(i), Some(ex(2)), &mut r);
    }
    assert_eq!(fine.exemplar_shift(), 0);
    assert!(coarse.exemplar_shift() >= 3);
    let mut merged = fine.clone();
    merged.merge(&coarse, &mut r);
    assert!(merged.exemplar_shift() >= coarse.exemplar_shift());
    assert!(merged.exemplars().len() <= 8);
    assert_eq!(merged.count(), 68);
    let shift = merged.exemplar_shift() as i8;
    // One reservoir per coarse bucket.
    let mut keys: Vec<i32> = merged
        .exemplars()
        .iter()
        .map(|(_, e)| bucket_index(merged.scale() - shift, e.value))
        .collect();
    keys.dedup();
    assert_eq!(keys.len(), merged.exemplars().len());
    // The other way round gives the same keying.
    let mut back = coarse.clone();
    back.merge(&fine, &mut r);
    assert_eq!(back.exemplar_shift(), merged.exemplar_shift());
}

#[test]
fn the_limit_is_validated_and_sanitized() {
    assert_eq!(limited(0).validate(), Ok(()));
    assert_eq!(limited(MIN_MAX_EXEMPLARS).validate(), Ok(()));
    let error = limited(7).validate().unwrap_err();
    assert_eq!(error, HistogramError::TooFewExemplars(7));
    assert!(error.to_string().contains("max_exemplars 7"), "{error}");
    assert_eq!(ExpHistogram::new(limited(1)).config().max_exemplars, MIN_MAX_EXEMPLARS);
}
