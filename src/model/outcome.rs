//! Why a sample was not folded in, and the tally of one ingest call: accepted
//! points, rejected points by reason and rule, and what each output window
//! refused. Every stage reports into it.

use std::sync::Arc;

use super::{SeriesKey, StoragePolicy};

/// Why points were not folded into any window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// The series itself is malformed (labels, kind); all its points are refused.
    InvalidSeries,
    /// NaN or an infinity.
    InvalidValue,
    /// A trace or span ID of the wrong length, or all zero.
    InvalidTraceId,
    /// Every window the point belongs to was already flushed.
    TooLate,
    /// The timestamp is further in the future than the configured tolerance.
    TooFarInFuture,
    /// A drop rule matched and no rollup consumes the series.
    DroppedByRule,
    /// No aggregation of any rule or default applies to the series' kind.
    NoAggregation,
    /// The output series already exists with another kind.
    KindConflict,
    /// A running total not newer than the last one of its series.
    OutOfOrder,
    /// The tenant was over its samples-per-second limit (nice-to-have series first).
    RateLimited,
    /// A new series of a tenant at its active-series limit, or a nice-to-have
    /// series evicted to make room for a more important one.
    SeriesLimited,
    /// Ingest was saturated (requests in flight at the limit); statsd has no way to push back.
    Overloaded,
    /// In a cluster: no replica of the series' shard could take it (every
    /// one down or refusing); nothing of it was folded.
    Unavailable,
    /// The input series is named like a rollup rule's output: folding it
    /// would mix it into that output (or clash with its kind).
    OutputCollision,
}

impl DropReason {
    /// Every reason, in a stable order.
    pub const ALL: [DropReason; 14] = [
        DropReason::InvalidSeries,
        DropReason::InvalidValue,
        DropReason::InvalidTraceId,
        DropReason::TooLate,
        DropReason::TooFarInFuture,
        DropReason::DroppedByRule,
        DropReason::NoAggregation,
        DropReason::KindConflict,
        DropReason::OutOfOrder,
        DropReason::RateLimited,
        DropReason::SeriesLimited,
        DropReason::Overloaded,
        DropReason::Unavailable,
        DropReason::OutputCollision,
    ];

    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::InvalidSeries => "invalid_series",
            DropReason::InvalidValue => "invalid_value",
            DropReason::InvalidTraceId => "invalid_trace_id",
            DropReason::TooLate => "too_late",
            DropReason::TooFarInFuture => "too_far_in_future",
            DropReason::DroppedByRule => "dropped_by_rule",
            DropReason::NoAggregation => "no_aggregation",
            DropReason::KindConflict => "kind_conflict",
            DropReason::OutOfOrder => "out_of_order",
            DropReason::RateLimited => "rate_limited",
            DropReason::SeriesLimited => "series_limited",
            DropReason::Overloaded => "overloaded",
            DropReason::Unavailable => "unavailable",
            DropReason::OutputCollision => "output_collision",
        }
    }
}

/// One output (under one storage policy) refusing points: part of the
/// answer, so a point some outputs took and another refused is never
/// acknowledged as if all had taken it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputRefusal {
    /// Why (`too_late`: the window was flushed or is due; `kind_conflict`).
    pub reason: DropReason,
    /// The output's base name: the input's name for its own output, the
    /// rollup's `name` for a rollup ([`OTHER_OUTPUTS`] past the first few).
    pub output: Arc<str>,
    /// The storage policy of the refusing window.
    pub policy: StoragePolicy,
    /// Points refused.
    pub count: u64,
}

/// Distinct (reason, output, policy) entries an [`Outcome`] names; the rest
/// are counted under [`OTHER_OUTPUTS`], so a tally stays small.
pub const MAX_OUTPUT_REFUSALS: usize = 32;
/// Output name of refusals past [`MAX_OUTPUT_REFUSALS`].
pub const OTHER_OUTPUTS: &str = "<other outputs>";

