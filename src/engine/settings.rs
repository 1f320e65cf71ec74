//! Checked runtime settings of the engine: shard count, future tolerance,
//! allowed lateness per resolution and the histogram layout.

use crate::aggregate::histogram::HistogramConfig;
use crate::model::StoragePolicy;

/// Lateness when nothing is configured: half a window, at least 1 s and at most 1 min.
/// Half a window gives senders that batch for a few seconds room, while a
/// newcomer sees a 10 s window flushed 5 s after it ends.
pub fn default_lateness_ms(resolution_ms: u64) -> u64 {
    (resolution_ms / 2).clamp(1_000, 60_000)
}

/// Engine settings, already validated (build them from `config::EngineConfig`).
#[derive(Clone, Debug)]
pub struct EngineSettings {
    /// Number of shards; each is locked independently.
    pub shards: usize,
    /// Samples whose event time is further ahead of now are refused.
    pub future_tolerance_ms: u64,
    /// Lateness per resolution (`resolution_ms`, `lateness_ms`); others use [`default_lateness_ms`].
    pub lateness_overrides: Vec<(u64, u64)>,
    /// Histogram layout of distribution windows.
    pub histogram: HistogramConfig,
    /// Per-series state kept between windows (running totals of cumulative
    /// counters, `total` outputs) is forgotten after this long without data.
    pub idle_series_ms: u64,
    /// Exemplars an `above(threshold)` output keeps per window: the kept
    /// exemplars of the highest buckets beyond the threshold, slowest first.
    pub above_max_traces: usize,
    /// Distinct members a set window (statsd `|s`) counts exactly; past it,
    /// a HyperLogLog sketch (standard error 0.81 %).
    pub set_max_exact_values: usize,
    /// Inputs whose last value a gauge rollup holds for windows they miss,
    /// per rollup output and policy (those heard from longest ago go first).
    pub rollup_last_max_inputs: usize,
    /// A held input value stops counting in a gauge rollup's `last` once
    /// the input has sent nothing for this long.
    pub rollup_last_idle_ms: u64,
}

impl EngineSettings {
    /// How long after a window of `policy` ends samples for it are still accepted.
    pub fn lateness_ms(&self, policy: &StoragePolicy) -> u64 {
        self.lateness_overrides
            .iter()
            .find(|(resolution, _)| *resolution == policy.resolution_ms)
            .map(|(_, lateness)| *lateness)
            .unwrap_or_else(|| default_lateness_ms(policy.resolution_ms))
    }
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            shards: default_shards(),
            future_tolerance_ms: 60_000,
            lateness_overrides: Vec::new(),
            histogram: HistogramConfig::default(),
            idle_series_ms: 3_600_000,
            above_max_traces: 10,
            set_max_exact_values: 1_000,
            rollup_last_max_inputs: crate::config::defaults::ROLLUP_LAST_MAX_INPUTS,
            rollup_last_idle_ms: crate::config::defaults::ROLLUP_LAST_IDLE_MS,
        }
    }
}

/// Thirty-two shards per core: a flush takes due windows one shard at a time
/// under that shard's lock, so the hold time (and the ingest stall it can
/// cause) scales with 1/shards; see BENCHMARKS.md.
pub fn default_shards() -> usize {
    std::thread::available_parallelism()
        .map(|cores| cores.get() * 32)
        .unwrap_or(8)
        .max(4)
}
