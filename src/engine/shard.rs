//! One shard of the engine: the open windows of the outputs whose key hashes
//! here, and the per-policy watermark of what it has flushed, so a window is
//! never emitted twice and a late sample never lands in another window.

use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::aggregate::histogram::HistogramConfig;
use crate::aggregate::Aggregation;
use crate::config::defaults;
use crate::model::{DropReason, Kind, NativeHistogram, StoragePolicy, TraceContext};

use super::held_last::HeldLast;
use super::histogram_route::RoutedHistogram;
use super::route::{OutputTarget, PolicySlot};
use super::totals::RunningTotals;
pub use super::totals::Totals;
use super::window::WindowState;
use crate::rules::{Keyed, LineTable};

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
    /// Key of the output (the target's), carried so the shard's passes find
    /// the window from the sample alone.
    pub output: u64,
    /// Kind of the output, for the same reason.
    pub kind: Kind,
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

/// Whether `a` and `b` fold into one window: same route and target (so the
/// same output and slot list), slot, output key and window start.
#[inline]
pub fn same_window(a: &RoutedSample, b: &RoutedSample) -> bool {
    a.route == b.route
        && a.target == b.target
        && a.slot == b.slot
        && a.output == b.output
        && a.window_start_ms == b.window_start_ms
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

/// The open windows of one output, in one cache line: the usual output (one
/// policy, one open window) keeps its window inline, so folding into it
/// touches this line and the table's control bytes only.
#[repr(align(64))]
pub struct OutputWindows {
    /// The output's key (`OutputTarget::key`).
    key: u64,
    /// Never empty while in the table: an output without windows leaves it.
    windows: Windows,
}

/// An output's open windows: one inline, or more (a second policy, or the
/// next window during the previous one's lateness) on the heap until a flush
/// leaves one. As large as one window: `Many` lives beside `One`'s niche.
enum Windows {
    One(OpenWindow),
    Many(Vec<OpenWindow>),
}

impl Windows {
    /// No windows, allocating nothing (only while a flush takes them).
    const NONE: Windows = Windows::Many(Vec::new());

    #[inline]
    fn as_slice(&self) -> &[OpenWindow] {
        match self {
            Windows::One(window) => std::slice::from_ref(window),
            Windows::Many(windows) => windows,
        }
    }

    #[inline]
    fn as_mut_slice(&mut self) -> &mut [OpenWindow] {
        match self {
            Windows::One(window) => std::slice::from_mut(window),
            Windows::Many(windows) => windows,
        }
    }

    /// Adds `window` and returns it in place.
    fn push(&mut self, window: OpenWindow) -> &mut OpenWindow {
        let mut windows = match std::mem::replace(self, Windows::NONE) {
            Windows::One(first) => {
                let mut windows = Vec::with_capacity(2);
                windows.push(first);
                windows
            }
            Windows::Many(windows) => windows,
        };
        windows.push(window);
        *self = Windows::Many(windows);
        match self {
            Windows::Many(windows) => windows.last_mut().expect("just pushed"),
            Windows::One(_) => unreachable!("just made many"),
        }
    }

    /// The heap buffer of `Many`, for a prefetch.
    #[inline]
    fn heap(&self) -> Option<*const OpenWindow> {
        match self {
            Windows::One(_) => None,
            Windows::Many(windows) => Some(windows.as_ptr()),
        }
    }
}

const _: () = assert!(std::mem::size_of::<Windows>() == std::mem::size_of::<OpenWindow>());

const _: () = assert!(
    std::mem::size_of::<Option<OutputWindows>>() == 64,
    "one cache line per output"
);

impl Keyed for OutputWindows {
    #[inline]
    fn key(&self) -> u64 {
        self.key
    }
}

/// The entry type of a shard's table, for [`crate::rules::ProbeHint::prefetch`].
pub type TableEntry = OutputWindows;

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
    /// For outputs that keep a `total`: the running totals including this window.
    pub running_total: Option<Totals>,
}

