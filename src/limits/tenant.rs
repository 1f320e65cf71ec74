//! One tenant's limit state: its token bucket and its active input series,
//! each with the drop-priority class it was matched to once. Nice-to-have
//! series can be evicted to make room for more important new ones.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use crate::config::TenantLimit;
use crate::model::SeriesKeyHasher;

use super::bucket::TokenBucket;

/// A tracked series: when it was last seen and its class (index into the
/// drop-priority list; the list's length means "no entry names it").
#[derive(Clone, Copy, Debug)]
pub(super) struct Tracked {
    pub last_seen_ms: i64,
    pub class: u16,
}

/// What happened to a new series at the active-series limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum NewSeries {
    /// Under the limit, or room was made.
    Admitted,
    /// At the limit, nothing more droppable to evict.
    Refused,
}

pub(super) struct TenantState {
    pub limit: TenantLimit,
    pub bucket: Option<TokenBucket>,
    pub series: HashMap<u64, Tracked, BuildHasherDefault<SeriesKeyHasher>>,
    /// Per droppable class: keys that may be evicted (some may be gone already).
    candidates: Vec<Vec<u64>>,
    pub last_seen_ms: i64,
}

impl TenantState {
    pub fn new(limit: TenantLimit, droppable_classes: usize, now_ms: i64) -> Self {
        TenantState {
            limit,
            bucket: limit
                .samples_per_second
                .map(|rate| TokenBucket::new(rate, limit.burst_samples, now_ms)),
            series: HashMap::default(),
            candidates: vec![Vec::new(); droppable_classes],
            last_seen_ms: now_ms,
        }
    }

    /// Admits new series `key` of `class`, evicting the most droppable series
    /// of a lower class when at the limit.
    pub fn admit_new(&mut self, key: u64, class: u16, now_ms: i64) -> NewSeries {
        if let Some(max) = self.limit.max_active_series {
            if self.series.len() as u64 >= max && !self.evict_below(class) {
                return NewSeries::Refused;
            }
        }
        self.series.insert(
            key,
            Tracked {
                last_seen_ms: now_ms,
                class,
            },
        );
        if let Some(candidates) = self.candidates.get_mut(class as usize) {
            candidates.push(key);
        }
        NewSeries::Admitted
    }

    /// Evicts one series of the most droppable class below `class`; false when there is none.
    fn evict_below(&mut self, class: u16) -> bool {
        let classes = (class as usize).min(self.candidates.len());
        for victim_class in 0..classes {
            while let Some(key) = self.candidates[victim_class].pop() {
                if self
                    .series
                    .get(&key)
                    .is_some_and(|tracked| tracked.class as usize == victim_class)
                {
                    self.series.remove(&key);
                    return true;
                }
            }
        }
        false
    }

    /// Forgets series silent for `idle_ms`; drops stale eviction candidates.
    pub fn evict_idle(&mut self, now_ms: i64, idle_ms: i64) {
        self.series
            .retain(|_, tracked| now_ms.saturating_sub(tracked.last_seen_ms) <= idle_ms);
        for (class, candidates) in self.candidates.iter_mut().enumerate() {
            let series = &self.series;
            candidates.retain(|key| series.get(key).is_some_and(|tracked| tracked.class as usize == class));
        }
    }
}
