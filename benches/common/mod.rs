//! Shared fixtures of the engine benches: label sets, Zipf-skewed series
//! picks, pre-built batches, an engine loaded with every series.
//!
//! Time is fixed: every sample sits in one 10 s window (`10s:2d`) and `now`
//! is a few seconds into it, so nothing is late and nothing becomes due while
//! a bench runs.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Zipf};
use tailfold::engine::{Engine, EngineSettings};
use tailfold::model::{IngestBatch, Kind, Labels, Point, SeriesBatch, TraceContext};
use tailfold::rules::RuleSet;

/// Start of the window every bench sample falls in (a multiple of 10 s and 1 min).
pub const WINDOW_START_MS: i64 = 1_700_000_040_000;
/// Resolution of the bench policy.
pub const RESOLUTION_MS: i64 = 10_000;
/// Wall clock passed to `ingest`: 3 s into the window.
pub const NOW_MS: i64 = WINDOW_START_MS + 3_000;
/// Tenant of every batch.
pub const TENANT: &str = "bench";
/// Samples per ingest call.
pub const BATCH: usize = 1_000;
/// Zipf exponent of the skewed picks.
pub const ZIPF_S: f64 = 1.0;

/// Rules of the engine benches: one policy, the default aggregations
/// (counters: sum, rate; distributions: count, sum, min, max, p50, p90, p99, p999).
pub const RULES: &str = "
defaults:
  storage_policies: [\"10s:2d\"]
  counter:      { aggregations: [sum, rate] }
  distribution: { aggregations: [count, sum, min, max, p50, p90, p99, p999] }
mapping_rules:
  - { name: drop-debug, filter: '__name__:debug_*', drop: true }
";

pub fn rules() -> RuleSet {
    RuleSet::parse(RULES, "bench-rules.yaml").expect("bench rules are valid")
}

pub fn engine() -> Engine {
    Engine::new(EngineSettings::default(), rules())
}

/// Labels of counter series `i`: six labels, about 100 bytes of label text,
/// shaped like a scraped request counter.
pub fn counter_labels(i: usize) -> Labels {
    Labels::from_pairs([
        ("__name__", format!("http_requests_{}", i % 200)),
        ("service", format!("svc-{}", i % 50)),
        ("endpoint", format!("/api/v1/resource{}", i % 100)),
        (
            "instance",
            format!("10.{}.{}.{}:9100", (i >> 16) & 255, (i >> 8) & 255, i & 255),
        ),
        ("pod", format!("pod-{i:07}")),
        ("status", ["200", "404", "500", "503"][i % 4].to_string()),
    ])
}

/// Labels of distribution series `i`: five labels, shaped like a latency timer.
pub fn distribution_labels(i: usize) -> Labels {
    Labels::from_pairs([
        ("__name__", format!("http_request_duration_seconds_{}", i % 20)),
        ("service", format!("svc-{}", i % 50)),
        ("endpoint", format!("/api/v1/resource{}", i % 100)),
        (
            "instance",
            format!("10.{}.{}.{}:9100", (i >> 16) & 255, (i >> 8) & 255, i & 255),
        ),
        ("pod", format!("pod-{i:07}")),
    ])
}

/// Label sets of series `0..n`.
pub fn label_table(n: usize, make: fn(usize) -> Labels) -> Vec<Labels> {
    (0..n).map(make).collect()
}

/// `count` series indices in `0..n`, Zipf(`ZIPF_S`)-skewed. Ranks are
/// scattered over the index space by a bijection, so hot series are not neighbours.
pub fn zipf_indices(n: usize, count: usize, seed: u64) -> Vec<usize> {
    let zipf = Zipf::new(n as f64, ZIPF_S).expect("valid zipf");
    let mut rng = SmallRng::seed_from_u64(seed);
    // 999_983 is prime and does not divide n for the sizes used here.
    assert!(n % 999_983 != 0);
    (0..count)
        .map(|_| {
            let rank = zipf.sample(&mut rng) as usize - 1;
            (rank as u64 * 999_983 % n as u64) as usize
        })
        .collect()
}

/// `count` series indices in `0..n`, uniform.
pub fn uniform_indices(n: usize, count: usize, seed: u64) -> Vec<usize> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..count).map(|_| rng.random_range(0..n)).collect()
}