/// The state of one shard; the engine wraps each in a mutex.
pub struct Shard {
    /// Open windows by output. The windows hold the only references the shard
    /// keeps to outputs, so an output's last reference leaves with its last
    /// window, released after the shard lock when its records are built.
    outputs: LineTable<OutputWindows>,
    /// Per policy, the end up to which every window has been flushed.
    flushed_until: Vec<(StoragePolicy, i64)>,
    rng: SmallRng,
    histogram: HistogramConfig,
    /// Distinct members a set window counts exactly (`engine.set_max_exact_values`).
    set_max_exact: usize,
    /// Running `total`s per output key, kept across windows.
    totals: RunningTotals,
    idle_series_ms: i64,
    last_total_eviction_ms: i64,
    /// The classes `OpenWindow::class` indexes.
    classes: Vec<WindowClass>,
    /// Gauge rollup inputs' last values, held across windows they miss.
    held_last: HeldLast,
}

impl Shard {
    /// An empty shard; `seed` makes exemplar picks reproducible in tests.
    /// Running totals idle for `idle_series_ms` are forgotten; set windows
    /// count exactly up to `set_max_exact` distinct members.
    pub fn new(seed: u64, histogram: HistogramConfig, idle_series_ms: u64, set_max_exact: usize) -> Self {
        Shard {
            outputs: LineTable::default(),
            flushed_until: Vec::new(),
            rng: SmallRng::seed_from_u64(seed),
            histogram,
            set_max_exact,
            totals: RunningTotals::default(),
            idle_series_ms: idle_series_ms as i64,
            last_total_eviction_ms: i64::MIN / 2,
            classes: Vec::new(),
            held_last: HeldLast::new(defaults::ROLLUP_LAST_MAX_INPUTS, defaults::ROLLUP_LAST_IDLE_MS),
        }
    }

    /// The same shard holding at most `max_inputs` gauge rollup inputs per
    /// output and policy, each for `idle_ms` after its last point.
    pub fn with_held_last(mut self, max_inputs: usize, idle_ms: u64) -> Self {
        self.held_last = HeldLast::new(max_inputs, idle_ms);
        self
    }

    /// The windows of output `key`, if it has any.
    #[inline]
    fn output(&self, key: u64) -> Option<&OutputWindows> {
        self.outputs.get(key)
    }

    /// Where the table of outputs is now, for ingest's probe hint.
    #[inline]
    pub fn table_layout(&self) -> (usize, u32) {
        self.outputs.layout()
    }

    /// Looks up the windows of output `key` ahead of folding into them (the
    /// lookup loads the usual output's window with its entry) and asks for
    /// windows kept on the heap, so the misses of a batch's outputs overlap.
    #[inline]
    pub fn prefetch_windows(&self, key: u64) {
        if let Some(heap) = self.output(key).and_then(|entry| entry.windows.heap()) {
            crate::prefetch::prefetch(heap);
        }
    }

    /// The open window of output `key`'s slot `slot_index` starting at
    /// `window_start_ms`, if any: for the steps that prefetch into it.
    #[inline]
    pub fn peek_state(&self, key: u64, slot_index: u16, window_start_ms: i64) -> Option<&WindowState> {
        self.output(key).and_then(|entry| {
            entry
                .windows
                .as_slice()
                .iter()
                .find(|window| window.slot == slot_index && window.start_ms == window_start_ms)
                .map(|window| &window.state)
        })
    }

    /// Folds one routed sample into the window of output `sample.output`
    /// (the key of `target`), whose slot `sample.slot` is `slot`. `target`
    /// itself is read only to open a window, or after a reload. On refusal
    /// returns why; the caller tallies it. The engine folds in runs
    /// ([`Shard::fold_run`]); the shard's tests fold one sample at a time.
    #[cfg(test)]
    pub fn fold(
        &mut self,
        target: &Arc<OutputTarget>,
        slot: &PolicySlot,
        sample: &RoutedSample,
        now_ms: i64,
    ) -> Result<(), DropReason> {
        self.fold_run(target, slot, std::slice::from_ref(sample), now_ms)
    }

