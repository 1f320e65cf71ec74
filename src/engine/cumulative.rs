//! Running totals (Prometheus counters) turned into deltas per input series,
//! before any rule sees them: a reset (the value going down, as when a pod
//! restarts) counts the new value as the increase, so a rollup that drops
//! `pod` neither dips nor spikes.

use std::hash::BuildHasherDefault;

use dashmap::DashMap;

use crate::model::{DropReason, Outcome, Point, SeriesKeyHasher};

/// The last running total seen of one series.
#[derive(Clone, Copy, Debug, PartialEq)]
struct LastTotal {
    timestamp_ms: i64,
    value: f64,
    /// Wall clock of the last point, for eviction of series that went away.
    seen_ms: i64,
}

/// Per-series state of cumulative counters.
#[derive(Debug, Default)]
pub struct CumulativeCounters {
    series: DashMap<u64, LastTotal, BuildHasherDefault<SeriesKeyHasher>>,
}

impl CumulativeCounters {
    /// Writes the deltas of `points` (running totals of series `key`) into
    /// `out`, in time order. The first point of a series is its baseline and
    /// yields a zero delta (nothing is known of what came before, as
    /// Prometheus' `rate()` also assumes). A point not newer than the last one
    /// seen is refused as `out_of_order` (a resend, or two writers).
    ///
    /// Points later than `future_limit_ms` are refused (`too_far_in_future`)
    /// before they touch the state: one would otherwise set the series' clock
    /// ahead and turn every later point into `out_of_order`.
    pub fn deltas(
        &self,
        key: u64,
        points: &[Point],
        now_ms: i64,
        future_limit_ms: i64,
        out: &mut Vec<Point>,
        outcome: &mut Outcome,
    ) {
        out.clear();
        let time = |point: &Point| point.timestamp_ms.unwrap_or(now_ms);
        for point in points {
            if time(point) > future_limit_ms {
                outcome.reject(DropReason::TooFarInFuture, 1);
            } else {
                out.push(*point);
            }
        }
        if !out.windows(2).all(|pair| time(&pair[0]) <= time(&pair[1])) {
            out.sort_by_key(time);
        }
        let mut last = self.series.get(&key).map(|entry| *entry);
        let mut kept = 0;
        for index in 0..out.len() {
            let mut point = out[index];
            let timestamp_ms = time(&point);
            let delta = match last {
                Some(previous) if timestamp_ms <= previous.timestamp_ms => {
                    outcome.reject(DropReason::OutOfOrder, 1);
                    continue;
                }
                // A running total that went down was reset: all of it is new.
                Some(previous) if point.value < previous.value => point.value,
                Some(previous) => point.value - previous.value,
                None => 0.0,
            };
            last = Some(LastTotal {
                timestamp_ms,
                value: point.value,
                seen_ms: now_ms,
            });
            point.value = delta;
            point.timestamp_ms = Some(timestamp_ms);
            out[kept] = point;
            kept += 1;
        }
        out.truncate(kept);
        if let Some(last) = last {
            self.series.insert(key, last);
        }
    }

    /// Forgets series not seen for `idle_ms`; their next point is a new baseline.
    pub fn evict_idle(&self, now_ms: i64, idle_ms: i64) -> usize {
        let before = self.series.len();
        self.series.retain(|_, last| now_ms - last.seen_ms < idle_ms);
        before - self.series.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(values: &[(f64, i64)]) -> Vec<Point> {
        values.iter().map(|(v, t)| Point::new(*v, Some(*t), None)).collect()
    }

    fn deltas(tracker: &CumulativeCounters, values: &[(f64, i64)]) -> (Vec<(f64, i64)>, Outcome) {
        let mut out = Vec::new();
        let mut outcome = Outcome::default();
        tracker.deltas(1, &points(values), 0, i64::MAX, &mut out, &mut outcome);
        (
            out.iter().map(|p| (p.value, p.timestamp_ms.unwrap())).collect(),
            outcome,
        )
    }

    #[test]
    fn resets_count_the_new_value_and_order_is_restored() {
        let tracker = CumulativeCounters::default();
        let (out, _) = deltas(&tracker, &[(15.0, 20), (10.0, 10), (15.0, 30)]);
        assert_eq!(out, [(0.0, 10), (5.0, 20), (0.0, 30)]);
        // Restart: 2 after 15 means 2 new, not -13.
        let (out, _) = deltas(&tracker, &[(2.0, 40), (5.0, 50)]);
        assert_eq!(out, [(2.0, 40), (3.0, 50)]);
    }

    #[test]
    fn old_and_repeated_points_are_refused_and_counted() {
        let tracker = CumulativeCounters::default();
        deltas(&tracker, &[(1.0, 10), (3.0, 20)]);
        let (out, outcome) = deltas(&tracker, &[(3.0, 20), (2.0, 15), (4.0, 25)]);
        assert_eq!(out, [(1.0, 25)]);
        assert_eq!(outcome.rejected_for(DropReason::OutOfOrder), 2);
    }

    #[test]
    fn a_future_point_is_refused_before_it_moves_the_series_clock() {
        let tracker = CumulativeCounters::default();
        let mut out = Vec::new();
        let mut outcome = Outcome::default();
        tracker.deltas(
            1,
            &points(&[(1.0, 10), (50.0, 10_000)]),
            0,
            1_000,
            &mut out,
            &mut outcome,
        );
        assert_eq!(outcome.rejected_for(DropReason::TooFarInFuture), 1);
        let mut later = Outcome::default();
        tracker.deltas(1, &points(&[(3.0, 20)]), 0, 1_000, &mut out, &mut later);
        assert_eq!(out.iter().map(|p| p.value).collect::<Vec<_>>(), [2.0]);
        assert_eq!(
            later.rejected_total(),
            0,
            "the refused future point must not make this one out of order"
        );
    }

    #[test]
    fn idle_series_are_forgotten() {
        let tracker = CumulativeCounters::default();
        let mut out = Vec::new();
        let mut outcome = Outcome::default();
        tracker.deltas(1, &points(&[(1.0, 10)]), 1_000, i64::MAX, &mut out, &mut outcome);
        tracker.deltas(2, &points(&[(1.0, 10)]), 5_000, i64::MAX, &mut out, &mut outcome);
        assert_eq!(tracker.evict_idle(6_000, 2_000), 1);
        assert_eq!(tracker.evict_idle(6_000, 2_000), 0, "the recent series stays");
        assert_eq!(tracker.evict_idle(8_000, 2_000), 1);
    }
}
