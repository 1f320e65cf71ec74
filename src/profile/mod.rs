//! The metrics profiler: who is costing what. Per tenant and metric name it
//! counts active series, samples and each label's distinct values; usage per
//! owner label; and what each drop or rollup rule removed. Served as
//! `GET /api/v1/profile` and rendered by `tailfold top`.
//!
//! Cheap on the hot path: a series' accounting handles are resolved once, when
//! its route is built; each batch then adds its sample count to a few atomics,
//! and only once per period per series are its (pre-hashed) labels folded into
//! the distinct-value sketches under a lock.

mod distinct;
mod report;
pub mod top;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use xxhash_rust::xxh3::xxh3_64;

use crate::model::{series_hash, Labels};
use crate::rules::{OutputOrigin, SeriesPlan};

pub use distinct::Distinct;
pub use report::{LabelCardinality, MetricUsage, OwnerUsage, ProfileQuery, ProfileReport, RuleUsage};

/// Name under which metrics past `max_metrics` are counted together.
pub const OTHER_METRICS: &str = "<other>";
/// Owner of series without the owner label.
pub const NO_OWNER: &str = "<none>";

/// Checked profiler settings (from `profile` in the process config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileSettings {
    /// Length of one accounting period; a report covers the last full period and the current one.
    pub period_ms: u64,
    /// Label whose value owns a series for cost accounting (e.g. `team`).
    pub owner_label: Option<String>,
    /// Distinct (tenant, metric name) pairs tracked; later ones are counted under [`OTHER_METRICS`].
    pub max_metrics: usize,
}

/// Distinct series, distinct outputs and per-label distinct values of one period.
#[derive(Clone, Debug, Default)]
struct Sketches {
    series: Distinct,
    outputs: Distinct,
    labels: Vec<Distinct>,
}

#[derive(Debug, Default)]
struct Periods {
    current: Sketches,
    previous: Sketches,
    previous_samples: u64,
    previous_folded: u64,
    /// Label names, indexed like `Sketches::labels`.
    label_names: Vec<Box<str>>,
}

/// Accounting of one metric name, owner or rule.
#[derive(Debug, Default)]
struct Usage {
    samples: AtomicU64,
    /// For a drop rule: samples of its series that a rollup still folds
    /// (accepted, not `dropped_by_rule`). Unused elsewhere.
    folded: AtomicU64,
    periods: Mutex<Periods>,
}

impl Usage {
    fn roll(&self, skipped: bool) {
        let samples = self.samples.swap(0, Ordering::Relaxed);
        let folded = self.folded.swap(0, Ordering::Relaxed);
        let mut periods = self.periods.lock();
        let current = std::mem::take(&mut periods.current);
        (periods.previous, periods.previous_samples, periods.previous_folded) = if skipped {
            (Sketches::default(), 0, 0)
        } else {
            (current, samples, folded)
        };
    }

    fn is_idle(&self) -> bool {
        let periods = self.periods.lock();
        self.samples.load(Ordering::Relaxed) == 0
            && periods.previous_samples == 0
            && periods.current.series.count() == 0
            && periods.previous.series.count() == 0
    }

    /// Samples folded by a rollup though their series is dropped, over both periods.
    fn folded(&self) -> u64 {
        self.folded.load(Ordering::Relaxed) + self.periods.lock().previous_folded
    }

    /// Samples, distinct series, distinct outputs and label counts over both periods.
    fn totals(&self) -> (u64, Distinct, Distinct, Vec<(Box<str>, Distinct)>) {
        let periods = self.periods.lock();
        let samples = self.samples.load(Ordering::Relaxed) + periods.previous_samples;
        let mut series = periods.previous.series.clone();
        series.merge(&periods.current.series);
        let mut outputs = periods.previous.outputs.clone();
        outputs.merge(&periods.current.outputs);
        let labels = periods
            .label_names
            .iter()
            .enumerate()
            .map(|(index, name)| {
                let mut values = periods.previous.labels.get(index).cloned().unwrap_or_default();
                if let Some(current) = periods.current.labels.get(index) {
                    values.merge(current);
                }
                (name.clone(), values)
            })
            .collect();
        (samples, series, outputs, labels)
    }
}

/// What a rule does to the series it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum RuleKind {
    Drop,
    Rollup,
}