/// Random W3C trace context.
pub fn trace(rng: &mut SmallRng) -> TraceContext {
    let mut trace_id: [u8; 16] = rng.random();
    trace_id[0] |= 1;
    let mut span_id: [u8; 8] = rng.random();
    span_id[0] |= 1;
    TraceContext { trace_id, span_id }
}

/// Log-normal latencies around 50 ms.
pub fn latency() -> LogNormal<f64> {
    LogNormal::new(0.05f64.ln(), 0.6).expect("valid log-normal")
}

/// How the points of a batch are made.
#[derive(Clone, Copy)]
pub enum Points {
    /// Counter deltas, no trace.
    CounterDeltas,
    /// Log-normal observations, each with a trace and span ID.
    TracedLatencies,
}

/// Cuts `indices` into batches of `BATCH` samples. Within a batch, samples of
/// the same series are grouped into one `SeriesBatch` (as a client batches
/// them), in order of first appearance.
pub fn batches(labels: &[Labels], indices: &[usize], kind: Kind, points: Points, seed: u64) -> Vec<IngestBatch> {
    batches_at(labels, indices, kind, points, seed, WINDOW_START_MS)
}

/// [`batches`] with timestamps in the first 3 s after `window_start_ms`.
pub fn batches_at(
    labels: &[Labels],
    indices: &[usize],
    kind: Kind,
    points: Points,
    seed: u64,
    window_start_ms: i64,
) -> Vec<IngestBatch> {
    let tenant: Arc<str> = Arc::from(TENANT);
    let mut rng = SmallRng::seed_from_u64(seed);
    let dist = latency();
    indices
        .chunks(BATCH)
        .map(|chunk| {
            let mut position: HashMap<usize, usize> = HashMap::with_capacity(chunk.len());
            let mut series: Vec<SeriesBatch> = Vec::new();
            for (offset, &index) in chunk.iter().enumerate() {
                let timestamp = Some(window_start_ms + (offset as i64 % 3_000));
                let point = match points {
                    Points::CounterDeltas => Point::new(rng.random_range(1..10) as f64, timestamp, None),
                    Points::TracedLatencies => Point::new(dist.sample(&mut rng), timestamp, Some(trace(&mut rng))),
                };
                let slot = *position.entry(index).or_insert_with(|| {
                    series.push(SeriesBatch::new(labels[index].clone(), kind, Vec::new()));
                    series.len() - 1
                });
                series[slot].points.push(point);
            }
            IngestBatch {
                tenant: Arc::clone(&tenant),
                series,
            }
        })
        .collect()
}

/// Samples in `batches`.
pub fn samples_in(batches: &[IngestBatch]) -> usize {
    batches
        .iter()
        .flat_map(|batch| &batch.series)
        .map(|series| series.points.len())
        .sum()
}

/// Mean series per batch.
pub fn series_per_batch(batches: &[IngestBatch]) -> f64 {
    batches.iter().map(|batch| batch.series.len()).sum::<usize>() as f64 / batches.len() as f64
}

/// Ingests `batches` at `now_ms`, asserting every sample is accepted.
pub fn ingest_all(engine: &Engine, batches: &[IngestBatch], now_ms: i64) {
    for batch in batches {
        let outcome = engine.ingest(batch, now_ms).expect("engine open");
        assert_eq!(outcome.rejected_total(), 0, "bench samples must all be accepted");
    }
}

/// Opens one window for every series of `labels`: ingests one point per
/// series (made as `points` says), 1,000 series per call, each batch built
/// just before its call so the label copies do not pile up.
pub fn load_series(engine: &Engine, labels: &[Labels], kind: Kind, points: Points, timestamp_ms: i64, now_ms: i64) {
    let tenant: Arc<str> = Arc::from(TENANT);
    let mut rng = SmallRng::seed_from_u64(7);
    let dist = latency();
    for chunk in labels.chunks(BATCH) {
        let batch = IngestBatch {
            tenant: Arc::clone(&tenant),
            series: chunk
                .iter()
                .map(|labels| {
                    let point = match points {
                        Points::CounterDeltas => Point::new(1.0, Some(timestamp_ms), None),
                        Points::TracedLatencies => {
                            Point::new(dist.sample(&mut rng), Some(timestamp_ms), Some(trace(&mut rng)))
                        }
                    };
                    SeriesBatch::new(labels.clone(), kind, vec![point])
                })
                .collect(),
        };
        ingest_all(engine, std::slice::from_ref(&batch), now_ms);
    }
}

