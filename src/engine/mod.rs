//! The engine: folds validated samples into per-(output, storage policy)
//! windows, sharded by output key, and closes windows when due. It never reads
//! a clock (time is passed in) and never does I/O. Every batch first passes
//! the tenant limits ([`crate::limits`]), so no ingest path can skip them.
//!
//! ```
//! use std::sync::Arc;
//! use tailfold::engine::{Engine, EngineSettings};
//! use tailfold::model::{IngestBatch, Kind, Labels, Point, SeriesBatch};
//! use tailfold::rules::RuleSet;
//!
//! let engine = Engine::new(EngineSettings::default(), RuleSet::default_rules());
//! let batch = IngestBatch {
//!     tenant: Arc::from("default"),
//!     series: vec![SeriesBatch {
//!         labels: Labels::from_pairs([("__name__", "requests")]),
//!         kind: Kind::Counter,
//!         cumulative: false,
//!         histograms: Vec::new(),
//!         points: vec![Point::new(3.0, Some(1_000), None)],
//!     }],
//! };
//! assert_eq!(engine.ingest(&batch, 2_000).unwrap().accepted, 1);
//! let mut records = Vec::new();
//! engine.flush_due(60_000, |chunk| records.extend(chunk));
//! assert!(records.iter().any(|r| r.output_name() == "requests:sum"));
//! ```

mod cumulative;
mod cumulative_histograms;
mod generations;
mod held_last;
mod histogram_route;
mod partials;
mod record;
mod route;
mod settings;
mod shard;
mod tally;
mod totals;
mod window;

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::limits::Limits;
use crate::model::{
    series_key, DropReason, IngestBatch, Kind, NativeHistogram, Outcome, Point, SeriesKey, StoragePolicy,
};
use crate::profile::Profiler;
use crate::rules::{CacheReader, RuleSet};

pub use partials::{PartialError, PartialState, PartialWindow};
pub use record::{AggregateRecord, RecordValue, Statistic};
use route::{shard_of_output, WindowRun};
pub use route::{OutputTarget, PolicySlot, SeriesRoute};
pub use settings::{default_lateness_ms, default_shards, EngineSettings};
pub use window::WindowState;

use crate::prefetch::prefetch;
use crate::rules::ProbeHint;
use cumulative::CumulativeCounters;
use cumulative_histograms::CumulativeHistograms;
pub use generations::next_common_boundary;
use generations::{generation_at, generation_range, Generation};
use histogram_route::RoutedHistogram;
use partials::Assembler;
use shard::{same_window, ClosedWindow, RoutedSample, Shard, TableEntry, WindowClass};
use tally::{PointTally, WindowRefusal};

/// Per-thread buffers reused across batches so ingest allocates nothing per sample.
#[derive(Default)]
struct Scratch {
    routes: Vec<Arc<SeriesRoute>>,
    per_shard: Vec<Vec<RoutedSample>>,
    /// Per point of the batch: what its windows did with it.
    tally: PointTally,
    /// Deltas of the cumulative series being routed.
    deltas: Vec<Point>,
    /// Per shard: native histograms routed there (kept apart so scalar samples stay small).
    per_shard_histograms: Vec<Vec<RoutedHistogram>>,
    /// Deltas of the batch's cumulative native histograms, for the whole batch.
    histogram_deltas: Vec<NativeHistogram>,
    /// Per rule generation: index in `routes` of the current series' route there.
    route_of_generation: Vec<Option<u32>>,
    /// Identity of each series of the batch, hashed once.
    keys: Vec<SeriesKey>,
    /// Routes built during the batch for series the cache did not know, with
    /// their generation, identity and kind: cached once the batch lets go of
    /// its read locks.
    built: Vec<(usize, SeriesKey, Kind, Arc<SeriesRoute>)>,
    /// Index in `built` by (generation, fingerprint, kind), so a new series
    /// met twice in one batch is resolved once.
    built_index: HashMap<(usize, u128, Kind), usize>,
}

/// Closed windows whose outputs a flush touches ahead of building their records.
const WARM_AHEAD: usize = 32;

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// The aggregation engine. Shared between ingest handlers and the flush loop.
pub struct Engine {
    settings: EngineSettings,
    shards: Box<[Mutex<Shard>]>,
    /// Per shard, where its table of outputs is, as of its last ingest: read
    /// without the lock to ask for an output's entry while routing.
    probe_hints: Box<[ProbeHint]>,
    /// Rule sets by the event time they start at, oldest first (see `generations`).
    generations: RwLock<Arc<[Arc<Generation>]>>,
    /// Usage accounting per metric, label, owner and rule, when on.
    profiler: Option<Arc<Profiler>>,
    /// Ingest holds this for reading; `close` takes it for writing.
    open: RwLock<bool>,
    cumulative: CumulativeCounters,
    /// When idle per-series state was last evicted (see `evict_idle_series`).
    last_idle_eviction_ms: AtomicI64,
    cumulative_histograms: CumulativeHistograms,
    /// The limits stage every batch passes before its rules are applied.
    limits: Limits,
    /// In a cluster: rollup windows are handed over as shares at flush, and
    /// shares from other instances are assembled here, flushed this much
    /// after their window's lateness.
    forward_lateness_ms: Option<i64>,
    assembler: Mutex<Assembler>,
}

