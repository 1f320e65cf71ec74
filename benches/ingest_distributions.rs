//! Engine ingest of distribution observations: 100,000 series (all with an
//! open window before timing starts), log-normal values (median 50 ms,
//! sigma 0.6), every sample with a trace and span ID, 1,000-sample batches,
//! keys Zipf(1.0)-skewed (and uniform, for comparison). Single-threaded: the
//! per-core figure. `zipf` and `uniform` meet mature windows (prefilled);
//! `zipf_window_cycle` moves the clock one window on every 256k samples
//! (flush untimed), so windows and their histograms are filled from empty.
//! `filled/obs_100` and `filled/obs_50000` cycle windows that each series
//! fills with exactly 100 (10,000 series) or 50,000 (20 series) traced
//! samples, shuffled across series: ingest at those window sizes, timed by
//! the thread's CPU time (what a core spends, also on a shared machine).

mod common;

use std::hint::black_box;

use common::{Points, BATCH, NOW_MS};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tailfold::model::{IngestBatch, Kind};

/// The service binary's allocator (`src/main.rs`), so the figures are the
/// service's: mimalloc also asks for transparent huge pages for its arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SERIES: usize = 100_000;
/// Distinct pre-built batches cycled through (256k samples).
const BATCHES: usize = 256;

fn bench(c: &mut Criterion) {
    let common::Loaded { engine, zipf, uniform } = common::loaded(
        SERIES,
        common::distribution_labels,
        Kind::Distribution,
        Points::TracedLatencies,
        BATCHES,
        5,
    );
    // Prefill: one pass over every batch, so timed calls meet mature windows
    // (every bucket they touch exists) and the figure does not drift with the
    // number of iterations; `zipf_window_cycle` covers windows filled from empty.
    common::ingest_all(&engine, &zipf, NOW_MS);
    common::ingest_all(&engine, &uniform, NOW_MS);
    eprintln!(
        "ingest_distributions: {SERIES} series loaded; zipf batches: {:.0} series/batch, uniform: {:.0} series/batch",
        common::series_per_batch(&zipf),
        common::series_per_batch(&uniform)
    );

    let mut group = c.benchmark_group("ingest_distributions_traced_100k");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, batches) in [("zipf", &zipf), ("uniform", &uniform)] {
        let mut next = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                let outcome = engine.ingest(&batches[next % BATCHES], NOW_MS).expect("open");
                next += 1;
                black_box(outcome)
            })
        });
    }
    // Window life cycle: every 256k samples the clock moves to the next window
    // (flush untimed), so windows are opened and filled from empty.
    let untimed = common::without_timestamps(&zipf);
    let mut cycle = common::WindowCycle::new();
    group.bench_function("zipf_window_cycle", |b| {
        b.iter_custom(|iters| cycle.run(&engine, &untimed, iters))
    });
    group.finish();
}

/// One window's batches (untimestamped) in which each of `series` series
/// gets exactly `observations` traced samples, shuffled across series.
fn filled_window(series: usize, observations: usize) -> Vec<IngestBatch> {
    let labels = common::label_table(series, common::distribution_labels);
    let mut indices: Vec<usize> = (0..series).flat_map(|i| std::iter::repeat_n(i, observations)).collect();
    indices.shuffle(&mut rand::rngs::SmallRng::seed_from_u64(3));
    let batches = common::batches(&labels, &indices, Kind::Distribution, Points::TracedLatencies, 11);
    common::without_timestamps(&batches)
}

fn filled(c: &mut Criterion) {
    let mut group = c.benchmark_group("filled");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (series, observations) in [(10_000, 100), (20, 50_000)] {
        let engine = common::engine();
        let window = filled_window(series, observations);
        let mut cycle = common::WindowCycle::new();
        group.bench_function(format!("obs_{observations}"), |b| {
            b.iter_custom(|iters| cycle.run_cpu(&engine, &window, iters))
        });
    }
    group.finish();
}

criterion_group!(benches, bench, filled);
criterion_main!(benches);
