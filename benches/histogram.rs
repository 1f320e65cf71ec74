//! Hot-path costs of the exponential histogram: record, merge, quantile read.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use rand_distr::{Distribution, LogNormal};
use tailfold::aggregate::exemplar::Exemplar;
use tailfold::aggregate::histogram::ExpHistogram;

/// The service binary's allocator (`src/main.rs`), so the figures are the
/// service's: mimalloc also asks for transparent huge pages for its arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const N: usize = 1 << 16;

fn values(seed: u64) -> Vec<f64> {
    let dist = LogNormal::new(0.05f64.ln(), 0.6).unwrap();
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..N).map(|_| dist.sample(&mut rng)).collect()
}

fn filled(seed: u64) -> ExpHistogram {
    let mut h = ExpHistogram::default();
    let mut rng = SmallRng::seed_from_u64(seed);
    let ex = Exemplar {
        trace_id: [1; 16],
        span_id: [2; 8],
        value: 0.0,
        timestamp_ms: 0,
    };
    for (i, v) in values(seed).into_iter().enumerate() {
        h.record(v, (i % 100 == 0).then_some(ex), &mut rng);
    }
    h
}

fn bench(c: &mut Criterion) {
    let data = values(1);
    let mut rng = SmallRng::seed_from_u64(2);
    let mut h = filled(3);
    let mut i = 0;
    c.bench_function("record", |b| {
        b.iter(|| {
            h.record(black_box(data[i & (N - 1)]), None, &mut rng);
            i += 1;
        })
    });
    let ex = Exemplar {
        trace_id: [1; 16],
        span_id: [2; 8],
        value: 0.0,
        timestamp_ms: 0,
    };
    c.bench_function("record_with_exemplar", |b| {
        b.iter(|| {
            h.record(black_box(data[i & (N - 1)]), Some(ex), &mut rng);
            i += 1;
        })
    });
    let other = filled(4);
    let mut acc = filled(5);
    c.bench_function("merge", |b| b.iter(|| acc.merge(black_box(&other), &mut rng)));
    let h = filled(6);
    c.bench_function("quantile_p99", |b| b.iter(|| h.quantile(black_box(0.99))));
    c.bench_function("count_above", |b| b.iter(|| h.count_above(black_box(0.2))));
}

criterion_group!(benches, bench);
criterion_main!(benches);
