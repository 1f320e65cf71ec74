//! Flush of 1,000,000 counter series (one window each, two records each: sum
//! and rate) to a sink that discards: `Engine::flush_due` with a closure that
//! drops each chunk (freeing the records on the flush thread, as a real sink
//! would on its own).
//!
//! Each iteration loads a fresh window for every series (untimed; the route
//! cache stays warm, as in service), then times one `flush_due` past the
//! window's end plus lateness.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::{Points, NOW_MS, RESOLUTION_MS, WINDOW_START_MS};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use tailfold::engine::default_lateness_ms;
use tailfold::model::Kind;

/// The service binary's allocator (`src/main.rs`), so the figures are the
/// service's: mimalloc also asks for transparent huge pages for its arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SERIES: usize = 1_000_000;

fn bench(c: &mut Criterion) {
    let labels = common::label_table(SERIES, common::counter_labels);
    let engine = common::engine();
    let lateness = default_lateness_ms(RESOLUTION_MS as u64) as i64;
    let mut window = 0i64;

    let mut group = c.benchmark_group("flush");
    group.sample_size(10).sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(SERIES as u64));
    group.bench_function("counters_1M_discard", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let start_ms = WINDOW_START_MS + window * RESOLUTION_MS;
                window += 1;
                let load_now = start_ms + (NOW_MS - WINDOW_START_MS);
                common::load_series(
                    &engine,
                    &labels,
                    Kind::Counter,
                    Points::CounterDeltas,
                    start_ms,
                    load_now,
                );
                let flush_now = start_ms + RESOLUTION_MS + lateness;
                let started = Instant::now();
                let stats = engine.flush_due(flush_now, |chunk| drop(black_box(chunk)));
                timed += started.elapsed();
                assert_eq!(stats.windows, SERIES);
            }
            timed
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