/// What one rule does to one series, as its accounting handle records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RuleRole {
    /// Dropped, and no rollup folds it: its samples are `dropped_by_rule`.
    Dropped,
    /// Dropped, but a rollup still folds it: its samples are accepted.
    DroppedFolded,
    /// Folded into the rollup output with this key.
    Rollup(u64),
}

type UsageMap<K> = HashMap<K, Arc<Usage>>;

/// Rules are accounted per (tenant, metric name, rule, kind), so that the
/// rule table answers `--tenant` and `--metric` too.
type RuleKey = (Arc<str>, Box<str>, Arc<str>, RuleKind);

/// Usage accounting for the whole service.
pub struct Profiler {
    settings: ProfileSettings,
    /// Index of the current period (`now / period_ms`).
    period: AtomicU64,
    /// Start of the previous and current period.
    previous_start_ms: AtomicI64,
    current_start_ms: AtomicI64,
    /// By (tenant, metric name).
    metrics: Mutex<UsageMap<(Arc<str>, Box<str>)>>,
    /// By (tenant, owner label value).
    owners: Mutex<UsageMap<(Arc<str>, Box<str>)>>,
    /// By (tenant, metric name, rule name, what it does).
    rules: Mutex<UsageMap<RuleKey>>,
    /// When the profiler started: rates are over the time it has seen.
    started_ms: i64,
}

/// One series' accounting handles, kept in its cached route.
#[derive(Debug)]
pub struct SeriesProfile {
    series: u64,
    metric: Arc<Usage>,
    owner: Option<Arc<Usage>>,
    /// Rules acting on the series, each with what it does to it.
    rules: Box<[(Arc<Usage>, RuleRole)]>,
    /// (label index in the metric's usage, value hash), hashed once per route.
    labels: Box<[(u16, u64)]>,
    /// Period the series was last folded into the sketches.
    seen_period: AtomicU64,
}

impl SeriesProfile {
    /// Counts `samples` of one batch; the first batch of a period also folds the
    /// series and its labels into the sketches.
    #[inline]
    pub fn observe(&self, profiler: &Profiler, samples: u64) {
        self.metric.samples.fetch_add(samples, Ordering::Relaxed);
        if let Some(owner) = &self.owner {
            owner.samples.fetch_add(samples, Ordering::Relaxed);
        }
        for (rule, role) in self.rules.iter() {
            rule.samples.fetch_add(samples, Ordering::Relaxed);
            if *role == RuleRole::DroppedFolded {
                rule.folded.fetch_add(samples, Ordering::Relaxed);
            }
        }
        let period = profiler.period.load(Ordering::Relaxed);
        if self.seen_period.load(Ordering::Relaxed) != period
            && self.seen_period.swap(period, Ordering::Relaxed) != period
        {
            self.register();
        }
    }

    fn register(&self) {
        {
            let mut periods = self.metric.periods.lock();
            periods.current.series.insert(self.series);
            for &(index, value) in self.labels.iter() {
                let labels = &mut periods.current.labels;
                if labels.len() <= index as usize {
                    labels.resize_with(index as usize + 1, Distinct::default);
                }
                labels[index as usize].insert(value);
            }
        }
        if let Some(owner) = &self.owner {
            owner.periods.lock().current.series.insert(self.series);
        }
        for (rule, role) in self.rules.iter() {
            let mut periods = rule.periods.lock();
            periods.current.series.insert(self.series);
            if let RuleRole::Rollup(output) = role {
                periods.current.outputs.insert(*output);
            }
        }
    }
}