    /// Folds a run of routed samples that all go to one window (the same
    /// route, target, slot, output and window start, as `same_window` says)
    /// with one window lookup: a series sending many points per batch pays
    /// the lookup once. On refusal every sample of the run is refused, as
    /// each would have been alone.
    pub fn fold_run(
        &mut self,
        target: &Arc<OutputTarget>,
        slot: &PolicySlot,
        run: &[RoutedSample],
        now_ms: i64,
    ) -> Result<(), DropReason> {
        let Some(first) = run.first() else {
            return Ok(());
        };
        debug_assert!(run.iter().all(|sample| same_window(first, sample)));
        let (state, rng) = self.window_mut(target, first.output, slot, first.slot, first.window_start_ms, now_ms)?;
        for sample in run {
            state.record(
                sample.input,
                sample.value,
                sample.timestamp_ms,
                sample.trace,
                sample.weight,
                rng,
            );
        }
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
        let slot = &target.slots[routed.slot as usize];
        let (state, rng) = self.window_mut(target, target.key, slot, routed.slot, routed.window_start_ms, now_ms)?;
        state.fold_histogram(histogram, rng)
    }

    /// The window of `target`'s (key `key`) slot `slot_index` (`slot`)
    /// starting at `window_start_ms`, opened if needed, and the shard's
    /// random source.
    fn window_mut(
        &mut self,
        target: &Arc<OutputTarget>,
        key: u64,
        slot: &PolicySlot,
        slot_index: u16,
        window_start_ms: i64,
        now_ms: i64,
    ) -> Result<(&mut WindowState, &mut SmallRng), DropReason> {
        if slot.is_due(window_start_ms, now_ms) || self.already_flushed(&slot.policy, window_start_ms) {
            return Err(DropReason::TooLate);
        }
        let set_max_exact = self.set_max_exact;
        let open = |classes: &mut Vec<WindowClass>, histogram: &HistogramConfig| OpenWindow {
            target: Arc::clone(target),
            slot: slot_index,
            class: class_of(classes, slot),
            start_ms: window_start_ms,
            state: WindowState::new(
                target.kind,
                target.rollup,
                histogram,
                slot.links.as_ref(),
                set_max_exact,
            ),
        };
        let (classes, histogram) = (&mut self.classes, &self.histogram);
        let (entry, inserted) = self.outputs.get_or_insert_with(key, || OutputWindows {
            key,
            windows: Windows::One(open(classes, histogram)),
        });
        if inserted {
            let Windows::One(window) = &mut entry.windows else {
                unreachable!("inserted one window")
            };
            return Ok((&mut window.state, &mut self.rng));
        }
        // Every window of an output has the kind of the first: the check
        // below let it in. Another target (a reloaded rule set, or a 64-bit
        // key collision) of another kind is refused.
        if let Some(first) = entry.windows.as_slice().first() {
            if !Arc::ptr_eq(&first.target, target) && first.target.kind != target.kind {
                return Err(DropReason::KindConflict);
            }
        }
        // The window's own target is read only when it is not `target`
        // (after a reload), so the usual fold never leaves this entry.
        let found = entry.windows.as_slice().iter().position(|w| {
            w.slot == slot_index
                && w.start_ms == window_start_ms
                && (Arc::ptr_eq(&w.target, target) || w.target.slots[w.slot as usize].policy == slot.policy)
        });
        let window = match found {
            Some(index) => &mut entry.windows.as_mut_slice()[index],
            None => entry.windows.push(open(&mut self.classes, &self.histogram)),
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
    ///
    /// With `only_until`, takes instead exactly the windows that end at or
    /// before their policy's mark there, due or not (in a cluster: windows
    /// another instance already flushed, which this one drops).
    pub fn take_windows(
        &mut self,
        now_ms: i64,
        everything: bool,
        only_until: Option<&[(StoragePolicy, i64)]>,
        out: &mut Vec<ClosedWindow>,
        classes: &mut Vec<WindowClass>,
    ) {
        if self.classes.len() > MAX_CLASSES {
            self.compact_classes();
        }
        // Ask for the windows kept on the heap first, in a loop that does
        // nothing else, so the misses on them overlap instead of coming one
        // per entry below (inline windows come with the table, read in order).
        for entry in self.outputs.iter() {
            if let Some(heap) = entry.windows.heap() {
                crate::prefetch::prefetch(heap);
            }
        }
        let mut flushed: Vec<(StoragePolicy, i64)> = Vec::new();
        let totals = &mut self.totals;
        let held_last = &mut self.held_last;
        let shard_classes = &self.classes;
        self.outputs.retain(|entry| {
            let key = entry.key;
            // For a window to take: its end, after raising the watermark and
            // adding a counter's sum to its running total (in window order).
            let mut take = |window: &OpenWindow| {
                let class = &shard_classes[window.class as usize];
                let end_ms = class.end_ms(window.start_ms);
                let taken = match only_until {
                    Some(marks) => marks
                        .iter()
                        .any(|(policy, until)| *policy == class.policy && end_ms <= *until),
                    None => everything || class.is_due(window.start_ms, now_ms),
                };
                if !taken {
                    return None;
                }
                match flushed.iter_mut().find(|(flushed, _)| *flushed == class.policy) {
                    Some((_, until)) => *until = (*until).max(end_ms),
                    None => flushed.push((class.policy, end_ms)),
                }
                let running_total = match &window.state {
                    WindowState::Counter(state) if class.keeps_total => {
                        Some(totals.add(key, class.policy, (state.sum, state.count as f64), end_ms))
                    }
                    WindowState::Distribution(histogram) if class.keeps_total => {
                        Some(totals.add(key, class.policy, (histogram.sum(), histogram.count() as f64), end_ms))
                    }
                    _ => None,
                };
                Some((end_ms, running_total))
            };
            let mut closed = |mut window: OpenWindow, end_ms: i64, running_total: Option<Totals>| {
                if let WindowState::Gauge(state) = &mut window.state {
                    if state.is_rollup() {
                        let policy = shard_classes[window.class as usize].policy;
                        held_last.carry(key, policy, state, end_ms);
                    }
                }
                ClosedWindow {
                    target: window.target,
                    class: window.class,
                    start_ms: window.start_ms,
                    state: window.state,
                    partial: end_ms > now_ms,
                    running_total,
                }
            };
            match &mut entry.windows {
                Windows::One(window) => {
                    let Some((end_ms, running_total)) = take(window) else {
                        return true;
                    };
                    let Windows::One(window) = std::mem::replace(&mut entry.windows, Windows::NONE) else {
                        unreachable!("matched one window")
                    };
                    out.push(closed(window, end_ms, running_total));
                    false
                }
                Windows::Many(windows) => {
                    windows.sort_unstable_by_key(|window| window.start_ms);
                    let mut index = 0;
                    while index < windows.len() {
                        let Some((end_ms, running_total)) = take(&windows[index]) else {
                            index += 1;
                            continue;
                        };
                        // `remove`, not `swap_remove`: later windows must stay in order for totals.
                        out.push(closed(windows.remove(index), end_ms, running_total));
                    }
                    match windows.len() {
                        0 => false,
                        1 => {
                            // Back inline, so the output's next folds touch one line again.
                            let last = windows.pop().expect("one window left");
                            entry.windows = Windows::One(last);
                            true
                        }
                        _ => true,
                    }
                }
            }
        });
        classes.clone_from(&self.classes);
        for (policy, end_ms) in flushed {
            self.mark_flushed(policy, end_ms);
        }
        if now_ms - self.last_total_eviction_ms >= 60_000 {
            self.last_total_eviction_ms = now_ms;
            self.totals.evict_idle(now_ms, self.idle_series_ms);
            self.held_last.evict_idle(now_ms);
        }
    }

    /// Drops the classes no open window uses any more (rules reloaded many
    /// times with new aggregations) and renumbers the windows' classes.
    fn compact_classes(&mut self) {
        let mut used = vec![false; self.classes.len()];
        for window in self.outputs.iter().flat_map(|entry| entry.windows.as_slice()) {
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
        for window in self.outputs.iter_mut().flat_map(|entry| entry.windows.as_mut_slice()) {
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
        self.outputs.len()
    }

    /// Adds, per (tenant, policy), the outputs with an open window and the open windows.
    pub fn count_open(&self, into: &mut std::collections::BTreeMap<(Arc<str>, StoragePolicy), (u64, u64)>) {
        let mut policies: Vec<StoragePolicy> = Vec::new();
        for entry in self.outputs.iter() {
            policies.clear();
            for window in entry.windows.as_slice() {
                let policy = window.target.slots[window.slot as usize].policy;
                let counts = into.entry((Arc::clone(&window.target.tenant), policy)).or_default();
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
        self.outputs.iter().map(|entry| entry.windows.as_slice().len()).sum()
    }
}

#[cfg(test)]
mod tests;
