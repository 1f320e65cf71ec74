//! Rollup windows assembled from forwarded partials. In a cluster, each input
//! owner folds its share of a rollup window and hands the state over at flush;
//! the rollup's owner keeps one share per (window, source) and merges them.

use std::collections::HashMap;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::aggregate::histogram::{ExpHistogram, HistogramConfig, HistogramParts, PartsError};
use crate::aggregate::{Aggregation, CounterState, GaugeState, SetParts, SetState};
use crate::model::{series_hash, Kind, Labels, StoragePolicy};

use super::route::{OutputTarget, PolicySlot};
use super::shard::{ClosedWindow, WindowClass};
use super::totals::RunningTotals;
use super::window::WindowState;

/// A window's state as plain data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PartialState {
    /// Counter sum and count.
    Counter(CounterState),
    /// Gauge statistics (a rollup's with each input's latest value).
    Gauge(GaugeState),
    /// The histogram with its reservoirs.
    Distribution(HistogramParts),
    /// The set's members while exact, else its sketch: the owner's union is
    /// exact while it stays within the owner's bound.
    Set(SetParts),
}

/// One input owner's share of one rollup window, as it is forwarded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartialWindow {
    /// Owner of the rollup output.
    pub tenant: String,
    /// The rollup's output labels, `(name, value)` sorted by name.
    pub labels: Vec<(String, String)>,
    /// Kind of the inputs.
    pub kind: Kind,
    /// The window's storage policy.
    pub policy: StoragePolicy,
    /// The policy's allowed lateness, as the input owner's rules set it.
    pub lateness_ms: i64,
    /// What to emit, written as in rules (`p99`, `above(1.5)`).
    pub aggregations: Vec<String>,
    /// Window start.
    pub start_ms: i64,
    /// The folded share.
    pub state: PartialState,
}

/// Why a forwarded partial was refused.
#[derive(Debug, thiserror::Error)]
pub enum PartialError {
    /// The histogram parts are inconsistent.
    #[error("rollup partial of {output}: {source}")]
    Parts {
        /// The output named by the partial.
        output: String,
        /// What is wrong.
        source: PartsError,
    },
    /// The state does not fit the kind, a label or aggregation is malformed.
    #[error("rollup partial of {output}: {problem}")]
    Malformed {
        /// The output named by the partial.
        output: String,
        /// What is wrong.
        problem: String,
    },
    /// The window was already flushed here.
    #[error("rollup partial of {output}: window {start_ms} already flushed")]
    TooLate {
        /// The output named by the partial.
        output: String,
        /// Window start.
        start_ms: i64,
    },
}

impl WindowState {
    /// The state as plain data, for forwarding.
    pub fn to_partial(&self) -> PartialState {
        match self {
            WindowState::Counter(state) => PartialState::Counter(*state),
            WindowState::Gauge(state) => PartialState::Gauge((**state).clone()),
            WindowState::Distribution(histogram) => PartialState::Distribution(histogram.to_parts()),
            WindowState::Set(state) => PartialState::Set(state.to_parts()),
        }
    }

    /// Adds another share of the same output's window.
    fn merge(&mut self, other: &WindowState, rng: &mut SmallRng) {
        match (self, other) {
            (WindowState::Counter(mine), WindowState::Counter(theirs)) => {
                mine.sum += theirs.sum;
                mine.count += theirs.count;
            }
            (WindowState::Gauge(mine), WindowState::Gauge(theirs)) => mine.merge(theirs),
            (WindowState::Distribution(mine), WindowState::Distribution(theirs)) => mine.merge(theirs, rng),
            (WindowState::Set(mine), WindowState::Set(theirs)) => mine.merge(theirs),
            // Shares are checked against the output's kind when they arrive.
            _ => {}
        }
    }
}

/// A share's tenant, labels, aggregations and state, checked.
type CheckedShare = (Arc<str>, Labels, Vec<Aggregation>, WindowState);