impl Profiler {
    /// A profiler whose first period contains `now_ms`.
    pub fn new(settings: ProfileSettings, now_ms: i64) -> Self {
        let period_ms = settings.period_ms.max(1) as i64;
        let start = now_ms.div_euclid(period_ms) * period_ms;
        Profiler {
            period: AtomicU64::new(now_ms.div_euclid(period_ms) as u64),
            previous_start_ms: AtomicI64::new(start),
            current_start_ms: AtomicI64::new(start),
            settings,
            metrics: Mutex::default(),
            owners: Mutex::default(),
            rules: Mutex::default(),
            started_ms: now_ms,
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &ProfileSettings {
        &self.settings
    }

    /// The accounting handles of a new series of `tenant` (identity `series`)
    /// under `plan`. Called once per series and rule set, on a route-cache miss.
    pub fn series(&self, tenant: &Arc<str>, labels: &Labels, series: u64, plan: &SeriesPlan) -> SeriesProfile {
        let name = labels.metric_name().unwrap_or("");
        let (metric, metric_name) = {
            let mut metrics = self.metrics.lock();
            let key = (Arc::clone(tenant), Box::<str>::from(name));
            match metrics.get(&key) {
                Some(usage) => (Arc::clone(usage), key.1),
                None if metrics.len() >= self.settings.max_metrics => (
                    Arc::clone(
                        metrics
                            .entry((Arc::clone(tenant), Box::from(OTHER_METRICS)))
                            .or_default(),
                    ),
                    Box::from(OTHER_METRICS),
                ),
                None => (Arc::clone(metrics.entry(key.clone()).or_default()), key.1),
            }
        };
        let label_hashes = {
            let mut periods = metric.periods.lock();
            labels
                .iter()
                .filter(|label| label.name != "__name__")
                .map(|label| {
                    let index = match periods.label_names.iter().position(|known| **known == *label.name) {
                        Some(index) => index,
                        None => {
                            periods.label_names.push(label.name.into());
                            periods.label_names.len() - 1
                        }
                    };
                    (index as u16, xxh3_64(label.value.as_bytes()))
                })
                .collect()
        };
        let owner = self.settings.owner_label.as_deref().map(|owner_label| {
            let owner = labels.get(owner_label).unwrap_or(NO_OWNER);
            Arc::clone(
                self.owners
                    .lock()
                    .entry((Arc::clone(tenant), Box::from(owner)))
                    .or_default(),
            )
        });
        let mut rules = Vec::new();
        {
            let mut known = self.rules.lock();
            let mut usage = |rule: &Arc<str>, kind| {
                let key = (Arc::clone(tenant), metric_name.clone(), Arc::clone(rule), kind);
                Arc::clone(known.entry(key).or_default())
            };
            if let Some(rule) = &plan.dropped_by {
                let folded = plan
                    .outputs
                    .iter()
                    .any(|output| matches!(output.origin, OutputOrigin::Rollup { .. }));
                let role = if folded {
                    RuleRole::DroppedFolded
                } else {
                    RuleRole::Dropped
                };
                rules.push((usage(rule, RuleKind::Drop), role));
            }
            for output in &plan.outputs {
                if let OutputOrigin::Rollup { rule } = &output.origin {
                    let key = series_hash(tenant, &output.labels);
                    rules.push((usage(rule, RuleKind::Rollup), RuleRole::Rollup(key)));
                }
            }
        }
        SeriesProfile {
            series,
            metric,
            owner,
            rules: rules.into(),
            labels: label_hashes,
            seen_period: AtomicU64::new(u64::MAX),
        }
    }

    /// Starts a new period when `now_ms` has left the current one (the flush
    /// loop calls this on every tick). Forgets usage idle for two periods that
    /// no cached route refers to.
    pub fn roll(&self, now_ms: i64) {
        let period_ms = self.settings.period_ms.max(1) as i64;
        let period = now_ms.div_euclid(period_ms) as u64;
        let current = self.period.load(Ordering::Relaxed);
        if period <= current {
            return;
        }
        let skipped = period > current + 1;
        let roll_all = |map: &mut dyn Iterator<Item = &Arc<Usage>>| map.for_each(|usage| usage.roll(skipped));
        roll_all(&mut self.metrics.lock().values());
        roll_all(&mut self.owners.lock().values());
        roll_all(&mut self.rules.lock().values());
        let start = period as i64 * period_ms;
        let previous = if skipped {
            start - period_ms
        } else {
            self.current_start_ms.load(Ordering::Relaxed)
        };
        self.previous_start_ms.store(previous, Ordering::Relaxed);
        self.current_start_ms.store(start, Ordering::Relaxed);
        self.period.store(period, Ordering::Relaxed);
        let unused = |usage: &Arc<Usage>| Arc::strong_count(usage) == 1 && usage.is_idle();
        self.metrics.lock().retain(|_, usage| !unused(usage));
        self.owners.lock().retain(|_, usage| !unused(usage));
        self.rules.lock().retain(|_, usage| !unused(usage));
    }
}

#[cfg(test)]
mod tests;
