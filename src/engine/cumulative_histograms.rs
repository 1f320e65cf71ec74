//! Cumulative native histograms (Prometheus' running totals of every bucket)
//! turned into per-interval deltas per input series, with reset detection,
//! before any rule sees them: the histogram twin of `cumulative.rs`.

use std::borrow::Cow;

use std::hash::BuildHasherDefault;

use dashmap::DashMap;

use crate::model::{DropReason, NativeHistogram, Outcome, SeriesKeyHasher};

/// The last running histogram seen of one series (its exemplars dropped).
#[derive(Clone, Debug)]
struct LastHistogram {
    timestamp_ms: i64,
    histogram: NativeHistogram,
    /// Wall clock of the last histogram, for eviction of series that went away.
    seen_ms: i64,
}

/// Per-series state of cumulative native histograms.
#[derive(Debug, Default)]
pub struct CumulativeHistograms {
    series: DashMap<u64, LastHistogram, BuildHasherDefault<SeriesKeyHasher>>,
}

impl CumulativeHistograms {
    /// Appends to `out`, in time order, the deltas of `histograms` (running
    /// totals of series `key`), each with its timestamp set. The first
    /// histogram of a series is its baseline and yields an empty delta (the
    /// window still sees the series, as a counter's baseline yields a zero
    /// delta: nothing is known of what came before). A histogram not newer
    /// than the last one seen is refused as `out_of_order`.
    pub fn deltas<'a>(
        &self,
        key: u64,
        histograms: impl IntoIterator<Item = &'a NativeHistogram>,
        now_ms: i64,
        out: &mut Vec<NativeHistogram>,
        outcome: &mut Outcome,
    ) {
        let time = |histogram: &NativeHistogram| histogram.timestamp_ms.unwrap_or(now_ms);
        let mut ordered: Vec<&NativeHistogram> = histograms.into_iter().collect();
        // Stable: of two with one timestamp, the first sent is the one kept.
        ordered.sort_by_key(|histogram| time(histogram));
        let mut last = self.series.get(&key).map(|entry| entry.clone());
        for current in ordered {
            let timestamp_ms = time(current);
            let mut delta = match &last {
                Some(previous) if timestamp_ms <= previous.timestamp_ms => {
                    outcome.reject(DropReason::OutOfOrder, 1);
                    continue;
                }
                Some(previous) => delta(&previous.histogram, current),
                None => baseline(current),
            };
            delta.timestamp_ms = Some(timestamp_ms);
            out.push(delta);
            last = Some(LastHistogram {
                timestamp_ms,
                histogram: NativeHistogram {
                    exemplars: Vec::new(),
                    timestamp_ms: current.timestamp_ms,
                    scale: current.scale,
                    zero_threshold: current.zero_threshold,
                    zero_count: current.zero_count,
                    count: current.count,
                    sum: current.sum,
                    positive: current.positive.clone(),
                    negative: current.negative.clone(),
                },
                seen_ms: now_ms,
            });
        }
        if let Some(last) = last {
            self.series.insert(key, last);
        }
    }

    /// Forgets series not seen for `idle_ms`; their next histogram is a new baseline.
    pub fn evict_idle(&self, now_ms: i64, idle_ms: i64) -> usize {
        let before = self.series.len();
        self.series.retain(|_, last| now_ms - last.seen_ms < idle_ms);
        before - self.series.len()
    }
}

/// The empty delta of a series' first histogram.
fn baseline(current: &NativeHistogram) -> NativeHistogram {
    NativeHistogram {
        timestamp_ms: current.timestamp_ms,
        scale: current.scale,
        zero_threshold: current.zero_threshold,
        zero_count: 0,
        count: 0,
        sum: 0.0,
        positive: Vec::new(),
        negative: Vec::new(),
        // They belong to observations counted before the baseline.
        exemplars: Vec::new(),
    }
}