/// The tally of one ingest call (or of many, merged).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Points folded into at least one window (see `partial` for those some
    /// other window refused).
    pub accepted: u64,
    /// Points of `accepted` that some of the output windows they were routed
    /// to refused (those refusals are in `output_refusals`): taken by their
    /// other outputs, so a retry would count them twice there.
    pub partial: u64,
    /// Every output window that refused a point, whether the point's other
    /// outputs took it (`partial`) or none did (then also in `rejected`).
    pub output_refusals: Vec<OutputRefusal>,
    /// Not a count: the identities of the admitted batch's series, in order,
    /// when the limits hashed them. The engine folds with these instead of
    /// hashing every series a second time; `merge` leaves them out.
    pub series_keys: Vec<SeriesKey>,
    /// Rejected points per reason, indexed like [`DropReason::ALL`].
    pub rejected: [u64; DropReason::ALL.len()],
    /// Points dropped by each drop rule (a subset of `DroppedByRule`).
    pub by_rule: Vec<(Arc<str>, u64)>,
    /// Points dropped by a tenant limit, by reason (`RateLimited`, `SeriesLimited`)
    /// and `limits.drop_priority` entry (empty for series no entry names).
    pub by_limit: Vec<(DropReason, Arc<str>, u64)>,
}

impl Outcome {
    /// Counts `points` rejected for `reason`.
    pub fn reject(&mut self, reason: DropReason, points: u64) {
        self.rejected[reason as usize] += points;
    }

    /// Counts `points` dropped by drop rule `rule`.
    pub fn reject_by_rule(&mut self, rule: &Arc<str>, points: u64) {
        self.reject(DropReason::DroppedByRule, points);
        match self.by_rule.iter_mut().find(|(name, _)| name == rule) {
            Some((_, count)) => *count += points,
            None => self.by_rule.push((Arc::clone(rule), points)),
        }
    }

    /// Counts `points` dropped by a tenant limit for `reason`, under drop-priority entry `rule`.
    pub fn reject_by_limit(&mut self, reason: DropReason, rule: &Arc<str>, points: u64) {
        self.reject(reason, points);
        match self
            .by_limit
            .iter_mut()
            .find(|(why, name, _)| *why == reason && name == rule)
        {
            Some((_, _, count)) => *count += points,
            None => self.by_limit.push((reason, Arc::clone(rule), points)),
        }
    }

    /// Counts `points` refused by output `output` under `policy` for `reason`.
    pub fn refuse_output(&mut self, reason: DropReason, output: &str, policy: StoragePolicy, points: u64) {
        let found = self
            .output_refusals
            .iter_mut()
            .find(|entry| entry.reason == reason && entry.policy == policy && &*entry.output == output);
        if let Some(entry) = found {
            entry.count += points;
            return;
        }
        if self.output_refusals.len() >= MAX_OUTPUT_REFUSALS && output != OTHER_OUTPUTS {
            return self.refuse_output(reason, OTHER_OUTPUTS, policy, points);
        }
        self.output_refusals.push(OutputRefusal {
            reason,
            output: Arc::from(output),
            policy,
            count: points,
        });
    }

    /// The answer's words for `output_refusals` (empty when none), e.g.
    /// `2 points taken by some of their outputs and refused by others; refused
    /// by output: load (10s:2d) too_late 2, load:all (10s:2d) too_late 1`.
    pub fn output_refusals_text(&self) -> String {
        if self.output_refusals.is_empty() {
            return String::new();
        }
        let listed: Vec<String> = self
            .output_refusals
            .iter()
            .map(|entry| {
                format!(
                    "{} ({}) {} {}",
                    entry.output,
                    entry.policy,
                    entry.reason.as_str(),
                    entry.count
                )
            })
            .collect();
        format!(
            "{} points taken by some of their outputs and refused by others; refused by output: {}",
            self.partial,
            listed.join(", ")
        )
    }

    /// Output-window refusals for `reason`, over every output.
    pub fn output_refusals_for(&self, reason: DropReason) -> u64 {
        self.output_refusals
            .iter()
            .filter(|entry| entry.reason == reason)
            .map(|entry| entry.count)
            .sum()
    }

    /// Points rejected for `reason`.
    pub fn rejected_for(&self, reason: DropReason) -> u64 {
        self.rejected[reason as usize]
    }

    /// Counts the points rejected for `reason` as accepted instead (a replay
    /// finding points whose window the store already holds).
    pub fn move_to_accepted(&mut self, reason: DropReason) {
        self.accepted += std::mem::take(&mut self.rejected[reason as usize]);
    }

