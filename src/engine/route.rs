//! Where a series' samples go: the output targets (its own output and each
//! rollup) with their storage policies, built once per series from the rule
//! plan and cached, so the hot path only follows pointers.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use smallvec::SmallVec;

use crate::aggregate::histogram::LinkPlan;
use crate::aggregate::Aggregation;
use crate::model::{series_hash, DropReason, Kind, Labels, Outcome, StoragePolicy};
use crate::profile::SeriesProfile;
use crate::rules::{OutputOrigin, SeriesPlan};

use super::settings::EngineSettings;

/// One output series and the windows it keeps, shared by every input that feeds it.
#[derive(Debug)]
pub struct OutputTarget {
    /// Series key of the output (tenant + output labels).
    pub key: u64,
    /// Owner of the output.
    pub tenant: Arc<str>,
    /// Output labels; `__name__` is the base name the statistics are named after.
    pub labels: Arc<Labels>,
    /// Kind of the inputs.
    pub kind: Kind,
    /// True for rollup outputs (gauge `last` then sums the inputs' latest values).
    pub rollup: bool,
    /// Policies and their aggregations; a window's slot indexes this. Shared
    /// by every output with the same policies and aggregations (see
    /// [`SlotSets`]), so it costs an output one pointer and stays in cache.
    pub slots: Arc<[PolicySlot]>,
}

/// One storage policy of an output.
#[derive(Debug, PartialEq)]
pub struct PolicySlot {
    /// Window length and retention.
    pub policy: StoragePolicy,
    /// Allowed lateness after the window end.
    pub lateness_ms: i64,
    /// What to emit at flush.
    pub aggregations: Arc<[Aggregation]>,
    /// Whether a running total is kept across windows (`total` asked for).
    pub keeps_total: bool,
    /// What a distribution window links and counts at ingest: the quantiles
    /// and thresholds among `aggregations` (none: it keeps no exemplars).
    pub links: Option<Arc<LinkPlan>>,
}

impl PolicySlot {
    /// Whether the window starting at `start_ms` may be flushed at `now_ms`.
    #[inline]
    pub fn is_due(&self, start_ms: i64, now_ms: i64) -> bool {
        start_ms + self.policy.resolution_ms as i64 + self.lateness_ms <= now_ms
    }
}

/// The distinct policy slot lists of one rule set's outputs: a handful per
/// rule set, each shared by every output that has it.
#[derive(Debug, Default)]
pub struct SlotSets {
    sets: Mutex<Vec<Arc<[PolicySlot]>>>,
}

/// Beyond this many distinct lists (a rules file with very many policy and
/// aggregation combinations), further lists are not shared: a miss would
/// otherwise scan ever longer.
const MAX_SHARED_SLOT_SETS: usize = 1024;

impl SlotSets {
    /// The shared list equal to `slots`, added if new.
    pub fn shared(&self, slots: Vec<PolicySlot>) -> Arc<[PolicySlot]> {
        let mut sets = self.sets.lock();
        if let Some(set) = sets.iter().find(|set| ***set == *slots) {
            return Arc::clone(set);
        }
        let set: Arc<[PolicySlot]> = slots.into();
        if sets.len() < MAX_SHARED_SLOT_SETS {
            sets.push(Arc::clone(&set));
        }
        set
    }
}

/// What ingest reads of a route's first output, copied into the route: the
/// fold of the usual one-output series then goes from the route's line
/// straight to the shard table, without loading the output target's line.
#[derive(Debug)]
pub struct RouteHead {
    /// The output's key (`OutputTarget::key`).
    pub key: u64,
    /// The output's policy slots (the same shared list as `OutputTarget::slots`).
    pub slots: Arc<[PolicySlot]>,
}

/// Why a route has no targets.
#[derive(Debug, PartialEq)]
pub enum Untargeted {
    /// Named like a rollup rule's output (the rule was logged when the route was built).
    Collision,
    /// This drop rule removed the series' own output.
    DroppedBy(Arc<str>),
}

/// The cached route of one input series.
#[derive(Debug)]
pub struct SeriesRoute {
    /// Outputs to fold each point into. Inline for the usual single output,
    /// so ingest goes from the route straight to its target.
    pub targets: SmallVec<[Arc<OutputTarget>; 1]>,
    /// Key and slots of `targets[0]`, when there is one.
    head: Option<RouteHead>,
    /// Why a series without targets has none, when a rule says so (a
    /// series with no aggregation has `None`); boxed, as few routes have one.
    pub untargeted: Option<Box<Untargeted>>,
    /// The series' usage accounting, when the profiler is on; boxed so a
    /// route costs one pointer for it when the profiler is off.
    pub profile: Option<Box<SeriesProfile>>,
    /// Wall clock of the last batch that used the route (to second precision),
    /// so routes of series that went away can be evicted.
    last_used_ms: AtomicI64,
}