impl PartialWindow {
    /// Checked runtime form: the state rebuilt under `histogram` (a set's
    /// under `set_max_exact`), the aggregations parsed, the labels made a label set.
    fn into_parts(self, histogram: HistogramConfig, set_max_exact: usize) -> Result<CheckedShare, PartialError> {
        let output = format!("{}{:?}", self.tenant, self.labels);
        let malformed = |problem: String| PartialError::Malformed {
            output: output.clone(),
            problem,
        };
        let mut aggregations = Vec::with_capacity(self.aggregations.len());
        for text in &self.aggregations {
            let aggregation: Aggregation = text
                .parse()
                .map_err(|error| malformed(format!("aggregation {text:?}: {error}")))?;
            if !aggregation.applies_to(self.kind) {
                return Err(malformed(format!(
                    "aggregation {text} does not apply to a {}",
                    self.kind.as_str()
                )));
            }
            aggregations.push(aggregation);
        }
        if self.labels.windows(2).any(|pair| pair[0].0 >= pair[1].0) || self.labels.is_empty() {
            return Err(malformed("labels empty, unsorted or repeated".into()));
        }
        if self.policy.resolution_ms == 0 || self.start_ms.rem_euclid(self.policy.resolution_ms as i64) != 0 {
            return Err(malformed(format!(
                "window start {} not aligned to {}",
                self.start_ms, self.policy
            )));
        }
        let state = match (self.kind, self.state) {
            (Kind::Counter, PartialState::Counter(state)) if state.sum.is_finite() => WindowState::Counter(state),
            (Kind::Gauge, PartialState::Gauge(state)) => WindowState::Gauge(Box::new(state)),
            (Kind::Distribution, PartialState::Distribution(parts)) => WindowState::Distribution(Box::new(
                ExpHistogram::from_parts(histogram, &parts).map_err(|source| PartialError::Parts {
                    output: output.clone(),
                    source,
                })?,
            )),
            (Kind::Set, PartialState::Set(parts)) => WindowState::Set(Box::new(
                SetState::from_parts(set_max_exact, &parts).map_err(|error| malformed(error.to_string()))?,
            )),
            (kind, _) => return Err(malformed(format!("state is not a {} window", kind.as_str()))),
        };
        let labels = Labels::from_pairs(self.labels.iter().map(|(name, value)| (name.as_str(), value.as_str())));
        Ok((Arc::from(self.tenant.as_str()), labels, aggregations, state))
    }
}

/// The share a closed rollup window of class `class` hands to the rollup's owner.
pub(super) fn share_of(window: &ClosedWindow, class: &WindowClass) -> PartialWindow {
    let target = &window.target;
    PartialWindow {
        tenant: target.tenant.to_string(),
        labels: target
            .labels
            .iter()
            .map(|label| (label.name.to_string(), label.value.to_string()))
            .collect(),
        kind: target.kind,
        policy: class.policy,
        lateness_ms: class.lateness_ms,
        aggregations: class.aggregations.iter().map(ToString::to_string).collect(),
        start_ms: window.start_ms,
        state: window.state.to_partial(),
    }
}

/// One rollup window being assembled: its output and one share per source.
struct Assembly {
    target: Arc<OutputTarget>,
    class: WindowClass,
    start_ms: i64,
    shares: Vec<(u32, WindowState)>,
}

/// The rollup windows a cluster instance assembles from forwarded shares.
pub struct Assembler {
    windows: HashMap<(u64, StoragePolicy, i64), Assembly>,
    /// Per policy, the end up to which assembled windows were taken.
    flushed_until: Vec<(StoragePolicy, i64)>,
    /// Running `total`s per (output, policy).
    totals: RunningTotals,
    histogram: HistogramConfig,
    set_max_exact: usize,
    rng: SmallRng,
}

impl Assembler {
    /// No windows yet; distribution shares are rebuilt under `histogram`,
    /// set shares under `set_max_exact`.
    pub fn new(histogram: HistogramConfig, set_max_exact: usize) -> Self {
        Assembler {
            windows: HashMap::new(),
            flushed_until: Vec::new(),
            totals: RunningTotals::default(),
            histogram,
            set_max_exact,
            rng: SmallRng::seed_from_u64(0x0a55_e4b1),
        }
    }