/// What a cluster instance may flush, as the cluster stage knows it (plain
/// data; a single node passes none).
#[derive(Clone, Copy, Debug)]
pub struct FlushGate<'a> {
    /// This instance leads its shard set: it emits due windows. A follower
    /// only drops the windows the leader recorded as flushed.
    pub lead: bool,
    /// Per policy, the end up to which the shard set's windows were flushed.
    pub flushed_until: &'a [(StoragePolicy, i64)],
    /// The same for the rollup windows assembled from forwarded shares.
    pub rollups_until: &'a [(StoragePolicy, i64)],
    /// A replica leaving its set by a placement change: windows starting at
    /// or after this (a boundary of every policy) belong to the replica
    /// joining in its place, which holds them whole; here they are dropped.
    pub leaving_from_ms: Option<i64>,
}

/// What a gated flush did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatedFlushStats {
    /// Windows closed and records emitted.
    pub flushed: FlushStats,
    /// Rollup shares handed over for forwarding.
    pub partials: usize,
    /// Windows dropped unemitted because the shard set's leader had flushed them.
    pub dropped: usize,
}

/// A rule set staged at a time not after the newest set's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("rules effective from {from_ms} ms cannot follow the rules already effective from {newest_from_ms} ms")]
pub struct StageRulesError {
    /// The time asked for.
    pub from_ms: i64,
    /// Start of the newest set kept.
    pub newest_from_ms: i64,
}

/// Ingest after [`Engine::close`]: the service is shutting down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the engine is closed: the service is shutting down")]
pub struct EngineClosed;

impl Engine {
    /// An engine with `settings.shards` shards applying `rules`.
    pub fn new(settings: EngineSettings, rules: RuleSet) -> Self {
        let shards = (0..settings.shards.max(1))
            .map(|index| {
                Mutex::new(
                    Shard::new(
                        0x7a11_f01d ^ index as u64,
                        settings.histogram,
                        settings.idle_series_ms,
                        settings.set_max_exact_values,
                    )
                    .with_held_last(settings.rollup_last_max_inputs, settings.rollup_last_idle_ms),
                )
            })
            .collect::<Box<[_]>>();
        let probe_hints = shards.iter().map(|_| ProbeHint::default()).collect();
        let first = Arc::new(Generation::new(Arc::new(rules), i64::MIN, &settings));
        let assembler = Mutex::new(Assembler::new(settings.histogram, settings.set_max_exact_values));
        Engine {
            settings,
            shards,
            probe_hints,
            generations: RwLock::new(Arc::from([first])),
            profiler: None,
            open: RwLock::new(true),
            cumulative: CumulativeCounters::default(),
            last_idle_eviction_ms: AtomicI64::new(i64::MIN),
            cumulative_histograms: CumulativeHistograms::default(),
            limits: Limits::unlimited(),
            forward_lateness_ms: None,
            assembler,
        }
    }

    /// The same engine as one instance of a cluster: rollup windows leave
    /// at flush as shares ([`PartialWindow`]) for the rollup's owner, and
    /// shares received ([`Engine::fold_partial`]) are merged and flushed
    /// `forward_lateness_ms` after their window's lateness.
    pub fn with_rollup_forwarding(mut self, forward_lateness_ms: u64) -> Self {
        self.forward_lateness_ms = Some(forward_lateness_ms as i64);
        self
    }

    /// When a forwarded share's rollup window flushes at the latest: its end,
    /// the input owner's lateness and the forwarding lateness after it.
    pub fn share_due_ms(&self, partial: &PartialWindow) -> i64 {
        partial
            .start_ms
            .saturating_add(partial.policy.resolution_ms as i64)
            .saturating_add(partial.lateness_ms)
            .saturating_add(self.forward_lateness_ms.unwrap_or(0))
    }

    /// Keeps `partial` as shard set `source`'s share of its rollup window
    /// (replacing an earlier share from the same source).
    pub fn fold_partial(&self, source: u32, partial: PartialWindow) -> Result<(), PartialError> {
        self.assembler.lock().insert(source, partial)
    }

