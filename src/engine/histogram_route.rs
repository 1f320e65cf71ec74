//! Native histograms on their way in: cumulative ones diffed per input series,
//! then sent to the same windows as scalar points (lateness, future tolerance,
//! one tally per histogram) and folded whole into distribution windows.

use std::sync::Arc;

use crate::model::{DropReason, IngestBatch, NativeHistogram, Outcome};

use super::{Engine, Scratch};

/// Where a routed histogram lives for the duration of one batch.
#[derive(Clone, Copy, Debug)]
pub enum HistogramSource {
    /// Used as sent (a gauge histogram): `batch.series[series].histograms[index]`.
    Sent {
        /// Index of the series in the batch.
        series: u32,
        /// Index of the histogram in the series.
        index: u32,
    },
    /// A delta of a cumulative histogram: `Scratch::histogram_deltas[index]`.
    Delta(u32),
}

impl HistogramSource {
    /// The histogram itself.
    pub fn resolve<'a>(self, batch: &'a IngestBatch, deltas: &'a [NativeHistogram]) -> &'a NativeHistogram {
        match self {
            HistogramSource::Sent { series, index } => &batch.series[series as usize].histograms[index as usize],
            HistogramSource::Delta(index) => &deltas[index as usize],
        }
    }
}

/// One histogram on its way into one window of one output. It refers to the
/// histogram instead of holding it: one histogram fans out to many windows.
#[derive(Clone, Copy, Debug)]
pub struct RoutedHistogram {
    /// Index of the route in the batch's route list.
    pub route: u32,
    /// Index of the target within the route.
    pub target: u16,
    /// Index of the policy slot within the target.
    pub slot: u16,
    /// Index of the histogram among the batch's points (for the tally).
    pub point: u32,
    /// Start of the window it belongs to.
    pub window_start_ms: i64,
    /// The histogram.
    pub source: HistogramSource,
}

impl Engine {
    /// Routes the native histograms of `batch.series[series_index]` (input
    /// key `key`), whose route is `scratch.routes[route_index]`, into the
    /// per-shard lists; each takes one slot of the per-point tally. That route
    /// belongs to the rule set in force over event times `[from_ms, until_ms)`:
    /// a histogram outside (one batch straddling a rules reload) is refused as
    /// too late rather than folded under the other rule set. Ones too
    /// far in the future are refused before they can move the series' running
    /// state (a far-future total would make every later one out of order).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn route_histograms(
        &self,
        scratch: &mut Scratch,
        outcome: &mut Outcome,
        batch: &IngestBatch,
        series_index: usize,
        key: u64,
        now_ms: i64,
        route_index: u32,
        (from_ms, until_ms): (i64, i64),
    ) {
        let series = &batch.series[series_index];
        let future_limit = now_ms.saturating_add(self.settings.future_tolerance_ms as i64);
        let in_time = |histogram: &&NativeHistogram| histogram.timestamp_ms.unwrap_or(now_ms) <= future_limit;
        let too_far = series.histograms.iter().filter(|h| !in_time(h)).count();
        outcome.reject(DropReason::TooFarInFuture, too_far as u64);

        let route = Arc::clone(&scratch.routes[route_index as usize]);
        let shard_count = self.shards.len();
        let route_one = |scratch: &mut Scratch, source: HistogramSource, timestamp_ms: i64| {
            let point = scratch.tally.next_point();
            if timestamp_ms < from_ms || timestamp_ms >= until_ms {
                scratch.tally.push_point(0);
                return;
            }
            let per_shard = &mut scratch.per_shard_histograms;
            let tally = &mut scratch.tally;
            let routed = route.for_each_window(
                timestamp_ms,
                now_ms,
                shard_count,
                |shard, _output, target, slot, start| {
                    per_shard[shard].push(RoutedHistogram {
                        route: route_index,
                        target,
                        slot,
                        point,
                        window_start_ms: start,
                        source,
                    });
                },
                |target, slot| tally.due(route_index, target, slot),
            );
            tally.push_point(routed);
        };

        if series.cumulative {
            let first = scratch.histogram_deltas.len();
            let sent = series.histograms.iter().filter(in_time);
            self.cumulative_histograms
                .deltas(key, sent, now_ms, &mut scratch.histogram_deltas, outcome);
            for index in first..scratch.histogram_deltas.len() {
                let timestamp_ms = scratch.histogram_deltas[index].timestamp_ms.unwrap_or(now_ms);
                route_one(scratch, HistogramSource::Delta(index as u32), timestamp_ms);
            }
        } else {
            for (index, histogram) in series.histograms.iter().enumerate() {
                if !in_time(&histogram) {
                    continue;
                }
                let source = HistogramSource::Sent {
                    series: series_index as u32,
                    index: index as u32,
                };
                route_one(scratch, source, histogram.timestamp_ms.unwrap_or(now_ms));
            }
        }
    }
}
