//! One shard of the engine: the open windows of the outputs whose key hashes
//! here, and the per-policy watermark of what it has flushed, so a window is
//! never emitted twice and a late sample never lands in another window.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::aggregate::histogram::HistogramConfig;
use crate::aggregate::Aggregation;
use crate::model::{DropReason, Kind, Labels, NativeHistogram, SeriesKeyHasher, StoragePolicy, TraceContext};

use super::histogram_route::RoutedHistogram;
use super::route::{OutputTarget, PolicySlot};
use super::window::WindowState;

type KeyMap<V> = HashMap<u64, V, BuildHasherDefault<SeriesKeyHasher>>;

/// Above this many slot classes in a shard, a flush first drops the unused ones.
const MAX_CLASSES: usize = 64;

/// One sample on its way into one window of one output.
#[derive(Clone, Copy, Debug)]
pub struct RoutedSample {
    /// Index of the route in the batch's route list.
    pub route: u32,
    /// Index of the target within the route.
    pub target: u16,
    /// Index of the policy slot within the target.
    pub slot: u16,
    /// Index of the point within the batch (for the accepted/rejected tally).
    pub point: u32,
    /// Start of the window the sample belongs to.
    pub window_start_ms: i64,
    /// Event time.
    pub timestamp_ms: i64,
    /// The value.
    pub value: f64,
    /// Trace context, if the sample carried one.
    pub trace: Option<TraceContext>,
    /// Samples the point stands for.
    pub weight: u32,
    /// Key of the input series (gauge rollups track each input's last value).
    pub input: u64,
}

struct OpenWindow {
    /// The target that opened it: after a rules reload, windows of one output
    /// key may come from two rule sets, each with its own slots.
    target: Arc<OutputTarget>,
    slot: u16,
    /// Index in the shard's `classes` of what its slot says about flushing,
    /// so a flush reads it without dereferencing `target` (it sits in what was padding).
    class: u32,
    start_ms: i64,
    state: WindowState,
}

/// What a flush needs to know about a window's policy slot, kept once per
/// shard for every distinct slot (usually a handful), so the flush decides
/// due windows, watermarks and totals without a pointer chase per window.
#[derive(Clone, Debug)]
pub struct WindowClass {
    /// The slot's storage policy.
    pub policy: StoragePolicy,
    /// Allowed lateness after the window end.
    pub lateness_ms: i64,
    /// Whether a running total is kept across windows.
    pub keeps_total: bool,
    /// What to emit at flush.
    pub aggregations: Arc<[Aggregation]>,
}

impl WindowClass {
    fn of(slot: &PolicySlot) -> Self {
        WindowClass {
            policy: slot.policy,
            lateness_ms: slot.lateness_ms,
            keeps_total: slot.keeps_total,
            aggregations: Arc::clone(&slot.aggregations),
        }
    }

    fn matches(&self, slot: &PolicySlot) -> bool {
        self.policy == slot.policy
            && self.lateness_ms == slot.lateness_ms
            && self.keeps_total == slot.keeps_total
            && (Arc::ptr_eq(&self.aggregations, &slot.aggregations) || self.aggregations == slot.aggregations)
    }

    /// End of the window starting at `start_ms`.
    #[inline]
    pub fn end_ms(&self, start_ms: i64) -> i64 {
        start_ms + self.policy.resolution_ms as i64
    }

    /// Same as [`PolicySlot::is_due`] for the slot this class stands for.
    #[inline]
    fn is_due(&self, start_ms: i64, now_ms: i64) -> bool {
        self.end_ms(start_ms) + self.lateness_ms <= now_ms
    }
}

/// The index of `slot`'s class in `classes`, added when new. Only called when
/// a window is opened; the list holds one entry per distinct slot configuration.
fn class_of(classes: &mut Vec<WindowClass>, slot: &PolicySlot) -> u32 {
    match classes.iter().position(|class| class.matches(slot)) {
        Some(index) => index as u32,
        None => {
            classes.push(WindowClass::of(slot));
            (classes.len() - 1) as u32
        }
    }
}

struct TargetWindows {
    target: Arc<OutputTarget>,
    windows: Vec<OpenWindow>,
}

/// The running `total` of one output under one policy.
struct RunningTotal {
    policy: StoragePolicy,
    total: f64,
    last_end_ms: i64,
}

/// Adds `sum` to the running total of (`key`, `policy`) and returns the new total.
fn add_to_total(totals: &mut KeyMap<Vec<RunningTotal>>, key: u64, policy: StoragePolicy, sum: f64, end_ms: i64) -> f64 {
    let entries = totals.entry(key).or_default();
    let entry = match entries.iter_mut().position(|entry| entry.policy == policy) {
        Some(index) => &mut entries[index],
        None => {
            entries.push(RunningTotal {
                policy,
                total: 0.0,
                last_end_ms: end_ms,
            });
            entries.last_mut().expect("just pushed")
        }
    };
    entry.total += sum;
    entry.last_end_ms = end_ms;
    entry.total
}

