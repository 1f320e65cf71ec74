//! The compiled, frozen rule set and its one job: turning a series' labels and
//! kind into a [`SeriesPlan`]. Building it from YAML lives in `validate`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::aggregate::Aggregation;
use crate::config::rules::RulesFile;
use crate::model::{Kind, Labels, StoragePolicy, METRIC_NAME_LABEL};

use super::filter::Filter;
use super::plan::{OutputOrigin, PlannedOutput, PolicyAggregations, SeriesPlan};
use super::validate;
use super::RulesError;

/// Gives every compiled rule set its own generation, so a cache can tell
/// plans of a reloaded rule set from current ones.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// Index of a kind in per-kind arrays.
fn kind_index(kind: Kind) -> usize {
    match kind {
        Kind::Counter => 0,
        Kind::Gauge => 1,
        Kind::Distribution => 2,
        Kind::Set => 3,
    }
}

const KINDS: [Kind; 4] = [Kind::Counter, Kind::Gauge, Kind::Distribution, Kind::Set];

/// A rule's aggregations split by kind once at compile time, so that plans of
/// millions of series share a few `Arc`s instead of owning copies.
#[derive(Clone, Debug)]
pub(super) struct AggregationsByKind([Arc<[Aggregation]>; 4]);

impl AggregationsByKind {
    pub(super) fn new(all: &[Aggregation]) -> Self {
        AggregationsByKind(KINDS.map(|kind| {
            all.iter()
                .copied()
                .filter(|aggregation| aggregation.applies_to(kind))
                .collect()
        }))
    }

    /// The aggregations that apply to `kind`, possibly none.
    fn for_kind(&self, kind: Kind) -> &Arc<[Aggregation]> {
        &self.0[kind_index(kind)]
    }
}

/// What every rule has: a name, a filter, maybe a kind restriction.
#[derive(Clone, Debug)]
pub(super) struct RuleHead {
    pub(super) name: Arc<str>,
    pub(super) filter: Filter,
    pub(super) kind: Option<Kind>,
}

impl RuleHead {
    fn matches(&self, labels: &Labels, kind: Kind) -> bool {
        self.kind.is_none_or(|wanted| wanted == kind) && self.filter.matches(labels)
    }
}

/// A mapping rule with aggregations.
#[derive(Clone, Debug)]
pub(super) struct MappingRule {
    pub(super) head: RuleHead,
    pub(super) aggregations: AggregationsByKind,
    /// Sorted and distinct.
    pub(super) policies: Arc<[StoragePolicy]>,
}

/// How a rollup picks the labels of the series it produces.
#[derive(Clone, Debug)]
pub(super) enum Grouping {
    /// Keep only these labels.
    By(Box<[Box<str>]>),
    /// Keep all labels but these.
    Without(Box<[Box<str>]>),
}

/// A rollup rule.
#[derive(Clone, Debug)]
pub(super) struct RollupRule {
    pub(super) head: RuleHead,
    pub(super) metric_name: Box<str>,
    pub(super) grouping: Grouping,
    pub(super) aggregations: AggregationsByKind,
    /// Sorted and distinct.
    pub(super) policies: Arc<[StoragePolicy]>,
}

impl RollupRule {
    fn output_labels(&self, labels: &Labels) -> Labels {
        let listed = |names: &[Box<str>], name: &str| names.iter().any(|n| &**n == name);
        let kept = match &self.grouping {
            Grouping::By(names) => labels.filtered(|name| listed(names, name)),
            Grouping::Without(names) => labels.filtered(|name| !listed(names, name)),
        };
        kept.with(METRIC_NAME_LABEL, &self.metric_name)
    }
}