    /// Per policy of the rules kept, the end of the last window due at
    /// `now_ms`: of the engine's own windows, and of assembled rollup windows.
    pub fn due_until(&self, now_ms: i64) -> (PolicyMarks, PolicyMarks) {
        let mut policies: Vec<StoragePolicy> = Vec::new();
        for generation in self.generations().iter() {
            for policy in generation.rules.storage_policies() {
                if !policies.contains(&policy) {
                    policies.push(policy);
                }
            }
        }
        let forward = self.forward_lateness_ms.unwrap_or(0);
        let end_due = |policy: &StoragePolicy, delay: i64| {
            let resolution = policy.resolution_ms as i64;
            (now_ms - delay).div_euclid(resolution) * resolution
        };
        let own = policies
            .iter()
            .map(|policy| (*policy, end_due(policy, self.settings.lateness_ms(policy) as i64)))
            .collect();
        let rollups = policies
            .iter()
            .map(|policy| {
                (
                    *policy,
                    end_due(policy, self.settings.lateness_ms(policy) as i64 + forward),
                )
            })
            .collect();
        (own, rollups)
    }

    /// Flush of a cluster instance: drops the windows `gate` says were
    /// flushed already, then, when leading, closes the due ones (every one
    /// when `everything`) and hands records to `emit` and rollup shares to
    /// `forward`; assembled rollup windows likewise.
    pub fn flush_gated(
        &self,
        now_ms: i64,
        everything: bool,
        gate: FlushGate<'_>,
        emit: impl FnMut(Vec<AggregateRecord>),
        forward: impl FnMut(Vec<PartialWindow>),
    ) -> GatedFlushStats {
        self.flush_with(now_ms, everything, Some(gate), emit, forward)
    }

    /// The same engine with tenant limits applied to every batch before its rules.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The limits stage (tenant limits and the ingest in-flight gate).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The settings in force.
    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    /// Accounts every ingested series in `profiler` (see [`crate::profile`]).
    pub fn with_profiler(mut self, profiler: Arc<Profiler>) -> Self {
        self.profiler = Some(profiler);
        self
    }

    /// The profiler, when on.
    pub fn profiler(&self) -> Option<&Arc<Profiler>> {
        self.profiler.as_ref()
    }

    /// Swaps in a new rule set for every event time at once, open windows
    /// included (tests and tools; a running service uses [`Engine::stage_rules`]).
    pub fn replace_rules(&self, rules: RuleSet) {
        let first = Arc::new(Generation::new(Arc::new(rules), i64::MIN, &self.settings));
        *self.generations.write() = Arc::from([first]);
    }

    /// Schedules `rules` to take over at the first window boundary after
    /// `now_ms` (and after any rule set still waiting) that every storage
    /// policy of the old and new rules shares, so that no window is folded
    /// under two rule sets. Earlier events keep the rules in force until their
    /// windows are due. Returns the event time the new rules start at.
    pub fn stage_rules(&self, rules: RuleSet, now_ms: i64) -> i64 {
        let mut generations = self.generations.write();
        let newest = generations.last().expect("at least one generation");
        let mut policies = newest.rules.storage_policies();
        policies.extend(rules.storage_policies());
        let from_ms = next_common_boundary(&policies, now_ms.max(newest.from_ms));
        let staged = Arc::new(Generation::new(Arc::new(rules), from_ms, &self.settings));
        let mut next: Vec<Arc<Generation>> = generations.iter().cloned().collect();
        next.push(staged);
        *generations = next.into();
        from_ms
    }

    /// Schedules `rules` to take over at `from_ms`, a boundary chosen
    /// elsewhere (a cluster's publisher chose it once for every instance).
    /// Refused unless it comes after the newest set's start.
    pub fn stage_rules_at(&self, rules: RuleSet, from_ms: i64) -> Result<i64, StageRulesError> {
        let mut generations = self.generations.write();
        let newest = generations.last().expect("at least one generation");
        if from_ms <= newest.from_ms {
            return Err(StageRulesError {
                from_ms,
                newest_from_ms: newest.from_ms,
            });
        }
        let staged = Arc::new(Generation::new(Arc::new(rules), from_ms, &self.settings));
        let mut next: Vec<Arc<Generation>> = generations.iter().cloned().collect();
        next.push(staged);
        *generations = next.into();
        Ok(from_ms)
    }

    /// The rule set in force for events at `timestamp_ms`.
    pub fn rules_at(&self, timestamp_ms: i64) -> Arc<RuleSet> {
        let generations = self.generations();
        let index = generation_at(&generations, timestamp_ms).unwrap_or(0);
        Arc::clone(&generations[index].rules)
    }

    /// The newest rule set (in force now, or waiting for its boundary).
    pub fn rules(&self) -> Arc<RuleSet> {
        Arc::clone(&self.generations().last().expect("at least one generation").rules)
    }

    /// Every rule set kept, oldest first, with the event time it starts at
    /// (`i64::MIN` for the first one).
    pub fn rule_sets(&self) -> Vec<(i64, Arc<RuleSet>)> {
        self.generations()
            .iter()
            .map(|generation| (generation.from_ms, Arc::clone(&generation.rules)))
            .collect()
    }

    fn generations(&self) -> Arc<[Arc<Generation>]> {
        Arc::clone(&self.generations.read())
    }

