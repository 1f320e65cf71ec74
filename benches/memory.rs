//! Memory per series, measured by a counting global allocator (live requested
//! bytes after ingest minus before, divided by series; malloc's own per-block
//! overhead is not included, so allocations per series are reported too).
//!
//! - active counter series: one open window per series, first sample (the
//!   route cache entry and the shard entry are included), for the bench's
//!   six-label series and for one-label series (fixed overhead);
//! - distribution series-window: 100 traced log-normal observations per
//!   series and window, interleaved across series; the first window of a
//!   series (route included) and a further window of known series, with the
//!   default exemplar reservoirs (one per bucket up to `max_exemplars`), one
//!   per 16 buckets (`exemplar_scale_reduction: 4`), and one per bucket
//!   without a limit (`max_exemplars: 0`).
//!
//! `cargo bench --bench memory` (run without `--bench` it does a small smoke run;
//! `-- distribution` measures the distribution lines only).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use common::{Points, BATCH, NOW_MS, RESOLUTION_MS, WINDOW_START_MS};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tailfold::aggregate::histogram::HistogramConfig;
use tailfold::engine::{Engine, EngineSettings, OutputTarget, PolicySlot, SeriesRoute, WindowState};
use tailfold::model::{Kind, Labels};

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static LIVE_BLOCKS: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
            LIVE_BLOCKS.fetch_add(1, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
            LIVE_BLOCKS.fetch_add(1, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        LIVE_BLOCKS.fetch_sub(1, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE_BYTES.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> (isize, isize) {
    (LIVE_BYTES.load(Ordering::Relaxed), LIVE_BLOCKS.load(Ordering::Relaxed))
}

/// Runs `work` and prints live bytes and blocks it left behind, per `per` units.
fn measure(what: &str, per: usize, work: impl FnOnce()) -> f64 {
    let (bytes, blocks) = live();
    work();
    let (bytes_after, blocks_after) = live();
    let per_bytes = (bytes_after - bytes) as f64 / per as f64;
    println!(
        "{what:<58} {per_bytes:>9.1} bytes  {:>5.1} allocations",
        (blocks_after - blocks) as f64 / per as f64
    );
    per_bytes
}

fn one_label(i: usize) -> Labels {
    Labels::from_pairs([("__name__", format!("c_{i:07}"))])
}

fn mean_label_bytes(labels: &[Labels]) -> f64 {
    labels.iter().map(Labels::heap_bytes).sum::<usize>() as f64 / labels.len() as f64
}

/// An engine whose thread-local ingest buffers are already grown (by series
/// outside the measured range), so they do not count against the series.
fn warmed_engine(kind: Kind, points: Points, make: fn(usize) -> Labels, histogram: HistogramConfig) -> Engine {
    let settings = EngineSettings {
        histogram,
        ..EngineSettings::default()
    };
    let engine = Engine::new(settings, common::rules());
    let warm: Vec<Labels> = (0..BATCH).map(|i| make(50_000_000 + i)).collect();
    common::load_series(&engine, &warm, kind, points, WINDOW_START_MS, NOW_MS);
    engine
}

fn counters(series: usize, make: fn(usize) -> Labels, shape: &str) {
    let labels = common::label_table(series, make);
    let engine = warmed_engine(Kind::Counter, Points::CounterDeltas, make, HistogramConfig::default());
    measure(
        &format!("counter series, first window ({shape}, {series} series)"),
        series,
        || {
            common::load_series(
                &engine,
                &labels,
                Kind::Counter,
                Points::CounterDeltas,
                WINDOW_START_MS,
                NOW_MS,
            )
        },
    );
    println!(
        "  (heap block of one input label set: {:.0} bytes; the engine keeps one copy, in the output target)",
        mean_label_bytes(&labels)
    );
}

/// The distribution lines under `histogram`, a variant of the default named
/// by `knob`, at `observations` traced observations per series and window.
fn distributions(series: usize, observations: usize, histogram: HistogramConfig, knob: &str) {
    let labels = common::label_table(series, common::distribution_labels);
    let engine = warmed_engine(
        Kind::Distribution,
        Points::TracedLatencies,
        common::distribution_labels,
        histogram,
    );
    let mut indices: Vec<usize> = (0..series).flat_map(|i| std::iter::repeat_n(i, observations)).collect();
    indices.shuffle(&mut rand::rngs::SmallRng::seed_from_u64(3));
    // Batches are built and dropped one at a time: only what the engine keeps stays live.
    let ingest_window = |window_start_ms: i64, seed: u64| {
        for (n, chunk) in indices.chunks(BATCH).enumerate() {
            let batch = common::batches_at(
                &labels,
                chunk,
                Kind::Distribution,
                Points::TracedLatencies,
                seed + n as u64,
                window_start_ms,
            );
            common::ingest_all(&engine, &batch, window_start_ms + (NOW_MS - WINDOW_START_MS));
        }
    };
    measure(
        &format!("distribution series, first window ({observations} traced obs, {series} series{knob})"),
        series,
        || ingest_window(WINDOW_START_MS, 1_000),
    );
    measure(
        &format!("distribution series-window, next window ({observations} traced obs, {series}{knob})"),
        series,
        || ingest_window(WINDOW_START_MS + RESOLUTION_MS, 2_000_000),
    );
    assert_eq!(engine.open_windows(), 2 * series + BATCH);
}

/// One histogram's bytes (inline and heap) after `observations` traced
/// log-normal samples with a 5 % slow tail, largest of `windows`: without a
/// link plan (the per-bucket reservoirs, `max_exemplars` 24: what windows
/// kept before links) and with the default aggregations' plan.
fn histograms(observations: usize, windows: u64) {
    use rand::Rng;
    use rand_distr::{Distribution, LogNormal};
    use tailfold::aggregate::exemplar::Exemplar;
    use tailfold::aggregate::histogram::{ExpHistogram, LinkPlan};
    use tailfold::aggregate::Aggregation;

    let aggregations: Vec<Aggregation> = ["count", "sum", "min", "max", "p50", "p90", "p99", "p999"]
        .iter()
        .map(|text| text.parse().unwrap())
        .collect();
    let plan = LinkPlan::of(&aggregations, 10);
    let body = LogNormal::new(0.25f64.ln(), 0.6).unwrap();
    let tail = LogNormal::new(1.2f64.ln(), 0.4).unwrap();
    let mut largest = [0usize; 2];
    let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
    for _ in 0..windows.min(if observations > 1_000 { 10 } else { windows }) {
        let mut without = ExpHistogram::new(HistogramConfig::default());
        let mut with = ExpHistogram::with_plan(HistogramConfig::default(), plan.as_ref());
        for tag in 0..observations {
            let value = if rng.random_bool(0.05) {
                tail.sample(&mut rng)
            } else {
                body.sample(&mut rng)
            };
            let exemplar = Exemplar {
                trace_id: [(tag % 251) as u8 + 1; 16],
                span_id: [1; 8],
                value,
                timestamp_ms: 0,
            };
            without.record(value, Some(exemplar), &mut rng);
            with.record(value, Some(exemplar), &mut rng);
        }
        for (largest, h) in largest.iter_mut().zip([&without, &with]) {
            *largest = (*largest).max(size_of::<ExpHistogram>() + h.heap_bytes());
        }
    }
    println!(
        "histogram alone, {observations} traced slow-tailed obs (largest): per-bucket reservoirs {} B, link plan {} B",
        largest[0], largest[1]
    );
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    // `cargo bench --bench memory -- distribution` skips the (slow) counter runs.
    let only_distributions = std::env::args().any(|arg| arg == "distribution");
    let scale = if full { 1 } else { 100 };
    println!("memory: live requested bytes per series (counting #[global_allocator])");
    if !only_distributions {
        counters(1_000_000 / scale, common::counter_labels, "6 labels");
        counters(100_000 / scale, common::counter_labels, "6 labels");
        counters(1_000_000 / scale, one_label, "1 label");
    }
    let default = HistogramConfig::default();
    distributions(10_000 / scale, 100, default, "");
    distributions((2_000 / scale).max(2), 50_000, default, "");
    for observations in [100, 50_000] {
        histograms(observations, 200);
    }
    println!(
        "sizes (bytes, inline): Labels {}, WindowState {}, SeriesRoute {}, \
         OutputTarget {}, PolicySlot {} (+16 per Arc header), ExpHistogram {}, Links {}",
        size_of::<Labels>(),
        size_of::<WindowState>(),
        size_of::<SeriesRoute>(),
        size_of::<OutputTarget>(),
        size_of::<PolicySlot>(),
        size_of::<tailfold::aggregate::histogram::ExpHistogram>(),
        size_of::<tailfold::aggregate::histogram::Links>(),
    );
}
