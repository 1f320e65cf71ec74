//! A gauge rollup's `last` is the sum of each input's latest value. An input
//! that misses a window still counts there with the value it held: each
//! shard keeps, per rollup output and policy, the last value of every input
//! seen, at most `engine.rollup_last_max_inputs` of them, each forgotten
//! once it has sent nothing for `engine.rollup_last_idle_ms`.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use crate::aggregate::GaugeState;
use crate::model::{SeriesKeyHasher, StoragePolicy};

/// One input's held value.
#[derive(Clone, Copy, Debug)]
struct Held {
    input: u64,
    timestamp_ms: i64,
    value: f64,
    /// End of the last window the input sent a point in.
    seen_end_ms: i64,
}

/// The held inputs of one rollup output under one policy.
#[derive(Debug)]
struct HeldInputs {
    policy: StoragePolicy,
    inputs: Vec<Held>,
}

/// Every gauge rollup output's held inputs in one shard, by output key.
#[derive(Debug)]
pub(super) struct HeldLast {
    by_output: HashMap<u64, Vec<HeldInputs>, BuildHasherDefault<SeriesKeyHasher>>,
    max_inputs: usize,
    idle_ms: i64,
}

impl HeldLast {
    pub(super) fn new(max_inputs: usize, idle_ms: u64) -> Self {
        HeldLast {
            by_output: HashMap::default(),
            max_inputs,
            idle_ms: idle_ms as i64,
        }
    }

    /// Called with each rollup gauge window of output `key` as it closes, in
    /// window order: learns the inputs the window saw, forgets idle ones, and
    /// adds the held value of every input the window missed to `state`.
    pub(super) fn carry(&mut self, key: u64, policy: StoragePolicy, state: &mut GaugeState, end_ms: i64) {
        let entries = self.by_output.entry(key).or_default();
        let position = match entries.iter().position(|entry| entry.policy == policy) {
            Some(index) => index,
            None => {
                entries.push(HeldInputs {
                    policy,
                    inputs: Vec::new(),
                });
                entries.len() - 1
            }
        };
        let held = &mut entries[position].inputs;
        for &(input, timestamp_ms, value) in state.rollup_inputs() {
            let seen = Held {
                input,
                timestamp_ms,
                value,
                seen_end_ms: end_ms,
            };
            match held.iter_mut().find(|held| held.input == input) {
                Some(entry) if timestamp_ms >= entry.timestamp_ms => *entry = seen,
                Some(entry) => entry.seen_end_ms = end_ms,
                None => held.push(seen),
            }
        }
        let idle_ms = self.idle_ms;
        held.retain(|entry| end_ms - entry.seen_end_ms < idle_ms);
        if held.len() > self.max_inputs {
            // Past the bound the inputs heard from longest ago go first.
            held.sort_unstable_by_key(|entry| std::cmp::Reverse(entry.seen_end_ms));
            held.truncate(self.max_inputs);
        }
        for entry in held.iter().filter(|entry| entry.seen_end_ms < end_ms) {
            state.hold(entry.input, entry.timestamp_ms, entry.value);
        }
    }

    /// Forgets outputs none of whose inputs sent anything in the last `idle_ms` before `now_ms`.
    pub(super) fn evict_idle(&mut self, now_ms: i64) {
        let idle_ms = self.idle_ms;
        self.by_output.retain(|_, entries| {
            entries.retain(|entry| entry.inputs.iter().any(|held| now_ms - held.seen_end_ms < idle_ms));
            !entries.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(inputs: &[(u64, i64, f64)]) -> GaugeState {
        let mut state = GaugeState::for_rollup();
        for &(input, timestamp_ms, value) in inputs {
            state.record(input, value, timestamp_ms);
        }
        state
    }

    #[test]
    fn a_missed_window_keeps_the_inputs_value_until_it_is_idle() {
        let policy: StoragePolicy = "10s:1h".parse().unwrap();
        let mut held = HeldLast::new(100, 30_000);
        let mut first = window(&[(1, 1_000, 100.0), (2, 2_000, 50.0)]);
        held.carry(7, policy, &mut first, 10_000);
        assert_eq!(first.last(), 150.0);
        // Input 2 misses the second window: its 50 still counts.
        let mut second = window(&[(1, 11_000, 120.0)]);
        held.carry(7, policy, &mut second, 20_000);
        assert_eq!(second.last(), 170.0);
        assert_eq!(
            (second.count(), second.sum()),
            (1, 120.0),
            "only the window's own samples"
        );
        // 30 s after it was last heard from, input 2 no longer counts.
        let mut later = window(&[(1, 31_000, 130.0)]);
        held.carry(7, policy, &mut later, 40_000);
        assert_eq!(later.last(), 130.0);
    }

    #[test]
    fn past_the_bound_the_longest_silent_inputs_go() {
        let policy: StoragePolicy = "10s:1h".parse().unwrap();
        let mut held = HeldLast::new(2, 600_000);
        let mut first = window(&[(1, 1_000, 1.0)]);
        held.carry(7, policy, &mut first, 10_000);
        let mut second = window(&[(2, 11_000, 10.0), (3, 12_000, 100.0)]);
        held.carry(7, policy, &mut second, 20_000);
        let mut third = window(&[(3, 21_000, 200.0)]);
        held.carry(7, policy, &mut third, 30_000);
        assert_eq!(third.last(), 210.0, "input 1, heard from longest ago, was dropped");
        held.evict_idle(30_000 + 600_000);
        assert!(held.by_output.is_empty());
    }
}