    /// Builds the route of a series the cache of generation `index` does not
    /// know (once per batch), to be cached after the batch.
    fn build_route(
        &self,
        scratch: &mut Scratch,
        generation: &Generation,
        index: usize,
        identity: SeriesKey,
        batch: &IngestBatch,
        series_index: usize,
    ) -> Arc<SeriesRoute> {
        let series = &batch.series[series_index];
        let built_key = (index, identity.fingerprint, series.kind);
        if let Some(&built) = scratch.built_index.get(&built_key) {
            return Arc::clone(&scratch.built[built].3);
        }
        let plan = generation.rules.resolve(&series.labels, series.kind);
        if let Some(rule) = &plan.collides_with {
            // Once per series and rule set (the route is cached); every point is counted.
            tracing::warn!(
                series = %series.labels.metric_name().unwrap_or_default(),
                rule = %rule,
                "input series named like the output of rollup rule {rule:?}: refused (output_collision)"
            );
        }
        let mut route = SeriesRoute::build(&plan, &batch.tenant, &self.settings, series.kind, &generation.slot_sets);
        if let Some(profiler) = &self.profiler {
            route.profile = Some(Box::new(profiler.series(
                &batch.tenant,
                &series.labels,
                identity.hash,
                &plan,
            )));
        }
        let route = Arc::new(route);
        scratch.built_index.insert(built_key, scratch.built.len());
        scratch.built.push((index, identity, series.kind, Arc::clone(&route)));
        route
    }

