//! Rule sets by event time: a reloaded rule set takes over at a window boundary
//! aligned to every resolution either set uses, so a window is folded under one
//! rule set only; the older set keeps routing earlier samples until its last
//! window is due. The engine passes time in; nothing here reads a clock.

use std::sync::Arc;

use crate::model::StoragePolicy;
use crate::rules::{MatchCache, RuleSet};

use super::route::{SeriesRoute, SlotSets};
use super::settings::EngineSettings;

/// One rule set and the routes built from it, in force for events at or after `from_ms`.
pub struct Generation {
    /// The rules.
    pub rules: Arc<RuleSet>,
    /// Routes of series under these rules.
    pub routes: MatchCache<SeriesRoute>,
    /// The policy slot lists the routes' outputs share.
    pub slot_sets: SlotSets,
    /// First event time this rule set applies to (`i64::MIN` for the first set).
    pub from_ms: i64,
    /// Latest window end plus lateness of any policy the set uses: once a later
    /// set has taken over for `from_ms` T, this set is done at T + `max_lateness_ms`.
    max_lateness_ms: i64,
}

impl Generation {
    /// A generation of `rules` starting at `from_ms`.
    pub fn new(rules: Arc<RuleSet>, from_ms: i64, settings: &EngineSettings) -> Self {
        let max_lateness_ms = rules
            .storage_policies()
            .iter()
            .map(|policy| settings.lateness_ms(policy) as i64)
            .max()
            .unwrap_or(0);
        Generation {
            rules,
            routes: MatchCache::new(),
            slot_sets: SlotSets::default(),
            from_ms,
            max_lateness_ms,
        }
    }
}

/// Index of the generation in force for an event at `timestamp_ms`; `None`
/// when it is older than every kept generation (its windows are all due).
#[inline]
pub fn generation_at(generations: &[Arc<Generation>], timestamp_ms: i64) -> Option<usize> {
    if generations.len() == 1 {
        return (timestamp_ms >= generations[0].from_ms).then_some(0);
    }
    generations
        .iter()
        .rposition(|generation| generation.from_ms <= timestamp_ms)
}

/// Event-time range `[from, until)` of generation `index`.
pub fn generation_range(generations: &[Arc<Generation>], index: usize) -> (i64, i64) {
    let until = generations.get(index + 1).map_or(i64::MAX, |next| next.from_ms);
    (generations[index].from_ms, until)
}

/// First boundary strictly after `after_ms` that starts a window of every
/// policy in `policies` (multiple of their least common resolution).
pub fn next_common_boundary(policies: &[StoragePolicy], after_ms: i64) -> i64 {
    let step = policies
        .iter()
        .map(|policy| policy.resolution_ms.max(1))
        .fold(1u64, lcm)
        .min(i64::MAX as u64 / 4) as i64;
    (after_ms.div_euclid(step) + 1) * step
}

fn lcm(a: u64, b: u64) -> u64 {
    let gcd = {
        let (mut x, mut y) = (a, b);
        while y != 0 {
            (x, y) = (y, x % y);
        }
        x
    };
    (a / gcd).saturating_mul(b)
}

/// Generations still needed at `now_ms`: drops each one whose successor has
/// been in force for longer than its longest lateness (all its windows are due).
pub fn retire(generations: &[Arc<Generation>], now_ms: i64) -> Option<Vec<Arc<Generation>>> {
    let first_kept = (0..generations.len() - 1)
        .take_while(|&index| {
            let next_from = generations[index + 1].from_ms;
            now_ms >= next_from.saturating_add(generations[index].max_lateness_ms)
        })
        .count();
    (first_kept > 0).then(|| generations[first_kept..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundary_is_common_to_every_resolution() {
        let policies = [
            "10s:1d".parse::<StoragePolicy>().unwrap(),
            "1m:1d".parse::<StoragePolicy>().unwrap(),
            "15s:1d".parse::<StoragePolicy>().unwrap(),
        ];
        assert_eq!(next_common_boundary(&policies, 61_000), 120_000);
        assert_eq!(next_common_boundary(&policies, 120_000), 180_000);
        assert_eq!(next_common_boundary(&policies, -1), 0);
    }
}