/// What `current` added since `previous`, at the coarser of their scales. A
/// reset (the count, the zero count or any bucket went down, or the zero
/// threshold changed: a restarted or reconfigured sender) makes all of
/// `current` new, as for counters.
fn delta(previous: &NativeHistogram, current: &NativeHistogram) -> NativeHistogram {
    let reset = current.count < previous.count
        || current.zero_count < previous.zero_count
        || current.zero_threshold.to_bits() != previous.zero_threshold.to_bits();
    if reset {
        return current.clone();
    }
    let scale = previous.scale.min(current.scale);
    let side = |now: &[(i32, u64)], before: &[(i32, u64)]| {
        subtract(
            &downscale(now, (current.scale - scale) as u32),
            &downscale(before, (previous.scale - scale) as u32),
        )
    };
    let (Some(positive), Some(negative)) = (
        side(&current.positive, &previous.positive),
        side(&current.negative, &previous.negative),
    ) else {
        return current.clone();
    };
    NativeHistogram {
        timestamp_ms: current.timestamp_ms,
        scale,
        zero_threshold: current.zero_threshold,
        zero_count: current.zero_count - previous.zero_count,
        count: current.count - previous.count,
        sum: current.sum - previous.sum,
        positive,
        negative,
        // A sender attaches an exemplar to the first scrape that counted it: this delta.
        exemplars: current.exemplars.clone(),
    }
}

/// `buckets` (ascending) at a scale `k` lower: index `i` becomes `i >> k`,
/// counts of merged buckets summed. Borrowed when `k == 0`.
fn downscale(buckets: &[(i32, u64)], k: u32) -> Cow<'_, [(i32, u64)]> {
    if k == 0 {
        return Cow::Borrowed(buckets);
    }
    let mut out: Vec<(i32, u64)> = Vec::with_capacity(buckets.len());
    for &(index, count) in buckets {
        let index = index >> k;
        match out.last_mut() {
            Some((last, total)) if *last == index => *total += count,
            _ => out.push((index, count)),
        }
    }
    Cow::Owned(out)
}

