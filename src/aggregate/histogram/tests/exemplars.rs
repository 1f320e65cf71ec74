//! Exemplar reservoir tests: placement, uniformity, and no borrowing.

use rand::Rng;

use super::{bimodal, rng};
use crate::aggregate::exemplar::{Exemplar, ExemplarSlot};
use crate::aggregate::histogram::*;

/// An exemplar tagged by its trace id's first byte.
pub(crate) fn ex(tag: u8) -> Exemplar {
    let mut trace_id = [0; 16];
    trace_id[0] = tag;
    Exemplar {
        trace_id,
        span_id: [tag; 8],
        value: f64::NAN,
        timestamp_ms: i64::from(tag),
    }
}

/// Asserts `counts` (indexed by tag-1) is uniform: each within ±15% of the
/// mean and Pearson's chi-square below the 0.999 quantile for 9 dof (27.88).
fn assert_uniform(counts: &[u64]) {
    let total: u64 = counts.iter().sum();
    let expected = total as f64 / counts.len() as f64;
    let chi2: f64 = counts.iter().map(|&c| (c as f64 - expected).powi(2) / expected).sum();
    for &c in counts {
        assert!((c as f64 - expected).abs() <= 0.15 * expected, "{counts:?}");
    }
    assert!(chi2 < 27.88, "chi2 {chi2} for {counts:?}");
}

fn kept_tag(h: &ExpHistogram) -> usize {
    let mut all = h.exemplars().into_iter();
    let (_, e) = all.next().expect("one exemplar");
    assert!(all.next().is_none(), "expected a single bucket");
    usize::from(e.trace_id[0]) - 1
}

#[test]
fn reservoir_keeps_each_traced_sample_uniformly() {
    let mut r = rng(40);
    let mut counts = [0u64; 10];
    for _ in 0..20_000 {
        let mut h = ExpHistogram::default();
        for tag in 1..=10u8 {
            // Untraced samples in the same bucket must not disturb the odds.
            h.record(1.5, None, &mut r);
            h.record(1.5 + f64::from(tag) * 1e-6, Some(ex(tag)), &mut r);
        }
        counts[kept_tag(&h)] += 1;
    }
    assert_uniform(&counts);
}

#[test]
fn merged_reservoirs_stay_uniform() {
    let mut r = rng(41);
    let mut counts = [0u64; 10];
    for _ in 0..20_000 {
        let mut a = ExpHistogram::default();
        let mut b = ExpHistogram::default();
        for tag in 1..=3u8 {
            a.record(1.5, Some(ex(tag)), &mut r);
        }
        for tag in 4..=10u8 {
            b.record(1.5, Some(ex(tag)), &mut r);
        }
        a.merge(&b, &mut r);
        counts[kept_tag(&a)] += 1;
    }
    assert_uniform(&counts);
}

#[test]
fn downscaled_reservoirs_stay_uniform() {
    let (lo, hi) = bucket_bounds(6, 0);
    assert_eq!(bucket_index(6, hi.next_up()), 1);
    let config = HistogramConfig {
        max_buckets: 4,
        ..Default::default()
    };
    let mut r = rng(42);
    let mut counts = [0u64; 10];
    for _ in 0..20_000 {
        let mut h = ExpHistogram::new(config);
        // Tags 1..=2 in bucket 0, 3..=10 in bucket 1; a far value then forces
        // the two buckets into one.
        for tag in 1..=10u8 {
            let v = if tag <= 2 { (lo + hi) / 2.0 } else { hi.next_up() };
            h.record(v, Some(ex(tag)), &mut r);
        }
        h.record(4.0, None, &mut r);
        assert!(h.scale() < 6);
        let tag = h.exemplars().into_iter().next().unwrap().1.trace_id[0];
        counts[usize::from(tag) - 1] += 1;
    }
    assert_uniform(&counts);
}

#[test]
fn slot_absorb_weights_by_seen() {
    let mut r = rng(43);
    let mut kept_first = 0;
    for _ in 0..20_000 {
        let mut a = ExemplarSlot {
            index: 0,
            seen: 1,
            exemplar: ex(1),
        };
        let b = ExemplarSlot {
            index: 0,
            seen: 3,
            exemplar: ex(2),
        };
        a.absorb(&b, &mut r);
        assert_eq!(a.seen, 4);
        kept_first += u32::from(a.exemplar.trace_id[0] == 1);
    }
    assert!((4_500..5_500).contains(&kept_first), "{kept_first}");
}