/// A compiled rules file: frozen, `Send + Sync`, cheap to share behind an `Arc`.
///
/// [`RuleSet::resolve`] decides what happens to one series (labels + kind):
/// - Every matching mapping rule applies; their aggregations are unioned per
///   storage policy (deduplicated, first-seen order). Only aggregations that
///   apply to the series' kind are kept; a rule with none left, or whose
///   `kind:` differs, does not count as matching.
/// - If no mapping rule matches, the kind's default aggregations apply under
///   `defaults.storage_policies`.
/// - If any drop rule matches, the series' own output is suppressed and
///   `dropped_by` names the first such rule in file order; rollup rules still
///   consume the series (drop per-pod series, keep their rollup).
/// - Each matching rollup rule adds one output with the rolled-up labels, its
///   aggregations applicable to the kind and its policies (or the defaults); a
///   rollup with no applicable aggregation is skipped.
///
/// ```
/// use tailfold::model::{Kind, Labels};
/// use tailfold::rules::{OutputOrigin, RuleSet};
///
/// let rules = RuleSet::parse(
///     "mapping_rules:\n  - { name: drop-pods, filter: 'pod:*', drop: true }\n\
///      rollup_rules:\n  - name: by-svc\n    filter: '__name__:latency'\n\
///      \x20   rollup: { name: latency:by_svc, group_by: [svc], aggregations: [p99] }\n",
///     "rules.yaml",
/// )
/// .unwrap();
/// let labels = Labels::from_pairs([("__name__", "latency"), ("svc", "api"), ("pod", "p1")]);
/// let plan = rules.resolve(&labels, Kind::Distribution);
/// assert_eq!(plan.dropped_by.as_deref(), Some("drop-pods"));
/// assert_eq!(plan.outputs.len(), 1);
/// assert_eq!(plan.outputs[0].labels.to_string(), r#"latency:by_svc{svc="api"}"#);
/// assert!(matches!(plan.outputs[0].origin, OutputOrigin::Rollup { .. }));
/// ```
#[derive(Clone, Debug)]
pub struct RuleSet {
    pub(super) generation: u64,
    pub(super) drop_rules: Box<[RuleHead]>,
    pub(super) mapping_rules: Box<[MappingRule]>,
    pub(super) rollup_rules: Box<[RollupRule]>,
    /// Sorted and distinct.
    pub(super) default_policies: Arc<[StoragePolicy]>,
    /// Per kind (see `kind_index`).
    pub(super) default_aggregations: [Arc<[Aggregation]>; 4],
}

impl RuleSet {
    /// Parses and validates a rules file's text; `file` names it in errors.
    /// An empty (or comment-only) text gives [`RuleSet::default_rules`].
    pub fn parse(yaml: &str, file: &str) -> Result<RuleSet, RulesError> {
        let config: Option<RulesFile> = serde_yaml::from_str(yaml).map_err(|error| RulesError::yaml(file, &error))?;
        Self::compile(&config.unwrap_or_default(), file)
    }

    /// Reads, parses and validates the rules file at `path`.
    pub fn load(path: &Path) -> Result<RuleSet, RulesError> {
        let file = path.display().to_string();
        let yaml = std::fs::read_to_string(path).map_err(|io| RulesError::Read { file: file.clone(), io })?;
        Self::parse(&yaml, &file)
    }

    /// Validates an already deserialized rules file; `file` names it in errors.
    pub fn compile(config: &RulesFile, file: &str) -> Result<RuleSet, RulesError> {
        validate::compile(config, file)
    }

    /// What an empty file gives: no rules, only the built-in defaults.
    pub fn default_rules() -> RuleSet {
        Self::compile(&RulesFile::default(), "<built-in defaults>").expect("the built-in defaults are valid")
    }

