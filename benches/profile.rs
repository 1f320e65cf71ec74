//! Cost of the metrics profiler on engine ingest: the same Zipf-skewed counter
//! batches over 100,000 series, with the profiler off and on (owner label
//! set). The difference is the per-series, per-batch accounting (a few atomic
//! adds); the per-period label fold runs once per series and is untimed here.

mod common;

use std::hint::black_box;
use std::sync::Arc;

use common::{Points, BATCH, NOW_MS, WINDOW_START_MS};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tailfold::model::Kind;
use tailfold::profile::{ProfileSettings, Profiler};

/// The service binary's allocator (`src/main.rs`), so the figures are the
/// service's: mimalloc also asks for transparent huge pages for its arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SERIES: usize = 100_000;
const BATCHES: usize = 64;

fn bench(c: &mut Criterion) {
    let labels = common::label_table(SERIES, common::counter_labels);
    let settings = ProfileSettings {
        period_ms: 60_000,
        owner_label: Some("service".to_string()),
        max_metrics: 10_000,
    };
    let plain = common::engine();
    let profiled = common::engine().with_profiler(Arc::new(Profiler::new(settings, NOW_MS)));
    for engine in [&plain, &profiled] {
        common::load_series(
            engine,
            &labels,
            Kind::Counter,
            Points::CounterDeltas,
            WINDOW_START_MS,
            NOW_MS,
        );
    }
    let batches = common::batches(
        &labels,
        &common::zipf_indices(SERIES, BATCHES * BATCH, 1),
        Kind::Counter,
        Points::CounterDeltas,
        2,
    );
    let mut group = c.benchmark_group("ingest_profiler_100k");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, engine) in [("off", &plain), ("on", &profiled)] {
        let mut next = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                next += 1;
                black_box(engine.ingest(&batches[next % BATCHES], NOW_MS).expect("open"))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