#[test]
fn quantile_exemplars_lie_in_their_bucket() {
    let data = bimodal(50_000, 44);
    // No reservoir limit: one exemplar per bucket, however many buckets fill.
    let mut h = ExpHistogram::new(HistogramConfig {
        max_exemplars: 0,
        ..HistogramConfig::default()
    });
    let mut r = rng(45);
    for (i, &v) in data.iter().enumerate() {
        let v = if i % 5 == 0 { -v } else { v };
        let traced = r.random_bool(0.05).then(|| ex((i % 200) as u8 + 1));
        h.record(v, traced, &mut r);
    }
    let mut found = 0;
    for q in (0..=2000).map(|i| f64::from(i) / 2000.0) {
        let est = h.quantile(q).unwrap();
        let Some(e) = est.exemplar else { continue };
        found += 1;
        let (i, negative) = match est.bucket {
            BucketRef::Positive(i) => (i, false),
            BucketRef::Negative(i) => (i, true),
            BucketRef::Zero => panic!("no zeros recorded"),
        };
        let (l, u) = bucket_bounds(h.scale(), i);
        assert_eq!(e.value < 0.0, negative);
        assert!(l < e.value.abs() && e.value.abs() <= u, "{e:?} outside ({l}, {u}]");
    }
    assert!(found > 1000, "too few exemplars: {found}");
    for (bucket, e) in h.exemplars() {
        let i = bucket_index(h.scale(), e.value);
        let expected = if e.value > 0.0 {
            BucketRef::Positive(i)
        } else {
            BucketRef::Negative(i)
        };
        assert_eq!(bucket, expected);
    }
}

#[test]
fn no_exemplar_borrowed_from_a_neighbour() {
    let mut h = ExpHistogram::default();
    let mut r = rng(46);
    for _ in 0..100 {
        h.record(1.0, None, &mut r);
    }
    h.record(3.0, Some(ex(7)), &mut r);
    h.record(0.0, Some(ex(8)), &mut r);
    h.record(-2.0, Some(ex(9)), &mut r);
    let p50 = h.quantile(0.5).unwrap();
    assert_eq!(p50.bucket, BucketRef::Positive(bucket_index(6, 1.0)));
    assert_eq!(p50.exemplar, None);
    let top = h.quantile(1.0).unwrap();
    assert_eq!(top.exemplar.map(|e| (e.trace_id[0], e.value)), Some((7, 3.0)));
    let zero = h.quantile(1.5 / 103.0).unwrap();
    assert_eq!(
        (zero.bucket, zero.exemplar.map(|e| e.trace_id[0])),
        (BucketRef::Zero, Some(8))
    );
    assert_eq!(h.quantile(0.0).unwrap().exemplar.map(|e| e.trace_id[0]), Some(9));
}

#[test]
fn exemplar_above_picks_highest_matching_bucket() {
    let mut h = ExpHistogram::default();
    let mut r = rng(47);
    assert_eq!(h.exemplar_above(0.0), None);
    for (v, tag) in [(-5.0, 1), (0.0, 2), (0.2, 3), (1.0, 4), (2.5, 5)] {
        h.record(v, Some(ex(tag)), &mut r);
    }
    h.record(9.0, None, &mut r);
    let tag = |t: f64| h.exemplar_above(t).map(|e| e.trace_id[0]);
    assert_eq!(tag(1.0), Some(5));
    assert_eq!(tag(2.5), None);
    assert_eq!(tag(-1.0), Some(5));
    assert_eq!(tag(f64::NEG_INFINITY), Some(5));
    let mut low = ExpHistogram::default();
    for (v, t) in [(-5.0, 1), (0.0, 2), (0.2, 3)] {
        low.record(v, Some(ex(t)), &mut r);
    }
    assert_eq!(low.exemplar_above(0.1).map(|e| e.trace_id[0]), Some(3));
    assert_eq!(low.exemplar_above(-1.0).map(|e| e.trace_id[0]), Some(3));
    assert_eq!(low.exemplar_above(-0.1).map(|e| e.trace_id[0]), Some(3));
    assert_eq!(low.exemplar_above(0.3), None);
    let mut neg = ExpHistogram::default();
    neg.record(-5.0, Some(ex(1)), &mut r);
    neg.record(-0.5, Some(ex(2)), &mut r);
    assert_eq!(neg.exemplar_above(-1.0).map(|e| e.trace_id[0]), Some(2));
    assert_eq!(neg.exemplar_above(-6.0).map(|e| e.trace_id[0]), Some(2));
    assert!(
        ex(3).has_span_id()
            && !Exemplar {
                span_id: [0; 8],
                ..ex(3)
            }
            .has_span_id()
    );
}

#[test]
fn exemplars_above_are_the_slowest_buckets_first_and_bounded() {
    let mut h = ExpHistogram::default();
    let mut r = rng(5);
    // Tags 1..=9 at 0.1 .. 0.9 s, each in its own bucket at scale 6.
    for tag in 1..=9u8 {
        h.record(f64::from(tag) / 10.0, Some(ex(tag)), &mut r);
    }
    h.record(0.95, None, &mut r); // untraced: counted, never selected
    let tags = |list: Vec<Exemplar>| list.iter().map(|e| e.trace_id[0]).collect::<Vec<_>>();
    assert_eq!(
        tags(h.exemplars_above(0.5, 10)),
        vec![9, 8, 7, 6],
        "beyond 0.5, slowest first"
    );
    assert_eq!(tags(h.exemplars_above(0.5, 2)), vec![9, 8], "at most the limit");
    assert_eq!(tags(h.exemplars_above(0.95, 10)), Vec::<u8>::new());
    assert_eq!(h.exemplars_above(0.5, 1).first(), h.exemplar_above(0.5).as_ref());
    for e in h.exemplars_above(0.0, 10) {
        assert_eq!(e.value, f64::from(e.trace_id[0]) / 10.0, "each keeps its own value");
    }
}