    /// Index in `scratch.routes` of the current series' route under generation `index`.
    #[allow(clippy::too_many_arguments)]
    fn route_index(
        &self,
        scratch: &mut Scratch,
        readers: &[CacheReader<'_, SeriesRoute>],
        generations: &[Arc<Generation>],
        index: usize,
        identity: SeriesKey,
        batch: &IngestBatch,
        series_index: usize,
    ) -> u32 {
        if let Some(route) = scratch.route_of_generation[index] {
            return route;
        }
        let route = match readers[index].get(identity, batch.series[series_index].kind) {
            Some(route) => Arc::clone(route),
            None => self.build_route(scratch, &generations[index], index, identity, batch, series_index),
        };
        let position = scratch.routes.len() as u32;
        scratch.routes.push(route);
        scratch.route_of_generation[index] = Some(position);
        position
    }

    /// Looks every series of the batch up once before any is folded, asking
    /// a few series ahead for its route-cache slot, then for each route's
    /// memory and, a few series later, for its first
    /// output's home slot in its shard's table: the lookups of independent
    /// series then overlap their misses, and the shard's half of a series'
    /// chain no longer waits for routing. Computes nothing the fold relies on.
    fn prefetch_routes(
        hints: &[ProbeHint],
        readers: &[CacheReader<'_, SeriesRoute>],
        generations: &[Arc<Generation>],
        batch: &IngestBatch,
        keys: &[SeriesKey],
        now_ms: i64,
    ) {
        const AHEAD: usize = 8;
        // The route carries its first target's key and slots, so the target's
        // own line is not asked for: only a window opening reads it.
        let prefetch_target = |route: &Arc<SeriesRoute>| {
            if let Some(key) = route.first_key() {
                hints[shard_of_output(key, hints.len())].prefetch::<TableEntry>(key);
            }
            if let Some(profile) = &route.profile {
                prefetch(&**profile);
            }
        };
        let generation_of = |series| generation_at(generations, first_event_ms(series, now_ms)).unwrap_or(0);
        // The cache's slot of a series is known from its key: asked for
        // `AHEAD` series before its lookup, so that lookup finds it in cache.
        for (series, key) in batch.series.iter().zip(keys).take(AHEAD) {
            readers[generation_of(series)].prefetch(*key);
        }
        let mut ring: [Option<&Arc<SeriesRoute>>; AHEAD] = [None; AHEAD];
        for (index, (series, key)) in batch.series.iter().zip(keys).enumerate() {
            if let (Some(ahead), Some(ahead_key)) = (batch.series.get(index + AHEAD), keys.get(index + AHEAD)) {
                readers[generation_of(ahead)].prefetch(*ahead_key);
            }
            let generation = generation_of(series);
            let found = readers[generation].get(*key, series.kind);
            if let Some(route) = found {
                prefetch(Arc::as_ptr(route));
            }
            if let Some(earlier) = std::mem::replace(&mut ring[index % AHEAD], found) {
                prefetch_target(earlier);
            }
        }
        ring.into_iter().flatten().for_each(prefetch_target);
    }

    /// Passes a validated batch through the tenant limits, then folds what they
    /// admit in at wall-clock time `now_ms` (the arrival time of points without
    /// a timestamp). Returns what was accepted and refused, or [`EngineClosed`]
    /// once [`Engine::close`] has run.
    pub fn ingest(&self, batch: &IngestBatch, now_ms: i64) -> Result<Outcome, EngineClosed> {
        let (admitted, limited) = self.admit(batch, now_ms);
        self.fold_admitted(&admitted, now_ms, limited)
    }

    /// The tenant limits alone: the part of `batch` they admit, and the tally of
    /// what they refused. A caller that logs batches (the write-ahead log) logs
    /// only the admitted part, then folds it with [`Engine::fold_admitted`], so a
    /// replay folds exactly what was acknowledged and never meets the limits twice.
    pub fn admit<'a>(&self, batch: &'a IngestBatch, now_ms: i64) -> (Cow<'a, IngestBatch>, Outcome) {
        let mut outcome = Outcome::default();
        let admitted = self.limits.admit(batch, now_ms, &mut outcome);
        (admitted, outcome)
    }

    /// Folds a batch the limits already admitted (or one replayed from the
    /// write-ahead log) into its windows, adding to the limits' tally `limited`.
    pub fn fold_admitted(&self, batch: &IngestBatch, now_ms: i64, limited: Outcome) -> Result<Outcome, EngineClosed> {
        let open = self.open.read();
        if !*open {
            return Err(EngineClosed);
        }
        Ok(SCRATCH.with(|scratch| self.ingest_with(batch, now_ms, limited, &mut scratch.borrow_mut())))
    }

    /// Refuses all further ingest. Returns once no ingest call is in flight, so
    /// a flush after it sees every sample that was ever accepted.
    pub fn close(&self) {
        *self.open.write() = false;
    }

    fn ingest_with(&self, batch: &IngestBatch, now_ms: i64, mut outcome: Outcome, scratch: &mut Scratch) -> Outcome {
        let mut generations = self.generations();
        if generations.len() > 1 {
            if let Some(kept) = generations::retire(&generations, now_ms) {
                let mut current = self.generations.write();
                if Arc::ptr_eq(&current, &generations) {
                    *current = kept.into();
                }
                generations = Arc::clone(&current);
            }
        }
        let shard_count = self.shards.len();
        scratch.per_shard.resize_with(shard_count, Vec::new);
        scratch.per_shard_histograms.resize_with(shard_count, Vec::new);
        scratch.routes.clear();
        scratch.tally.clear();
        let future_limit = now_ms.saturating_add(self.settings.future_tolerance_ms as i64);

        // The limits hashed the series already (when configured): each series is hashed once per request.
        if outcome.series_keys.len() == batch.series.len() {
            scratch.keys = std::mem::take(&mut outcome.series_keys);
        } else {
            scratch.keys.clear();
            scratch.keys.extend(
                batch
                    .series
                    .iter()
                    .map(|series| series_key(&batch.tenant, &series.labels)),
            );
        }
        // Read locks on every route cache for the routing part of the batch;
        // routes built meanwhile are cached once they are let go.
        let readers: smallvec::SmallVec<[CacheReader<'_, SeriesRoute>; 2]> = generations
            .iter()
            .map(|generation| generation.routes.reader())
            .collect();
        Self::prefetch_routes(&self.probe_hints, &readers, &generations, batch, &scratch.keys, now_ms);

        for (series_index, series) in batch.series.iter().enumerate() {
            let identity = scratch.keys[series_index];
            let key = identity.hash;
            scratch.route_of_generation.clear();
            scratch.route_of_generation.resize(generations.len(), None);
            // The generation of the series' first event routes it when all its events share one (the usual case).
            let first_generation = generation_at(&generations, first_event_ms(series, now_ms)).unwrap_or(0);
            let first_route = self.route_index(
                scratch,
                &readers,
                &generations,
                first_generation,
                identity,
                batch,
                series_index,
            );
            let route = &scratch.routes[first_route as usize];
            route.touch(now_ms);
            if let (Some(profile), Some(profiler)) = (&route.profile, &self.profiler) {
                profile.observe(profiler, (series.points.len() + series.histograms.len()) as u64);
            }
            if route.targets.is_empty() && generations.len() == 1 {
                // A native histogram counts as one point, as ingest counts it.
                let points = (series.points.len() + series.histograms.len()) as u64;
                route.refuse_untargeted(&mut outcome, points);
                scratch.routes.pop();
                continue;
            }
            let mut deltas = std::mem::take(&mut scratch.deltas);
            let points: &[Point] = if series.cumulative && series.kind == Kind::Counter {
                self.cumulative
                    .deltas(key, &series.points, now_ms, future_limit, &mut deltas, &mut outcome);
                &deltas
            } else {
                &series.points
            };
            // The one window the previous point went to, when its route has one
            // output with one policy: the next points in that window and rule
            // set (statsd sends ~25 per series) skip the route and window math.
            let mut run: Option<WindowRun> = None;
            for point in points {
                let timestamp_ms = point.timestamp_ms.unwrap_or(now_ms);
                if timestamp_ms > future_limit {
                    outcome.reject(DropReason::TooFarInFuture, 1);
                    continue;
                }
                let Some(generation) = generation_at(&generations, timestamp_ms) else {
                    // Older than every kept rule set: its windows are all due.
                    outcome.reject(DropReason::TooLate, 1);
                    continue;
                };
                // This point as routed to one window; the arguments are what its windows differ by.
                let routed_sample = |route, target, slot, point_index, output, window_start_ms| RoutedSample {
                    route,
                    target,
                    slot,
                    point: point_index,
                    output,
                    kind: series.kind,
                    window_start_ms,
                    timestamp_ms,
                    value: point.value,
                    trace: point.trace,
                    weight: point.weight,
                    input: key,
                };
                if let Some(run) = run.filter(|run| run.holds(generation, timestamp_ms)) {
                    let point_index = scratch.tally.next_point();
                    scratch.per_shard[run.shard].push(routed_sample(
                        run.route,
                        0,
                        0,
                        point_index,
                        run.output,
                        run.start_ms,
                    ));
                    scratch.tally.push_point(1);
                    continue;
                }
                let route_index = self.route_index(
                    scratch,
                    &readers,
                    &generations,
                    generation,
                    identity,
                    batch,
                    series_index,
                );
                let route = &scratch.routes[route_index as usize];
                if route.targets.is_empty() {
                    route.refuse_untargeted(&mut outcome, 1);
                    continue;
                }
                let point_index = scratch.tally.next_point();
                let per_shard = &mut scratch.per_shard;
                let tally = &mut scratch.tally;
                let routed = route.for_each_window(
                    timestamp_ms,
                    now_ms,
                    shard_count,
                    |shard, output, target, slot, start| {
                        per_shard[shard].push(routed_sample(route_index, target, slot, point_index, output, start));
                    },
                    |target, slot| tally.due(route_index, target, slot),
                );
                tally.push_point(routed);
                run = WindowRun::of(route, route_index, generation, timestamp_ms, routed, shard_count);
            }
            scratch.deltas = deltas;
            if !series.histograms.is_empty() {
                let route = &scratch.routes[first_route as usize];
                if route.targets.is_empty() {
                    route.refuse_untargeted(&mut outcome, series.histograms.len() as u64);
                } else {
                    let range = generation_range(&generations, first_generation);
                    self.route_histograms(
                        scratch,
                        &mut outcome,
                        batch,
                        series_index,
                        key,
                        now_ms,
                        first_route,
                        range,
                    );
                }
            }
        }

        drop(readers);
        for (generation, identity, kind, route) in scratch.built.drain(..) {
            generations[generation].routes.insert(identity, kind, route);
        }
        scratch.built_index.clear();

        for (index, (samples, histograms)) in scratch
            .per_shard
            .iter_mut()
            .zip(&mut scratch.per_shard_histograms)
            .enumerate()
        {
            if samples.is_empty() && histograms.is_empty() {
                continue;
            }
            let mut shard = self.shards[index].lock();
            // Every window is looked up ahead of the fold, in steps that each
            // ask for the next level of memory for all samples, so their
            // misses overlap: windows, then state, then (distributions) the
            // bucket count and reservoir index, then the reservoir. The
            // samples carry their output's key and kind: no route is read here.
            let mut previous = None;
            for sample in samples.iter() {
                if previous != Some(sample.output) {
                    shard.prefetch_windows(sample.output);
                    previous = Some(sample.output);
                }
            }
            let kind = |sample: &RoutedSample| sample.kind;
            let state_of = |sample: &RoutedSample| shard.peek_state(sample.output, sample.slot, sample.window_start_ms);
            if samples.iter().any(|sample| kind(sample) != Kind::Counter) {
                for sample in samples.iter().filter(|sample| kind(sample) != Kind::Counter) {
                    if let Some(state) = state_of(sample) {
                        state.prefetch();
                    }
                }
                for sample in samples.iter().filter(|sample| kind(sample) == Kind::Distribution) {
                    if let Some(state) = state_of(sample) {
                        state.prefetch_record(sample.value, sample.trace.is_some());
                    }
                }
                for sample in samples.iter().filter(|sample| sample.trace.is_some()) {
                    if let Some(state) = state_of(sample) {
                        state.prefetch_reservoir(sample.value);
                    }
                }
            }
            // A run of samples for one window (a series' points in a batch)
            // folds with one window lookup.
            let mut rest = &samples[..];
            while let Some(first) = rest.first() {
                let length = 1 + rest[1..].iter().take_while(|sample| same_window(first, sample)).count();
                let (run, after) = rest.split_at(length);
                rest = after;
                let route = &scratch.routes[first.route as usize];
                let target = &route.targets[first.target as usize];
                let slot = &route.target_head(first.target).1[first.slot as usize];
                if let Err(reason) = shard.fold_run(target, slot, run, now_ms) {
                    let (route, target, slot) = (first.route, first.target, first.slot);
                    for sample in run {
                        scratch
                            .tally
                            .refuse(sample.point, WindowRefusal::new(route, target, slot, reason));
                    }
                }
            }
            for routed in histograms.iter() {
                let target = &scratch.routes[routed.route as usize].targets[routed.target as usize];
                let histogram = routed.source.resolve(batch, &scratch.histogram_deltas);
                if let Err(reason) = shard.fold_histogram(target, routed, histogram, now_ms) {
                    let (route, target, slot) = (routed.route, routed.target, routed.slot);
                    scratch
                        .tally
                        .refuse(routed.point, WindowRefusal::new(route, target, slot, reason));
                }
            }
            self.probe_hints[index].publish(shard.table_layout());
            drop(shard);
            samples.clear();
            histograms.clear();
        }
        scratch.histogram_deltas.clear();

        scratch.tally.finish(&scratch.routes, &mut outcome);
        // Keep the Arcs alive only for the batch; the cache owns them.
        scratch.routes.clear();
        outcome
    }

    /// Closes every window due at `now_ms` and hands its records to `emit`,
    /// one chunk per shard. Each shard is locked only while its due windows are
    /// taken out; records are built after the lock is released.
    pub fn flush_due(&self, now_ms: i64, emit: impl FnMut(Vec<AggregateRecord>)) -> FlushStats {
        self.flush(now_ms, false, emit)
    }

    /// Closes every open window, due or not (shutdown). Windows that had not
    /// ended are marked partial.
    pub fn flush_all(&self, now_ms: i64, emit: impl FnMut(Vec<AggregateRecord>)) -> FlushStats {
        self.flush(now_ms, true, emit)
    }

    /// Forgets the per-series state of series silent for `idle_series_ms`:
    /// routes (rebuilt if the series returns) and running totals of cumulative
    /// counters and histograms (the next point is a new baseline). At most once
    /// a minute: each scan write-locks every map shard in turn.
    fn evict_idle_series(&self, now_ms: i64) {
        let last = self.last_idle_eviction_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) < 60_000 {
            return;
        }
        self.last_idle_eviction_ms.store(now_ms, Ordering::Relaxed);
        let idle_ms = self.settings.idle_series_ms as i64;
        for generation in self.generations().iter() {
            generation.routes.retain(|route| !route.is_idle(now_ms, idle_ms));
        }
        self.cumulative.evict_idle(now_ms, idle_ms);
        self.cumulative_histograms.evict_idle(now_ms, idle_ms);
        self.limits.evict_idle(now_ms);
    }

    fn flush(&self, now_ms: i64, everything: bool, emit: impl FnMut(Vec<AggregateRecord>)) -> FlushStats {
        self.flush_with(now_ms, everything, None, emit, |_| {}).flushed
    }

    fn flush_with(
        &self,
        now_ms: i64,
        everything: bool,
        gate: Option<FlushGate<'_>>,
        mut emit: impl FnMut(Vec<AggregateRecord>),
        mut forward: impl FnMut(Vec<PartialWindow>),
    ) -> GatedFlushStats {
        let mut gated = GatedFlushStats::default();
        self.evict_idle_series(now_ms);
        let mut closed: Vec<ClosedWindow> = Vec::new();
        let mut dropped: Vec<ClosedWindow> = Vec::new();
        let mut classes: Vec<WindowClass> = Vec::new();
        let lead = gate.is_none_or(|gate| gate.lead);
        for shard in self.shards.iter() {
            let mut locked = shard.lock();
            if let Some(gate) = gate {
                locked.take_windows(now_ms, false, Some(gate.flushed_until), &mut dropped, &mut classes);
            }
            if lead {
                locked.take_windows(now_ms, everything, None, &mut closed, &mut classes);
            }
            drop(locked);
            if let Some(from_ms) = gate.and_then(|gate| gate.leaving_from_ms) {
                let before = closed.len();
                closed.retain(|window| window.start_ms < from_ms);
                gated.dropped += before - closed.len();
            }
            gated.dropped += dropped.len();
            dropped.clear();
            if closed.is_empty() {
                continue;
            }
            let stats = &mut gated.flushed;
            stats.windows += closed.len();
            if self.forward_lateness_ms.is_some() {
                let mut shares = Vec::new();
                closed.retain_mut(|window| {
                    if !window.target.rollup {
                        return true;
                    }
                    shares.push(partials::share_of(window, &classes[window.class as usize]));
                    false
                });
                if !shares.is_empty() {
                    gated.partials += shares.len();
                    forward(shares);
                }
            }
            let mut records = Vec::with_capacity(closed.len() * 4);
            let mut windows = closed.drain(..);
            loop {
                // Each window's output is a cache (and TLB) miss: touching the next few
                // first, in a loop that does nothing else, lets those misses overlap.
                let ahead = windows.as_slice();
                if ahead.is_empty() {
                    break;
                }
                record::warm(&ahead[..ahead.len().min(WARM_AHEAD)]);
                for window in windows.by_ref().take(WARM_AHEAD) {
                    let class = &classes[window.class as usize];
                    record::window_records(window, class, self.settings.above_max_traces, &mut records);
                }
            }
            drop(windows);
            stats.records += records.len();
            emit(records);
        }
        if let Some(forward_lateness_ms) = self.forward_lateness_ms {
            let rollups_until = gate.map_or(&[][..], |gate| gate.rollups_until);
            let (mut taken, dropped) =
                self.assembler
                    .lock()
                    .take_due(now_ms, forward_lateness_ms, everything, rollups_until, lead);
            gated.dropped += dropped;
            if let Some(from_ms) = gate.and_then(|gate| gate.leaving_from_ms) {
                let before = taken.len();
                taken.retain(|(window, _)| window.start_ms < from_ms);
                gated.dropped += before - taken.len();
            }
            if !taken.is_empty() {
                gated.flushed.windows += taken.len();
                let mut records = Vec::new();
                for (window, class) in taken {
                    record::window_records(window, &class, self.settings.above_max_traces, &mut records);
                }
                gated.flushed.records += records.len();
                emit(records);
            }
        }
        gated
    }

    /// Per shard, per policy: the window end up to which that shard has
    /// flushed (plain data, for the write-ahead log to persist).
    pub fn watermarks(&self) -> Watermarks {
        self.shards
            .iter()
            .map(|shard| shard.lock().flushed_until().to_vec())
            .collect()
    }

    /// Restores persisted watermarks before any ingest, so windows already
    /// flushed are refused as late instead of being emitted again. With the
    /// same shard count each shard gets its own; otherwise every shard gets the
    /// highest watermark of each policy (a series may have moved shard).
    pub fn restore_watermarks(&self, watermarks: &Watermarks) {
        if watermarks.len() == self.shards.len() {
            for (shard, marks) in self.shards.iter().zip(watermarks) {
                let mut shard = shard.lock();
                for (policy, until) in marks {
                    shard.mark_flushed(*policy, *until);
                }
            }
            return;
        }
        let mut highest: Vec<(StoragePolicy, i64)> = Vec::new();
        for (policy, until) in watermarks.iter().flatten() {
            match highest.iter_mut().find(|(known, _)| known == policy) {
                Some((_, high)) => *high = (*high).max(*until),
                None => highest.push((*policy, *until)),
            }
        }
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            for (policy, until) in &highest {
                shard.mark_flushed(*policy, *until);
            }
        }
    }