/// A window taken out of a shard at flush, ready to be turned into records.
pub struct ClosedWindow {
    /// The output it belongs to.
    pub target: Arc<OutputTarget>,
    /// Index of its policy slot's class in the classes `Shard::take_windows` hands out with it.
    pub class: u32,
    /// Window start.
    pub start_ms: i64,
    /// The accumulated state.
    pub state: WindowState,
    /// True when flushed before the window ended (shutdown).
    pub partial: bool,
    /// For counters that keep a `total`: the running total including this window.
    pub running_total: Option<f64>,
    /// The shard's own reference to the output, when this was its last window:
    /// released with the window, outside the shard lock.
    pub retired: Option<Arc<OutputTarget>>,
}

/// The state of one shard; the engine wraps each in a mutex.
pub struct Shard {
    targets: KeyMap<TargetWindows>,
    /// Per policy, the end up to which every window has been flushed.
    flushed_until: Vec<(StoragePolicy, i64)>,
    rng: SmallRng,
    histogram: HistogramConfig,
    /// Running `total`s per output key, kept across windows.
    totals: KeyMap<Vec<RunningTotal>>,
    idle_series_ms: i64,
    last_total_eviction_ms: i64,
    /// The classes `OpenWindow::class` indexes.
    classes: Vec<WindowClass>,
    /// Stands in for the output of an entry dropped at flush, whose own
    /// reference leaves with its last window (see `take_windows`).
    placeholder: Arc<OutputTarget>,
}

impl Shard {
    /// An empty shard; `seed` makes exemplar picks reproducible in tests.
    /// Running totals idle for `idle_series_ms` are forgotten.
    pub fn new(seed: u64, histogram: HistogramConfig, idle_series_ms: u64) -> Self {
        Shard {
            targets: KeyMap::default(),
            flushed_until: Vec::new(),
            rng: SmallRng::seed_from_u64(seed),
            histogram,
            totals: KeyMap::default(),
            idle_series_ms: idle_series_ms as i64,
            last_total_eviction_ms: i64::MIN / 2,
            classes: Vec::new(),
            placeholder: Arc::new(OutputTarget {
                key: 0,
                tenant: Arc::from(""),
                labels: Arc::new(Labels::from_pairs::<&str, &str>([])),
                kind: Kind::Counter,
                rollup: false,
                slots: Arc::from([]),
            }),
        }
    }

    /// Looks up the windows of output `key` ahead of folding into them and
    /// asks for their memory, so the misses of a batch's outputs overlap.
    #[inline]
    pub fn prefetch_windows(&self, key: u64) {
        if let Some(entry) = self.targets.get(&key) {
            crate::prefetch::prefetch(entry.windows.as_ptr());
        }
    }

    /// The open window of output `key`'s slot `slot_index` starting at
    /// `window_start_ms`, if any: for the steps that prefetch into it.
    #[inline]
    pub fn peek_state(&self, key: u64, slot_index: u16, window_start_ms: i64) -> Option<&WindowState> {
        self.targets.get(&key).and_then(|entry| {
            entry
                .windows
                .iter()
                .find(|window| window.slot == slot_index && window.start_ms == window_start_ms)
                .map(|window| &window.state)
        })
    }

    /// Folds one routed sample. On refusal returns why; the caller tallies it.
    pub fn fold(&mut self, target: &Arc<OutputTarget>, sample: &RoutedSample, now_ms: i64) -> Result<(), DropReason> {
        let (state, rng) = self.window_mut(target, sample.slot, sample.window_start_ms, now_ms)?;
        state.record(
            sample.input,
            sample.value,
            sample.timestamp_ms,
            sample.trace,
            sample.weight,
            rng,
        );
        Ok(())
    }

    /// Folds one routed native histogram (a delta, or a gauge histogram) into
    /// a distribution window; any other kind of output refuses it as a kind
    /// conflict before a window is opened for it.
    pub fn fold_histogram(
        &mut self,
        target: &Arc<OutputTarget>,
        routed: &RoutedHistogram,
        histogram: &NativeHistogram,
        now_ms: i64,
    ) -> Result<(), DropReason> {
        if target.kind != Kind::Distribution {
            return Err(DropReason::KindConflict);
        }
        let (state, rng) = self.window_mut(target, routed.slot, routed.window_start_ms, now_ms)?;
        state.fold_histogram(histogram, rng)
    }

