//! Running totals kept across windows for outputs with a `total`: a
//! counter's re-accumulated sum, a distribution's count and sum, per output
//! and storage policy, forgotten once idle.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use crate::model::{SeriesKeyHasher, StoragePolicy};

/// The running `total` of one output under one policy.
#[derive(Debug)]
struct RunningTotal {
    policy: StoragePolicy,
    totals: Totals,
    last_end_ms: i64,
}

/// The running totals of an output that keeps a `total`, including the
/// window they come with: cumulative series that downstream `rate()` and
/// `increase()` read.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Totals {
    /// Sum of every window's sum (a counter's increase, a distribution's values).
    pub sum: f64,
    /// Sum of every window's sample count (distributions only).
    pub count: f64,
    /// True for the window that started these totals: the sink writes a zero
    /// before it, so `increase()` over a range holding that window sees it.
    pub first: bool,
}

/// The running totals of every output of one shard, by output key.
#[derive(Debug, Default)]
pub(super) struct RunningTotals {
    by_output: HashMap<u64, Vec<RunningTotal>, BuildHasherDefault<SeriesKeyHasher>>,
}

impl RunningTotals {
    /// Adds a window's `sum` and `count` to the running totals of (`key`,
    /// `policy`) and returns the new totals.
    pub(super) fn add(&mut self, key: u64, policy: StoragePolicy, (sum, count): (f64, f64), end_ms: i64) -> Totals {
        let entries = self.by_output.entry(key).or_default();
        let entry = match entries.iter_mut().position(|entry| entry.policy == policy) {
            Some(index) => {
                entries[index].totals.first = false;
                &mut entries[index]
            }
            None => {
                entries.push(RunningTotal {
                    policy,
                    totals: Totals {
                        first: true,
                        ..Totals::default()
                    },
                    last_end_ms: end_ms,
                });
                entries.last_mut().expect("just pushed")
            }
        };
        entry.totals.sum += sum;
        entry.totals.count += count;
        entry.last_end_ms = end_ms;
        entry.totals
    }

    /// Forgets the totals of outputs with no window ending in the last `idle_ms`.
    pub(super) fn evict_idle(&mut self, now_ms: i64, idle_ms: i64) {
        self.by_output.retain(|_, totals| {
            totals.retain(|total| now_ms - total.last_end_ms < idle_ms);
            !totals.is_empty()
        });
    }
}
