//! What a window will emit, read from its rule's aggregations when the window
//! opens: the quantiles whose exemplars it links and the thresholds it counts.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::aggregate::Aggregation;

/// The linked and counted parts of a window's aggregations. Shared by every
/// window of a policy slot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkPlan {
    /// Quantiles in `[0, 1]` whose exemplars the window links, ascending, distinct.
    pub quantiles: Box<[f64]>,
    /// Thresholds of `above(t)` and `below(t)`, ascending, distinct: the
    /// window counts the samples above each one exactly as they arrive.
    pub thresholds: Box<[f64]>,
    /// How many of the slowest traced samples the window keeps (the
    /// `above(t)` selections); 0 without an `above`.
    pub slowest: u16,
    /// How many of the fastest traced samples the window keeps (the
    /// `below(t)` selections); 0 without a `below`.
    pub fastest: u16,
}

impl LinkPlan {
    /// The plan of a window emitting `aggregations`, whose `above`/`below`
    /// outputs select up to `max_traces` traces each; `None` when the window
    /// emits nothing that links or counts beyond the histogram.
    pub fn of(aggregations: &[Aggregation], max_traces: usize) -> Option<Arc<LinkPlan>> {
        let max_traces = max_traces.clamp(1, usize::from(u16::MAX)) as u16;
        let mut quantiles = Vec::new();
        let mut thresholds = Vec::new();
        let (mut slowest, mut fastest) = (0, 0);
        for aggregation in aggregations {
            match *aggregation {
                Aggregation::Quantile(q) => quantiles.push(q),
                Aggregation::Above(t) => {
                    thresholds.push(t);
                    slowest = max_traces;
                }
                Aggregation::Below(t) => {
                    thresholds.push(t);
                    fastest = max_traces;
                }
                _ => {}
            }
        }
        for list in [&mut quantiles, &mut thresholds] {
            list.sort_by(f64::total_cmp);
            list.dedup();
        }
        if quantiles.is_empty() && thresholds.is_empty() {
            return None;
        }
        Some(Arc::new(LinkPlan {
            quantiles: quantiles.into(),
            thresholds: thresholds.into(),
            slowest,
            fastest,
        }))
    }

    /// Position of `threshold` in `thresholds`, if the plan counts it.
    pub fn threshold_index(&self, threshold: f64) -> Option<usize> {
        self.thresholds.iter().position(|t| *t == threshold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(list: &[&str]) -> Vec<Aggregation> {
        list.iter().map(|text| text.parse().unwrap()).collect()
    }

    #[test]
    fn reads_quantiles_and_thresholds_once_each() {
        let plan = LinkPlan::of(
            &parse(&["count", "p99", "p50", "above(1.5)", "below(0.2)", "above(1.5)", "p99"]),
            7,
        )
        .unwrap();
        assert_eq!(&*plan.quantiles, &[0.5, 0.99]);
        assert_eq!(&*plan.thresholds, &[0.2, 1.5]);
        assert_eq!((plan.slowest, plan.fastest), (7, 7));
        assert_eq!(plan.threshold_index(1.5), Some(1));
        assert_eq!(plan.threshold_index(1.0), None);
        let quantiles_only = LinkPlan::of(&parse(&["p50"]), 7).unwrap();
        assert_eq!((quantiles_only.slowest, quantiles_only.fastest), (0, 0));
        assert_eq!(LinkPlan::of(&parse(&["count", "sum", "histogram"]), 7), None);
    }
}