    /// Decides the outputs of one series (see the type's docs for the rules).
    /// Runs every filter, so callers cache the result per series (`MatchCache`).
    pub fn resolve(&self, labels: &Labels, kind: Kind) -> SeriesPlan {
        // An input named like a rollup's output would fold into that output's
        // series (same name and labels) or sit beside it under its name.
        let name = labels.metric_name().unwrap_or_default();
        if let Some(rule) = self.rollup_rules.iter().find(|rule| &*rule.metric_name == name) {
            return SeriesPlan {
                outputs: Vec::new(),
                dropped_by: None,
                collides_with: Some(Arc::clone(&rule.head.name)),
            };
        }
        let dropped_by = self
            .drop_rules
            .iter()
            .find(|rule| rule.matches(labels, kind))
            .map(|rule| Arc::clone(&rule.name));
        let mut outputs = Vec::new();
        if dropped_by.is_none() {
            outputs.push(self.own_output(labels, kind));
        }
        for rule in self.rollup_rules.iter() {
            let aggregations = rule.aggregations.for_kind(kind);
            if aggregations.is_empty() || !rule.head.matches(labels, kind) {
                continue;
            }
            outputs.push(PlannedOutput {
                labels: rule.output_labels(labels),
                origin: OutputOrigin::Rollup {
                    rule: Arc::clone(&rule.head.name),
                },
                policies: rule
                    .policies
                    .iter()
                    .map(|&policy| PolicyAggregations {
                        policy,
                        aggregations: Arc::clone(aggregations),
                    })
                    .collect(),
            });
        }
        SeriesPlan {
            outputs,
            dropped_by,
            collides_with: None,
        }
    }

    /// The series' own output: matching mapping rules unioned, or the defaults.
    fn own_output(&self, labels: &Labels, kind: Kind) -> PlannedOutput {
        let mut rules = Vec::new();
        let mut per_policy: BTreeMap<StoragePolicy, Vec<&Arc<[Aggregation]>>> = BTreeMap::new();
        for rule in self.mapping_rules.iter() {
            let aggregations = rule.aggregations.for_kind(kind);
            if aggregations.is_empty() || !rule.head.matches(labels, kind) {
                continue;
            }
            rules.push(Arc::clone(&rule.head.name));
            for &policy in rule.policies.iter() {
                per_policy.entry(policy).or_default().push(aggregations);
            }
        }
        if rules.is_empty() {
            let aggregations = &self.default_aggregations[kind_index(kind)];
            return PlannedOutput {
                labels: labels.clone(),
                origin: OutputOrigin::Defaults,
                policies: self
                    .default_policies
                    .iter()
                    .map(|&policy| PolicyAggregations {
                        policy,
                        aggregations: Arc::clone(aggregations),
                    })
                    .collect(),
            };
        }
        PlannedOutput {
            labels: labels.clone(),
            origin: OutputOrigin::Mapping { rules },
            policies: per_policy
                .into_iter()
                .map(|(policy, sources)| PolicyAggregations {
                    policy,
                    aggregations: union(&sources),
                })
                .collect(),
        }
    }

    /// Every distinct storage policy any output can use (defaults included), sorted.
    pub fn storage_policies(&self) -> Vec<StoragePolicy> {
        let mapping = self.mapping_rules.iter().map(|rule| &rule.policies);
        let rollup = self.rollup_rules.iter().map(|rule| &rule.policies);
        std::iter::once(&self.default_policies)
            .chain(mapping)
            .chain(rollup)
            .flat_map(|policies| policies.iter().copied())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Number of rules: mapping (drop rules included) and rollup.
    pub fn rule_count(&self) -> usize {
        self.drop_rules.len() + self.mapping_rules.len() + self.rollup_rules.len()
    }

    /// Identifies this compiled rule set; a reload gets a new one.
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    pub(super) fn next_generation() -> u64 {
        NEXT_GENERATION.fetch_add(1, Ordering::Relaxed)
    }
}

/// Unions aggregation lists in order, dropping repeats. Reuses the first list
/// when the others add nothing, which is the common case.
fn union(sources: &[&Arc<[Aggregation]>]) -> Arc<[Aggregation]> {
    let mut merged: Vec<Aggregation> = sources[0].to_vec();
    for aggregation in sources[1..].iter().flat_map(|list| list.iter()) {
        if !merged.contains(aggregation) {
            merged.push(*aggregation);
        }
    }
    if merged.len() == sources[0].len() {
        Arc::clone(sources[0])
    } else {
        merged.into()
    }
}
