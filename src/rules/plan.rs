//! What a rule set decides for one series: the outputs it feeds, each with its
//! labels, the rule it comes from and its aggregations per storage policy.
//! Plain data, so the engine can cache and share it without knowing rules.

use std::sync::Arc;

use crate::aggregate::Aggregation;
use crate::model::{Labels, StoragePolicy};

/// Everything the engine must do with the samples of one series.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesPlan {
    /// Outputs this series feeds: its own output (unless dropped or nothing applies) first, then one per matching rollup rule.
    pub outputs: Vec<PlannedOutput>,
    /// The drop rule that suppressed the series' own output, if any (first matching drop rule by file order).
    pub dropped_by: Option<Arc<str>>,
    /// The rollup rule whose output the series is named like: the series
    /// is refused whole (`outputs` is empty), never mixed into that output.
    pub collides_with: Option<Arc<str>>,
}

impl SeriesPlan {
    /// True when the series feeds no output at all (dropped and rolled up nowhere).
    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty()
    }
}

/// One output series fed by the input series.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedOutput {
    /// Output series labels: the input labels for the own output; for a rollup, `__name__` = rollup name and only group_by labels (or all but `without` labels).
    pub labels: Labels,
    /// Which rules produced this output.
    pub origin: OutputOrigin,
    /// Aggregations per storage policy, sorted by policy, each policy once.
    pub policies: Vec<PolicyAggregations>,
}

/// Why an output exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputOrigin {
    /// The series' own output under the kind's defaults: no mapping rule matched.
    Defaults,
    /// The series' own output under these mapping rules, in file order.
    Mapping {
        /// Names of every matching mapping rule.
        rules: Vec<Arc<str>>,
    },
    /// A rolled-up series.
    Rollup {
        /// Name of the rollup rule.
        rule: Arc<str>,
    },
}

/// The aggregations an output emits under one storage policy.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyAggregations {
    /// Window length and retention.
    pub policy: StoragePolicy,
    /// De-duplicated, in first-seen order (file order of rules, then list order).
    pub aggregations: Arc<[Aggregation]>,
}