    /// The window of `target`'s slot `slot_index` starting at
    /// `window_start_ms`, opened if needed, and the shard's random source.
    fn window_mut(
        &mut self,
        target: &Arc<OutputTarget>,
        slot_index: u16,
        window_start_ms: i64,
        now_ms: i64,
    ) -> Result<(&mut WindowState, &mut SmallRng), DropReason> {
        let slot = &target.slots[slot_index as usize];
        if slot.is_due(window_start_ms, now_ms) || self.already_flushed(&slot.policy, window_start_ms) {
            return Err(DropReason::TooLate);
        }
        let entry = self.targets.entry(target.key).or_insert_with(|| TargetWindows {
            target: Arc::clone(target),
            windows: Vec::with_capacity(target.slots.len()),
        });
        if !Arc::ptr_eq(&entry.target, target) && entry.target.kind != target.kind {
            return Err(DropReason::KindConflict);
        }
        let window = match entry.windows.iter().position(|w| {
            w.slot == slot_index
                && w.start_ms == window_start_ms
                && w.target.slots[w.slot as usize].policy == slot.policy
        }) {
            Some(index) => &mut entry.windows[index],
            None => {
                entry.windows.push(OpenWindow {
                    target: Arc::clone(target),
                    slot: slot_index,
                    class: class_of(&mut self.classes, slot),
                    start_ms: window_start_ms,
                    state: WindowState::new(target.kind, target.rollup, &self.histogram),
                });
                entry.windows.last_mut().expect("just pushed")
            }
        };
        Ok((&mut window.state, &mut self.rng))
    }

    fn already_flushed(&self, policy: &StoragePolicy, window_start_ms: i64) -> bool {
        self.flushed_until
            .iter()
            .find(|(flushed, _)| flushed == policy)
            .is_some_and(|(_, until)| window_start_ms + policy.resolution_ms as i64 <= *until)
    }

    /// Per policy, the end up to which every window of this shard has been flushed.
    pub fn flushed_until(&self) -> &[(StoragePolicy, i64)] {
        &self.flushed_until
    }

    /// Raises the watermark of `policy` to `window_end_ms` (restart from a
    /// persisted watermark): windows ending at or before it are refused as late.
    pub fn mark_flushed(&mut self, policy: StoragePolicy, window_end_ms: i64) {
        match self.flushed_until.iter_mut().find(|(p, _)| *p == policy) {
            Some((_, until)) => *until = (*until).max(window_end_ms),
            None => self.flushed_until.push((policy, window_end_ms)),
        }
    }

    /// Moves every window that is due at `now_ms` (or every window, when
    /// `everything`) into `out`, oldest first per output, and forgets outputs
    /// left without windows. Counter windows whose slot keeps a `total` add
    /// their sum to the output's running total, in window order. `classes`
    /// receives the classes the taken windows' `class` indexes.
    ///
    /// Runs under the shard lock, so it reads only the windows themselves and
    /// the shard's few classes, never a window's `target`.
    pub fn take_windows(
        &mut self,
        now_ms: i64,
        everything: bool,
        out: &mut Vec<ClosedWindow>,
        classes: &mut Vec<WindowClass>,
    ) {
        if self.classes.len() > MAX_CLASSES {
            self.compact_classes();
        }
        // Ask for every entry's windows first, in a loop that does nothing else,
        // so the misses on them overlap instead of coming one per entry below.
        for entry in self.targets.values() {
            crate::prefetch::prefetch(entry.windows.as_ptr());
        }
        let mut flushed: Vec<(StoragePolicy, i64)> = Vec::new();
        let totals = &mut self.totals;
        let shard_classes = &self.classes;
        let placeholder = &self.placeholder;
        self.targets.retain(|key, entry| {
            if entry.windows.len() > 1 {
                entry.windows.sort_unstable_by_key(|window| window.start_ms);
            }
            let mut index = 0;
            while index < entry.windows.len() {
                let window = &entry.windows[index];
                let class = &shard_classes[window.class as usize];
                if !(everything || class.is_due(window.start_ms, now_ms)) {
                    index += 1;
                    continue;
                }
                let end_ms = class.end_ms(window.start_ms);
                match flushed.iter_mut().find(|(flushed, _)| *flushed == class.policy) {
                    Some((_, until)) => *until = (*until).max(end_ms),
                    None => flushed.push((class.policy, end_ms)),
                }
                let running_total = match &window.state {
                    WindowState::Counter(state) if class.keeps_total => {
                        Some(add_to_total(totals, *key, class.policy, state.sum, end_ms))
                    }
                    _ => None,
                };
                // `remove`, not `swap_remove`: later windows must stay in order for totals.
                let window = entry.windows.remove(index);
                out.push(ClosedWindow {
                    target: window.target,
                    class: window.class,
                    start_ms: window.start_ms,
                    state: window.state,
                    partial: end_ms > now_ms,
                    running_total,
                    retired: None,
                });
            }
            if entry.windows.is_empty() {
                // The output's last reference may go with the entry: hand it to
                // the last window taken, to be released after the lock, where
                // building the records has touched it anyway.
                if let Some(last) = out.last_mut().filter(|last| Arc::ptr_eq(&last.target, &entry.target)) {
                    last.retired = Some(std::mem::replace(&mut entry.target, Arc::clone(placeholder)));
                }
                return false;
            }
            true
        });
        classes.clone_from(&self.classes);
        for (policy, end_ms) in flushed {
            self.mark_flushed(policy, end_ms);
        }
        if now_ms - self.last_total_eviction_ms >= 60_000 {
            self.last_total_eviction_ms = now_ms;
            let idle_ms = self.idle_series_ms;
            self.totals.retain(|_, totals| {
                totals.retain(|total| now_ms - total.last_end_ms < idle_ms);
                !totals.is_empty()
            });
        }
    }

