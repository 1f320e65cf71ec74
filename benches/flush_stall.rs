//! Flush without stalls (harness, not criterion). Loads 1,000,000 counter
//! series into one window, then flushes them all on one thread while another
//! thread keeps calling `Engine::ingest` with 1,000-sample Zipf batches for
//! the next window, timing every call. Reports the flush wall time and the
//! ingest latency p50/p99/max during the flush, next to a baseline without a
//! flush. Repeated over a few windows.
//!
//! `cargo bench --bench flush_stall` (run without `--bench`, e.g. by
//! `cargo test --benches`, it does a small smoke run).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use common::{Points, BATCH, NOW_MS, RESOLUTION_MS, WINDOW_START_MS};
use hdrhistogram::Histogram;
use tailfold::engine::{default_lateness_ms, Engine};
use tailfold::model::{IngestBatch, Kind};

/// The service binary's allocator (`src/main.rs`), so the figures are the
/// service's: mimalloc also asks for transparent huge pages for its arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const REPS: usize = 3;
const BASELINE_CALLS: usize = 2_000;

fn latencies() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn summary(h: &Histogram<u64>) -> String {
    format!(
        "calls {:>6}  p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms",
        h.len(),
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max())
    )
}

/// Times `ingest` calls cycling through `batches` until `stop` (or `limit` calls).
fn timed_ingest(
    engine: &Engine,
    batches: &[IngestBatch],
    now_ms: i64,
    next: &mut usize,
    stop: Option<&AtomicBool>,
    limit: usize,
) -> Histogram<u64> {
    let mut h = latencies();
    for _ in 0..limit {
        if stop.is_some_and(|stop| stop.load(Ordering::Acquire)) {
            break;
        }
        let batch = &batches[*next % batches.len()];
        *next += 1;
        let started = Instant::now();
        let outcome = engine.ingest(batch, now_ms).expect("open");
        h.record(started.elapsed().as_nanos() as u64).expect("in range");
        assert_eq!(outcome.rejected_total(), 0);
    }
    h
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let series = if full { 1_000_000 } else { 20_000 };
    let reps = if full { REPS } else { 1 };
    let lateness = default_lateness_ms(RESOLUTION_MS as u64) as i64;

    let labels = common::label_table(series, common::counter_labels);
    let engine = common::engine();
    println!(
        "flush_stall: {series} counter series, {} shards, 1,000-sample Zipf({}) batches, {} cores",
        engine.settings().shards,
        common::ZIPF_S,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut flush_ms = Vec::new();
    let mut p99_ms = Vec::new();
    let mut max_ms: f64 = 0.0;
    for rep in 0..reps {
        // Window A is loaded and flushed; window B (next) receives ingest meanwhile.
        let a_start = WINDOW_START_MS + rep as i64 * 3 * RESOLUTION_MS;
        let b_start = a_start + RESOLUTION_MS;
        let flush_now = b_start + lateness;
        common::load_series(
            &engine,
            &labels,
            Kind::Counter,
            Points::CounterDeltas,
            a_start,
            a_start + (NOW_MS - WINDOW_START_MS),
        );
        let batches = common::batches_at(
            &labels,
            &common::zipf_indices(series, 256 * BATCH, 11 + rep as u64),
            Kind::Counter,
            Points::CounterDeltas,
            12 + rep as u64,
            b_start,
        );
        let mut next = 0;
        // Baseline: the same calls with no flush running (also opens window B for the hot series).
        let baseline = timed_ingest(&engine, &batches, flush_now, &mut next, None, BASELINE_CALLS);

        let done = AtomicBool::new(false);
        let (during, (elapsed, stats)) = std::thread::scope(|scope| {
            let flusher = scope.spawn(|| {
                let started = Instant::now();
                let stats = engine.flush_due(flush_now, drop);
                let elapsed = started.elapsed();
                done.store(true, Ordering::Release);
                (elapsed, stats)
            });
            let during = timed_ingest(&engine, &batches, flush_now, &mut next, Some(&done), usize::MAX);
            (during, flusher.join().expect("flush thread"))
        });
        assert!(stats.windows >= series, "window A of every series flushed");
        flush_ms.push(elapsed.as_secs_f64() * 1e3);
        p99_ms.push(ms(during.value_at_quantile(0.99)));
        max_ms = max_ms.max(ms(during.max()));
        println!(
            "rep {rep}: flush {:>8.1} ms ({} windows, {} records)",
            elapsed.as_secs_f64() * 1e3,
            stats.windows,
            stats.records
        );
        println!("  ingest baseline     {}", summary(&baseline));
        println!("  ingest during flush {}", summary(&during));
        // Clear window B so the next repetition starts from one open window per series.
        engine.flush_due(b_start + RESOLUTION_MS + lateness, drop);
    }
    flush_ms.sort_by(f64::total_cmp);
    p99_ms.sort_by(f64::total_cmp);
    // Per-repetition p99s, not a pooled one: a repetition with more (fast) calls
    // would otherwise hide another's stalls.
    println!(
        "summary: flush of {series} series: median {:.1} ms, max {:.1} ms; \
         ingest during flush: p99 median {:.3} ms, worst {:.3} ms; max {:.3} ms",
        flush_ms[flush_ms.len() / 2],
        flush_ms[flush_ms.len() - 1],
        p99_ms[p99_ms.len() / 2],
        p99_ms[p99_ms.len() - 1],
        max_ms
    );
}