/// `now - before` bucket-wise (both ascending, same scale), non-empty
/// buckets only; `None` when any bucket went down (a reset).
fn subtract(now: &[(i32, u64)], before: &[(i32, u64)]) -> Option<Vec<(i32, u64)>> {
    let mut out = Vec::with_capacity(now.len());
    let mut before = before.iter().filter(|(_, count)| *count > 0).peekable();
    for &(index, count) in now {
        let mut earlier = 0;
        while let Some(&&(old_index, old_count)) = before.peek() {
            if old_index > index {
                break;
            }
            if old_index < index {
                // A bucket the previous histogram had and this one lacks went to zero.
                return None;
            }
            earlier = old_count;
            before.next();
        }
        match count.checked_sub(earlier)? {
            0 => {}
            increase => out.push((index, increase)),
        }
    }
    before.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TraceContext;

    fn histogram(timestamp_ms: i64, scale: i8, zero_count: u64, positive: &[(i32, u64)], sum: f64) -> NativeHistogram {
        NativeHistogram {
            timestamp_ms: Some(timestamp_ms),
            scale,
            zero_threshold: 0.0,
            zero_count,
            count: zero_count + positive.iter().map(|(_, c)| c).sum::<u64>(),
            sum,
            positive: positive.to_vec(),
            negative: Vec::new(),
            exemplars: Vec::new(),
        }
    }

    fn run(tracker: &CumulativeHistograms, sent: &[NativeHistogram]) -> (Vec<NativeHistogram>, Outcome) {
        let mut out = Vec::new();
        let mut outcome = Outcome::default();
        tracker.deltas(7, sent, 0, &mut out, &mut outcome);
        (out, outcome)
    }

    #[test]
    fn the_first_histogram_is_an_empty_baseline_then_increases_are_bucket_wise() {
        let tracker = CumulativeHistograms::default();
        let (out, _) = run(&tracker, &[histogram(10, 3, 1, &[(0, 2), (4, 1)], 5.0)]);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].count, out[0].sum, out[0].zero_count), (0, 0.0, 0));
        assert!(out[0].positive.is_empty() && out[0].timestamp_ms == Some(10));

        let mut next = histogram(20, 3, 2, &[(0, 2), (2, 3), (4, 4)], 12.5);
        next.exemplars = vec![(
            1.1,
            15,
            TraceContext {
                trace_id: [1; 16],
                span_id: [0; 8],
            },
        )];
        let (out, _) = run(&tracker, &[next]);
        assert_eq!(out[0].positive, [(2, 3), (4, 3)], "unchanged bucket 0 is left out");
        assert_eq!((out[0].count, out[0].zero_count, out[0].sum), (7, 1, 7.5));
        assert_eq!(out[0].exemplars.len(), 1, "the exemplars of the interval stay");
    }

    #[test]
    fn a_drop_in_the_count_or_in_one_bucket_is_a_reset() {
        let tracker = CumulativeHistograms::default();
        run(&tracker, &[histogram(10, 3, 0, &[(0, 5), (1, 5)], 10.0)]);
        // Count goes down: a restart, all of it is new.
        let restarted = histogram(20, 3, 0, &[(1, 2)], 3.0);
        let (out, _) = run(&tracker, std::slice::from_ref(&restarted));
        assert_eq!(out[0], restarted);
        // The count grows but bucket 1 went down: still a reset, not a negative delta.
        let shifted = histogram(30, 3, 0, &[(0, 9), (1, 1)], 4.0);
        let (out, _) = run(&tracker, std::slice::from_ref(&shifted));
        assert_eq!(out[0], shifted);
        // A bucket that disappeared went down to zero.
        let (out, _) = run(&tracker, &[histogram(40, 3, 0, &[(0, 12)], 5.0)]);
        assert_eq!(out[0].count, 12);
        assert_eq!(out[0].positive, [(0, 12)]);
        let mut threshold = histogram(50, 3, 0, &[(0, 13)], 6.0);
        threshold.zero_threshold = 1e-3;
        let (out, _) = run(&tracker, std::slice::from_ref(&threshold));
        assert_eq!(out[0], threshold, "a changed zero threshold restarts the series");
    }

    #[test]
    fn a_lowered_schema_is_diffed_at_the_coarser_scale() {
        let tracker = CumulativeHistograms::default();
        // Scale 3 buckets 4, 5 and 6 are scale 2 buckets 2, 2 and 3.
        run(&tracker, &[histogram(10, 3, 0, &[(4, 1), (5, 2), (6, 3)], 6.0)]);
        let (out, _) = run(&tracker, &[histogram(20, 2, 0, &[(2, 5), (3, 3), (7, 1)], 9.0)]);
        assert_eq!(out[0].scale, 2);
        assert_eq!(out[0].positive, [(2, 2), (7, 1)]);
        assert_eq!(out[0].count, 3);
        // Negative indices floor: -1 and -2 at scale 1 are both -1 at scale 0.
        assert_eq!(
            downscale(&[(-3, 1), (-2, 1), (-1, 1), (0, 1)], 1).as_ref(),
            [(-2, 1), (-1, 2), (0, 1)]
        );
    }

    #[test]
    fn old_and_repeated_histograms_are_refused_and_order_is_restored() {
        let tracker = CumulativeHistograms::default();
        let (out, _) = run(
            &tracker,
            &[histogram(20, 3, 0, &[(0, 3)], 3.0), histogram(10, 3, 0, &[(0, 1)], 1.0)],
        );
        assert_eq!(
            out.iter().map(|h| (h.timestamp_ms, h.count)).collect::<Vec<_>>(),
            [(Some(10), 0), (Some(20), 2)]
        );
        let (out, outcome) = run(
            &tracker,
            &[
                histogram(20, 3, 0, &[(0, 3)], 3.0),
                histogram(15, 3, 0, &[(0, 2)], 2.0),
                histogram(30, 3, 0, &[(0, 4)], 4.0),
            ],
        );
        assert_eq!(outcome.rejected_for(DropReason::OutOfOrder), 2);
        assert_eq!(out.iter().map(|h| h.count).collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn idle_series_are_forgotten_and_start_over_from_a_baseline() {
        let tracker = CumulativeHistograms::default();
        let mut out = Vec::new();
        let mut outcome = Outcome::default();
        tracker.deltas(1, &[histogram(10, 3, 0, &[(0, 1)], 1.0)], 1_000, &mut out, &mut outcome);
        tracker.deltas(2, &[histogram(10, 3, 0, &[(0, 1)], 1.0)], 5_000, &mut out, &mut outcome);
        assert_eq!(tracker.evict_idle(6_000, 2_000), 1);
        out.clear();
        tracker.deltas(1, &[histogram(20, 3, 0, &[(0, 9)], 9.0)], 6_000, &mut out, &mut outcome);
        assert_eq!(out[0].count, 0, "a new baseline, not 9 new samples");
    }
}
