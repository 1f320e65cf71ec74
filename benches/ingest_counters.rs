//! Engine ingest of counter deltas: 1,000,000 distinct series (all with an open
//! window before timing starts), 1,000-sample batches, keys Zipf(1.0)-skewed
//! (and uniform, for comparison). Batches are built before timing; the engine
//! still hashes every series' labels per batch, as in service.
//!
//! `zipf`, `uniform` and `zipf_hot_batch` (the batch cloned just before the
//! call, so it is in cache like a just-decoded request) run on one thread:
//! the per-core figure. `zipf_2threads` runs two ingest threads on one engine
//! (the machine figure). `zipf_window_cycle` moves the clock one window on
//! every 256k samples (flush untimed), so it includes opening windows.
//! `statsd_like` sends what a statsd listener hands the engine: 25,000-point
//! batches of 1,000 series with 25 untimestamped points each.

mod common;

use std::hint::black_box;
use std::time::Instant;

use common::{Points, BATCH, NOW_MS};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tailfold::model::Kind;

/// The service binary's allocator (`src/main.rs`), so the figures are the
/// service's: mimalloc also asks for transparent huge pages for its arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SERIES: usize = 1_000_000;
/// Distinct pre-built batches cycled through (256k samples).
const BATCHES: usize = 256;

fn bench(c: &mut Criterion) {
    let common::Loaded { engine, zipf, uniform } = common::loaded(
        SERIES,
        common::counter_labels,
        Kind::Counter,
        Points::CounterDeltas,
        BATCHES,
        1,
    );
    eprintln!(
        "ingest_counters: {SERIES} series loaded; zipf batches: {:.0} series/batch, uniform: {:.0} series/batch",
        common::series_per_batch(&zipf),
        common::series_per_batch(&uniform)
    );
    assert_eq!(common::samples_in(&zipf), BATCHES * BATCH);

    let mut group = c.benchmark_group("ingest_counters_1M");
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
    // The same Zipf batches, each cloned just before its call (untimed), so the
    // batch is in cache as a just-decoded request would be; engine state stays cold.
    let mut next = 0;
    group.bench_function("zipf_hot_batch", |b| {
        b.iter_batched_ref(
            || {
                next += 1;
                zipf[next % BATCHES].clone()
            },
            |batch| black_box(engine.ingest(batch, NOW_MS).expect("open")),
            BatchSize::PerIteration,
        )
    });
    group.throughput(Throughput::Elements(2 * BATCH as u64));
    group.bench_function("zipf_2threads", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|scope| {
                for thread in 0..2 {
                    let engine = &engine;
                    let zipf = &zipf;
                    scope.spawn(move || {
                        for i in 0..iters as usize {
                            black_box(
                                engine
                                    .ingest(&zipf[(thread * BATCHES / 2 + i) % BATCHES], NOW_MS)
                                    .expect("open"),
                            );
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    // Window life cycle: every 256k samples the clock moves to the next window
    // (flush untimed), so windows are opened and filled from empty.
    group.throughput(Throughput::Elements(BATCH as u64));
    let untimed = common::without_timestamps(&zipf);
    let mut cycle = common::WindowCycle::new();
    group.bench_function("zipf_window_cycle", |b| {
        b.iter_custom(|iters| cycle.run(&engine, &untimed, iters))
    });
    // statsd's shape: each series sends many points per batch, all in one window.
    group.throughput(Throughput::Elements((STATSD_SERIES * STATSD_POINTS) as u64));
    let statsd = statsd_batches();
    let mut next = 0;
    group.bench_function("statsd_like", |b| {
        b.iter(|| {
            let outcome = engine.ingest(&statsd[next % statsd.len()], NOW_MS).expect("open");
            next += 1;
            black_box(outcome)
        })
    });
    group.finish();
}

/// Series per `statsd_like` batch.
const STATSD_SERIES: usize = 1_000;
/// Points per series per `statsd_like` batch.
const STATSD_POINTS: usize = 25;

/// 16 batches of `STATSD_SERIES` loaded series (scattered over the million,
/// a different set per batch) with `STATSD_POINTS` counter deltas each and no
/// timestamp, as a statsd listener builds them.
fn statsd_batches() -> Vec<tailfold::model::IngestBatch> {
    use tailfold::model::{IngestBatch, Point, SeriesBatch};
    let tenant: std::sync::Arc<str> = std::sync::Arc::from(common::TENANT);
    (0..16)
        .map(|batch| IngestBatch {
            tenant: std::sync::Arc::clone(&tenant),
            series: (0..STATSD_SERIES)
                .map(|i| {
                    let index = (batch * STATSD_SERIES + i) * 999_983 % SERIES;
                    let points = (0..STATSD_POINTS)
                        .map(|p| Point::new((p % 7 + 1) as f64, None, None))
                        .collect();
                    SeriesBatch::new(common::counter_labels(index), Kind::Counter, points)
                })
                .collect(),
        })
        .collect()
}

criterion_group!(benches, bench);
criterion_main!(benches);