    /// All rejected points.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().sum()
    }

    /// Adds another tally into this one.
    pub fn merge(&mut self, other: &Outcome) {
        self.accepted += other.accepted;
        self.partial += other.partial;
        for entry in &other.output_refusals {
            self.refuse_output(entry.reason, &entry.output, entry.policy, entry.count);
        }
        for (mine, theirs) in self.rejected.iter_mut().zip(other.rejected) {
            *mine += theirs;
        }
        for (rule, count) in &other.by_rule {
            match self.by_rule.iter_mut().find(|(name, _)| name == rule) {
                Some((_, mine)) => *mine += count,
                None => self.by_rule.push((Arc::clone(rule), *count)),
            }
        }
        for (reason, rule, count) in &other.by_limit {
            match self
                .by_limit
                .iter_mut()
                .find(|(why, name, _)| why == reason && name == rule)
            {
                Some((_, _, mine)) => *mine += count,
                None => self.by_limit.push((*reason, Arc::clone(rule), *count)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_merge_by_reason_and_rule() {
        let rule: Arc<str> = Arc::from("drop-debug");
        let mut a = Outcome {
            accepted: 3,
            ..Outcome::default()
        };
        a.reject(DropReason::TooLate, 2);
        a.reject_by_rule(&rule, 4);
        let mut b = Outcome::default();
        b.reject_by_rule(&rule, 1);
        b.merge(&a);
        assert_eq!(b.accepted, 3);
        assert_eq!(b.rejected_for(DropReason::TooLate), 2);
        assert_eq!(b.rejected_for(DropReason::DroppedByRule), 5);
        assert_eq!(b.by_rule, vec![(rule, 5)]);
        assert_eq!(b.rejected_total(), 7);
    }

    #[test]
    fn output_refusals_merge_and_stay_bounded() {
        let policy: StoragePolicy = "10s:2d".parse().unwrap();
        let mut a = Outcome::default();
        a.refuse_output(DropReason::TooLate, "load", policy, 2);
        a.refuse_output(DropReason::TooLate, "load:all", policy, 1);
        let mut b = Outcome {
            partial: 1,
            ..Outcome::default()
        };
        b.refuse_output(DropReason::TooLate, "load", policy, 3);
        b.merge(&a);
        assert_eq!(b.partial, 1);
        assert_eq!(b.output_refusals.len(), 2);
        assert_eq!(b.output_refusals[0].count, 5);
        assert_eq!(b.output_refusals_for(DropReason::TooLate), 6);
        for index in 0..100 {
            b.refuse_output(DropReason::TooLate, &format!("out{index}"), policy, 1);
        }
        assert_eq!(b.output_refusals.len(), MAX_OUTPUT_REFUSALS + 1);
        let other = b
            .output_refusals
            .iter()
            .find(|entry| &*entry.output == OTHER_OUTPUTS)
            .unwrap();
        assert_eq!(other.count, 100 - (MAX_OUTPUT_REFUSALS as u64 - 2));
        assert_eq!(b.output_refusals_for(DropReason::TooLate), 106);
    }

    #[test]
    fn limit_drops_merge_by_reason_and_rule() {
        let debug: Arc<str> = Arc::from("debug");
        let none: Arc<str> = Arc::from("");
        let mut a = Outcome::default();
        a.reject_by_limit(DropReason::RateLimited, &debug, 3);
        a.reject_by_limit(DropReason::SeriesLimited, &debug, 1);
        let mut b = Outcome::default();
        b.reject_by_limit(DropReason::RateLimited, &debug, 2);
        b.reject_by_limit(DropReason::RateLimited, &none, 4);
        b.merge(&a);
        assert_eq!(b.rejected_for(DropReason::RateLimited), 9);
        assert_eq!(b.rejected_for(DropReason::SeriesLimited), 1);
        assert_eq!(
            b.by_limit,
            vec![
                (DropReason::RateLimited, debug.clone(), 5),
                (DropReason::RateLimited, none, 4),
                (DropReason::SeriesLimited, debug, 1),
            ]
        );
    }
}