    /// Keeps `partial` as source `source`'s share of its window, replacing an
    /// earlier share of the same source (a new leader re-sending what its
    /// predecessor sent before it could record the flush).
    pub fn insert(&mut self, source: u32, partial: PartialWindow) -> Result<(), PartialError> {
        let (policy, lateness_ms, start_ms) = (partial.policy, partial.lateness_ms, partial.start_ms);
        let (tenant, labels, aggregations, state) = partial.into_parts(self.histogram, self.set_max_exact)?;
        let key = series_hash(&tenant, &labels);
        let end_ms = start_ms + policy.resolution_ms as i64;
        if self
            .flushed_until
            .iter()
            .any(|(flushed, until)| *flushed == policy && end_ms <= *until)
        {
            return Err(PartialError::TooLate {
                output: format!("{tenant}{labels:?}"),
                start_ms,
            });
        }
        let kind = match &state {
            WindowState::Counter(_) => Kind::Counter,
            WindowState::Gauge(_) => Kind::Gauge,
            WindowState::Distribution(_) => Kind::Distribution,
            WindowState::Set(_) => Kind::Set,
        };
        let assembly = self.windows.entry((key, policy, start_ms)).or_insert_with(|| {
            let aggregations: Arc<[Aggregation]> = aggregations.into();
            let slot = PolicySlot {
                policy,
                lateness_ms,
                keeps_total: aggregations.contains(&Aggregation::Total),
                aggregations: Arc::clone(&aggregations),
                // No window is opened from this slot: the shares bring their links in their parts.
                links: None,
            };
            Assembly {
                class: WindowClass {
                    policy,
                    lateness_ms,
                    keeps_total: slot.keeps_total,
                    aggregations,
                },
                target: Arc::new(OutputTarget {
                    key,
                    tenant,
                    labels: Arc::new(labels),
                    kind,
                    rollup: true,
                    slots: Arc::from([slot]),
                }),
                start_ms,
                shares: Vec::new(),
            }
        });
        if assembly.target.kind != kind {
            return Err(PartialError::Malformed {
                output: format!("{}{:?}", assembly.target.tenant, assembly.target.labels),
                problem: format!(
                    "a {} share for a {} output",
                    kind.as_str(),
                    assembly.target.kind.as_str()
                ),
            });
        }
        match assembly.shares.iter_mut().find(|(from, _)| *from == source) {
            Some(share) => share.1 = state,
            None => assembly.shares.push((source, state)),
        }
        Ok(())
    }

    /// Takes every window whose end plus lateness plus `forward_lateness_ms`
    /// has passed at `now_ms` (every window when `everything`), and that ends
    /// after `skip_until` of its policy; windows ending at or before it are
    /// dropped unemitted (another instance flushed them). Returns the windows
    /// to emit, merged, in window order per output, with their classes.
    pub fn take_due(
        &mut self,
        now_ms: i64,
        forward_lateness_ms: i64,
        everything: bool,
        skip_until: &[(StoragePolicy, i64)],
        emit: bool,
    ) -> (Vec<(ClosedWindow, WindowClass)>, usize) {
        let due: Vec<(u64, StoragePolicy, i64)> = self
            .windows
            .iter()
            .filter(|(_, assembly)| {
                let end_ms = assembly.class.end_ms(assembly.start_ms);
                let due = everything || end_ms + assembly.class.lateness_ms + forward_lateness_ms <= now_ms;
                let skipped = until_of(skip_until, assembly.class.policy).is_some_and(|until| end_ms <= until);
                (emit && due) || skipped
            })
            .map(|(key, _)| *key)
            .collect();
        let mut due = due;
        due.sort_unstable_by_key(|(key, _, start)| (*key, *start));
        let mut taken = Vec::new();
        let mut dropped = 0;
        for key in due {
            let Some(mut assembly) = self.windows.remove(&key) else {
                continue;
            };
            let end_ms = assembly.class.end_ms(assembly.start_ms);
            let policy = assembly.class.policy;
            match self.flushed_until.iter_mut().find(|(flushed, _)| *flushed == policy) {
                Some((_, until)) => *until = (*until).max(end_ms),
                None => self.flushed_until.push((policy, end_ms)),
            }
            let mut shares = assembly.shares.drain(..).map(|(_, state)| state);
            let Some(mut state) = shares.next() else {
                continue;
            };
            for share in shares {
                state.merge(&share, &mut self.rng);
            }
            let running_total = match &state {
                WindowState::Counter(counter) if assembly.class.keeps_total => {
                    Some(
                        self.totals
                            .add(assembly.target.key, policy, (counter.sum, counter.count as f64), end_ms),
                    )
                }
                WindowState::Distribution(histogram) if assembly.class.keeps_total => Some(self.totals.add(
                    assembly.target.key,
                    policy,
                    (histogram.sum(), histogram.count() as f64),
                    end_ms,
                )),
                _ => None,
            };
            if until_of(skip_until, policy).is_some_and(|until| end_ms <= until) {
                dropped += 1;
                continue;
            }
            taken.push((
                ClosedWindow {
                    target: assembly.target,
                    class: 0,
                    start_ms: assembly.start_ms,
                    state,
                    partial: end_ms > now_ms,
                    running_total,
                },
                assembly.class,
            ));
        }
        (taken, dropped)
    }

    /// Windows being assembled.
    pub fn open_windows(&self) -> usize {
        self.windows.len()
    }
}

fn until_of(marks: &[(StoragePolicy, i64)], policy: StoragePolicy) -> Option<i64> {
    marks.iter().find(|(p, _)| *p == policy).map(|(_, until)| *until)
}

#[cfg(test)]
mod tests;