    /// How long after a sample's event time every window it can feed is due:
    /// the largest resolution plus lateness over the rules' storage policies.
    pub fn flush_horizon_ms(&self) -> i64 {
        self.rules()
            .storage_policies()
            .iter()
            .map(|policy| (policy.resolution_ms + self.settings.lateness_ms(policy)) as i64)
            .max()
            .unwrap_or(0)
    }

    /// Outputs with at least one open window, over all shards.
    pub fn active_outputs(&self) -> usize {
        self.shards.iter().map(|shard| shard.lock().active_outputs()).sum()
    }

    /// Per (tenant, storage policy): outputs with an open window (active
    /// series) and open windows. Locks each shard in turn; for scrapes, not ingest.
    pub fn open_by_tenant_and_policy(
        &self,
    ) -> std::collections::BTreeMap<(Arc<str>, crate::model::StoragePolicy), (u64, u64)> {
        let mut counts = std::collections::BTreeMap::new();
        for shard in self.shards.iter() {
            shard.lock().count_open(&mut counts);
        }
        counts
    }

    /// Open windows over all shards.
    pub fn open_windows(&self) -> usize {
        self.shards.iter().map(|shard| shard.lock().open_windows()).sum()
    }

    /// Rollup windows being assembled from forwarded shares.
    pub fn assembling_windows(&self) -> usize {
        self.assembler.lock().open_windows()
    }

    /// Input series whose route is cached.
    pub fn cached_series(&self) -> usize {
        self.generations()
            .iter()
            .map(|generation| generation.routes.len())
            .sum()
    }
}

/// Event time of the series' first point or histogram (`now_ms` without one):
/// the rule generation of that time routes the series.
fn first_event_ms(series: &crate::model::SeriesBatch, now_ms: i64) -> i64 {
    series
        .points
        .first()
        .and_then(|point| point.timestamp_ms)
        .or_else(|| series.histograms.first().and_then(|histogram| histogram.timestamp_ms))
        .unwrap_or(now_ms)
}

/// Per storage policy, a window end (what was flushed, or is due).
pub type PolicyMarks = Vec<(StoragePolicy, i64)>;

/// Per shard, per storage policy: the end up to which windows were flushed.
pub type Watermarks = Vec<Vec<(StoragePolicy, i64)>>;

/// What one flush did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlushStats {
    /// Windows closed.
    pub windows: usize,
    /// Records emitted.
    pub records: usize,
}

#[cfg(test)]
mod histogram_tests;
#[cfg(test)]
mod reload_tests;
#[cfg(test)]
mod tests;