/// An engine with every one of `series` series loaded (one window open each),
/// and `batches` pre-built Zipf-skewed and uniform batches over them; `seed`
/// makes both pick sequences (and their points) repeatable.
pub struct Loaded {
    /// The engine, every series loaded.
    pub engine: Engine,
    /// Batches with Zipf-skewed series picks.
    pub zipf: Vec<IngestBatch>,
    /// Batches with uniform series picks.
    pub uniform: Vec<IngestBatch>,
}

/// Builds a [`Loaded`] engine and its batches (see there).
pub fn loaded(
    series: usize,
    make: fn(usize) -> Labels,
    kind: Kind,
    points: Points,
    batches: usize,
    seed: u64,
) -> Loaded {
    let labels = label_table(series, make);
    let engine = engine();
    load_series(&engine, &labels, kind, points, WINDOW_START_MS, NOW_MS);
    assert_eq!(engine.active_outputs(), series);
    let zipf = self::batches(
        &labels,
        &zipf_indices(series, batches * BATCH, seed),
        kind,
        points,
        seed + 1,
    );
    let uniform = self::batches(
        &labels,
        &uniform_indices(series, batches * BATCH, seed + 2),
        kind,
        points,
        seed + 3,
    );
    Loaded { engine, zipf, uniform }
}

/// Copies of `batches` whose points carry no timestamp (arrival time = `now_ms` of the call).
pub fn without_timestamps(batches: &[IngestBatch]) -> Vec<IngestBatch> {
    let mut batches = batches.to_vec();
    for point in batches
        .iter_mut()
        .flat_map(|batch| &mut batch.series)
        .flat_map(|series| &mut series.points)
    {
        point.timestamp_ms = None;
    }
    batches
}

/// Window life cycle: ingests the `batches` (untimestamped) in turn, one full
/// pass per 10 s window; at each pass boundary the clock moves on by one
/// window and `flush_due` runs (untimed), so every window starts empty and
/// receives the same samples. Returns the time spent in `ingest` calls.
pub struct WindowCycle {
    next: usize,
    now_ms: i64,
}

impl WindowCycle {
    /// Starts 100 windows after the fixed bench window, so the two never meet.
    pub fn new() -> Self {
        WindowCycle {
            next: 0,
            now_ms: NOW_MS + 100 * RESOLUTION_MS,
        }
    }

    pub fn run(&mut self, engine: &Engine, batches: &[IngestBatch], iters: u64) -> std::time::Duration {
        let origin = std::time::Instant::now();
        self.run_timed(engine, batches, iters, move || origin.elapsed())
    }

    /// [`WindowCycle::run`] timed by this thread's CPU time instead of the
    /// wall clock: on a machine shared with other work, what a core spends.
    pub fn run_cpu(&mut self, engine: &Engine, batches: &[IngestBatch], iters: u64) -> std::time::Duration {
        self.run_timed(engine, batches, iters, thread_cpu_time)
    }

    fn run_timed(
        &mut self,
        engine: &Engine,
        batches: &[IngestBatch],
        iters: u64,
        now: impl Fn() -> std::time::Duration,
    ) -> std::time::Duration {
        let mut timed = std::time::Duration::ZERO;
        for _ in 0..iters {
            if self.next % batches.len() == 0 && self.next > 0 {
                self.now_ms += RESOLUTION_MS;
                engine.flush_due(self.now_ms, drop);
            }
            let batch = &batches[self.next % batches.len()];
            self.next += 1;
            let started = now();
            let outcome = engine.ingest(batch, self.now_ms).expect("open");
            timed += now().saturating_sub(started);
            std::hint::black_box(outcome);
        }
        timed
    }
}

/// CPU time this thread has used.
pub fn thread_cpu_time() -> std::time::Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec for the call to fill.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    std::time::Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}