    /// Drops the classes no open window uses any more (rules reloaded many
    /// times with new aggregations) and renumbers the windows' classes.
    fn compact_classes(&mut self) {
        let mut used = vec![false; self.classes.len()];
        for window in self.targets.values().flat_map(|entry| &entry.windows) {
            used[window.class as usize] = true;
        }
        let mut renumbered = vec![0u32; self.classes.len()];
        let mut kept = Vec::new();
        for (index, class) in std::mem::take(&mut self.classes).into_iter().enumerate() {
            if used[index] {
                renumbered[index] = kept.len() as u32;
                kept.push(class);
            }
        }
        for window in self.targets.values_mut().flat_map(|entry| &mut entry.windows) {
            window.class = renumbered[window.class as usize];
        }
        self.classes = kept;
    }

    /// Distinct slot classes the shard keeps (tests).
    #[cfg(test)]
    pub fn class_count(&self) -> usize {
        self.classes.len()
    }

    /// Outputs with at least one open window.
    pub fn active_outputs(&self) -> usize {
        self.targets.len()
    }

    /// Adds, per (tenant, policy), the outputs with an open window and the open windows.
    pub fn count_open(&self, into: &mut std::collections::BTreeMap<(Arc<str>, StoragePolicy), (u64, u64)>) {
        let mut policies: Vec<StoragePolicy> = Vec::new();
        for entry in self.targets.values() {
            policies.clear();
            for window in &entry.windows {
                let policy = window.target.slots[window.slot as usize].policy;
                let counts = into.entry((Arc::clone(&entry.target.tenant), policy)).or_default();
                counts.1 += 1;
                if !policies.contains(&policy) {
                    policies.push(policy);
                    counts.0 += 1;
                }
            }
        }
    }

    /// Open windows across all outputs.
    pub fn open_windows(&self) -> usize {
        self.targets.values().map(|entry| entry.windows.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::route::{SeriesRoute, SlotSets};
    use crate::engine::EngineSettings;
    use crate::model::Labels;
    use crate::rules::RuleSet;

    fn sample(window_start_ms: i64, value: f64) -> RoutedSample {
        RoutedSample {
            route: 0,
            target: 0,
            slot: 0,
            point: 0,
            window_start_ms,
            timestamp_ms: window_start_ms + 1,
            value,
            trace: None,
            weight: 1,
            input: 7,
        }
    }

    #[test]
    fn peek_state_finds_exactly_the_window_a_sample_folds_into() {
        let rules = RuleSet::default_rules();
        let labels = Labels::from_pairs([("__name__", "requests")]);
        let plan = rules.resolve(&labels, Kind::Counter);
        let settings = EngineSettings::default();
        let route = SeriesRoute::build(&plan, &Arc::from("t"), &settings, Kind::Counter, &SlotSets::default());
        let target = &route.targets[0];
        let resolution_ms = target.slots[0].policy.resolution_ms as i64;
        let mut shard = Shard::new(1, HistogramConfig::default(), 60_000);
        let (first, second) = (10 * resolution_ms, 11 * resolution_ms);
        shard.fold(target, &sample(first, 2.0), first).unwrap();
        shard.fold(target, &sample(second, 5.0), first).unwrap();
        let sum = |state: Option<&WindowState>| match state {
            Some(WindowState::Counter(counter)) => Some(counter.sum),
            _ => None,
        };
        assert_eq!(sum(shard.peek_state(target.key, 0, first)), Some(2.0));
        assert_eq!(sum(shard.peek_state(target.key, 0, second)), Some(5.0));
        assert!(shard.peek_state(target.key, 0, second + resolution_ms).is_none());
        assert!(shard.peek_state(target.key, 1, first).is_none());
        assert!(shard.peek_state(target.key ^ 1, 0, first).is_none());
    }
}