impl SeriesRoute {
    /// Builds the route of a series of `tenant` from its rule plan, taking
    /// its outputs' policy slots from `slot_sets`.
    pub fn build(
        plan: &SeriesPlan,
        tenant: &Arc<str>,
        settings: &EngineSettings,
        kind: Kind,
        slot_sets: &SlotSets,
    ) -> Self {
        let targets: SmallVec<[Arc<OutputTarget>; 1]> = plan
            .outputs
            .iter()
            .map(|output| {
                let slots = output
                    .policies
                    .iter()
                    .map(|entry| PolicySlot {
                        policy: entry.policy,
                        lateness_ms: settings.lateness_ms(&entry.policy) as i64,
                        aggregations: Arc::clone(&entry.aggregations),
                        keeps_total: entry.aggregations.contains(&Aggregation::Total),
                        links: LinkPlan::of(&entry.aggregations, settings.above_max_traces),
                    })
                    .collect();
                let slots = slot_sets.shared(slots);
                Arc::new(OutputTarget {
                    key: series_hash(tenant, &output.labels),
                    tenant: Arc::clone(tenant),
                    labels: Arc::new(output.labels.clone()),
                    kind,
                    rollup: matches!(output.origin, OutputOrigin::Rollup { .. }),
                    slots,
                })
            })
            .collect();
        let head = targets.first().map(|target| RouteHead {
            key: target.key,
            slots: Arc::clone(&target.slots),
        });
        SeriesRoute {
            targets,
            head,
            untargeted: match (&plan.collides_with, &plan.dropped_by) {
                (Some(_), _) => Some(Box::new(Untargeted::Collision)),
                (None, Some(rule)) => Some(Box::new(Untargeted::DroppedBy(Arc::clone(rule)))),
                (None, None) => None,
            },
            profile: None,
            last_used_ms: AtomicI64::new(i64::MIN),
        }
    }

    /// Counts `points` of a series without targets as refused: named like a
    /// rollup's output, dropped by a rule, or with no aggregation.
    pub fn refuse_untargeted(&self, outcome: &mut Outcome, points: u64) {
        match self.untargeted.as_deref() {
            Some(Untargeted::Collision) => outcome.reject(DropReason::OutputCollision, points),
            Some(Untargeted::DroppedBy(rule)) => outcome.reject_by_rule(rule, points),
            None => outcome.reject(DropReason::NoAggregation, points),
        }
    }

    /// Notes a use at `now_ms`. Writes at most once a second per series, so
    /// routes shared by many batches do not bounce their cache line.
    #[inline]
    pub fn touch(&self, now_ms: i64) {
        if now_ms.saturating_sub(self.last_used_ms.load(Ordering::Relaxed)) >= 1_000 {
            self.last_used_ms.store(now_ms, Ordering::Relaxed);
        }
    }

    /// Whether no batch used the route in the `idle_ms` before `now_ms`.
    pub fn is_idle(&self, now_ms: i64, idle_ms: i64) -> bool {
        now_ms.saturating_sub(self.last_used_ms.load(Ordering::Relaxed)) >= idle_ms
    }

    /// Key and policy slots of target `index`: from the route's own copy
    /// for the first, so the usual fold never reads the target's line.
    #[inline]
    pub fn target_head(&self, index: u16) -> (u64, &[PolicySlot]) {
        match (&self.head, index) {
            (Some(head), 0) => (head.key, &head.slots),
            _ => {
                let target = &self.targets[index as usize];
                (target.key, &target.slots)
            }
        }
    }

    /// Key of the first output, when there is one.
    #[inline]
    pub fn first_key(&self) -> Option<u64> {
        self.head.as_ref().map(|head| head.key)
    }

    /// Calls `visit(shard, output_key, target, slot, window_start_ms)` for
    /// every window (of every target and policy) an event at `timestamp_ms`
    /// belongs to, and `due(target, slot)` instead for windows already due at
    /// `now_ms` (they refuse it as late). Returns how many it visited.
    #[inline]
    pub fn for_each_window(
        &self,
        timestamp_ms: i64,
        now_ms: i64,
        shard_count: usize,
        mut visit: impl FnMut(usize, u64, u16, u16, i64),
        mut due: impl FnMut(u16, u16),
    ) -> u16 {
        let mut routed = 0u16;
        for target_index in 0..self.targets.len() as u16 {
            let (key, slots) = self.target_head(target_index);
            let shard = shard_of_output(key, shard_count);
            for (slot_index, slot) in slots.iter().enumerate() {
                let window_start_ms = slot.policy.window_start(timestamp_ms);
                if slot.is_due(window_start_ms, now_ms) {
                    due(target_index, slot_index as u16);
                    continue;
                }
                routed += 1;
                visit(shard, key, target_index, slot_index as u16, window_start_ms);
            }
        }
        routed
    }
}

/// The engine shard that holds output `key`'s windows, of `shard_count`.
#[inline]
pub(super) fn shard_of_output(key: u64, shard_count: usize) -> usize {
    (key % shard_count as u64) as usize
}

/// The window a series' point was just routed to, when its route sends it
/// to exactly one window (one output, one policy, not due): a later point of
/// the series in the same window and rule set goes there too.
#[derive(Clone, Copy)]
pub(super) struct WindowRun {
    /// Rule set the window's route belongs to.
    pub(super) generation: usize,
    /// Index of the route in the batch's route list.
    pub(super) route: u32,
    /// Shard of the output.
    pub(super) shard: usize,
    /// Key of the output.
    pub(super) output: u64,
    /// Window start.
    pub(super) start_ms: i64,
    /// Window end.
    pub(super) end_ms: i64,
}

impl WindowRun {
    /// The run `route` (index `route_index`, of rule set `generation`) starts
    /// with a point at `timestamp_ms` that went to `routed` windows, if one.
    #[inline]
    pub(super) fn of(
        route: &SeriesRoute,
        route_index: u32,
        generation: usize,
        timestamp_ms: i64,
        routed: u16,
        shard_count: usize,
    ) -> Option<Self> {
        if routed != 1 || route.targets.len() != 1 {
            return None;
        }
        let (output, slots) = route.target_head(0);
        if slots.len() != 1 {
            return None;
        }
        let start_ms = slots[0].policy.window_start(timestamp_ms);
        Some(WindowRun {
            generation,
            route: route_index,
            shard: shard_of_output(output, shard_count),
            output,
            start_ms,
            end_ms: start_ms + slots[0].policy.resolution_ms as i64,
        })
    }

    /// Whether a point at `timestamp_ms` of rule set `generation` belongs to this window.
    #[inline]
    pub(super) fn holds(&self, generation: usize, timestamp_ms: i64) -> bool {
        generation == self.generation && (self.start_ms..self.end_ms).contains(&timestamp_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Labels;
    use crate::rules::RuleSet;

    #[test]
    fn outputs_with_equal_policies_share_one_slot_list() {
        let rules = RuleSet::parse(
            "mapping_rules:\n  - { name: slow, filter: '__name__:slow_*', aggregations: [p99] }\n",
            "rules.yaml",
        )
        .unwrap();
        let sets = SlotSets::default();
        let build = |name: &str, kind: Kind| {
            let plan = rules.resolve(&Labels::from_pairs([("__name__", name)]), kind);
            SeriesRoute::build(&plan, &Arc::from("t"), &EngineSettings::default(), kind, &sets)
        };
        let (a, b) = (build("a", Kind::Distribution), build("b", Kind::Distribution));
        let slow = build("slow_a", Kind::Distribution);
        assert!(Arc::ptr_eq(&a.targets[0].slots, &b.targets[0].slots));
        assert!(!Arc::ptr_eq(&a.targets[0].slots, &slow.targets[0].slots));
        assert_ne!(a.targets[0].slots, slow.targets[0].slots, "p99 only is another list");
        assert!(Arc::ptr_eq(
            &slow.targets[0].slots,
            &build("slow_b", Kind::Distribution).targets[0].slots
        ));
        assert_eq!(sets.sets.lock().len(), 2);
    }

    #[test]
    fn the_head_is_the_first_targets_key_and_slots_and_windows_follow_it() {
        let rules = RuleSet::parse(
            "defaults: {storage_policies: [\"10s:1h\", \"1m:1d\"]}\nrollup_rules:\n  - name: all\n    filter: '__name__:x'\n    rollup: {name: x_all, group_by: [], aggregations: [count]}\n",
            "rules.yaml",
        )
        .unwrap();
        let plan = rules.resolve(&Labels::from_pairs([("__name__", "x"), ("pod", "a")]), Kind::Gauge);
        let route = SeriesRoute::build(
            &plan,
            &Arc::from("t"),
            &EngineSettings::default(),
            Kind::Gauge,
            &SlotSets::default(),
        );
        assert_eq!(route.targets.len(), 2, "its own output and the rollup's");
        for index in 0..2u16 {
            let target = &route.targets[index as usize];
            let (key, slots) = route.target_head(index);
            assert_eq!(key, target.key);
            assert!(std::ptr::eq(slots, &*target.slots));
        }
        assert_ne!(route.target_head(0).0, route.target_head(1).0);
        // 65 s into a minute: the 10 s window at 60 s and the 1 m window at 60 s, per target.
        let mut visited = Vec::new();
        let routed = route.for_each_window(
            65_000,
            66_000,
            64,
            |shard, key, target, slot, start| visited.push((shard, key, target, slot, start)),
            |_, _| panic!("nothing is due"),
        );
        assert_eq!(routed, 4);
        let expected: Vec<_> = (0..2u16)
            .flat_map(|target| {
                let key = route.targets[target as usize].key;
                [(0u16, 60_000), (1, 60_000)].map(|(slot, start)| ((key % 64) as usize, key, target, slot, start))
            })
            .collect();
        assert_eq!(visited, expected);
    }
}
