//! The rules stage: filters, the compiled rule set and the per-series match
//! cache. A YAML rules file ([`crate::config::rules`]) compiles into a frozen
//! [`RuleSet`]; [`RuleSet::resolve`] turns one series into a [`SeriesPlan`].
//!
//! Semantics of a plan (the same as on [`RuleSet`]):
//! - every matching mapping rule applies, their aggregations unioned per
//!   storage policy; only aggregations applicable to the series' kind count,
//!   and a rule left with none (or restricted to another kind) does not match;
//! - no matching mapping rule: the kind's defaults under the default policies;
//! - a matching drop rule suppresses the series' own output, yet rollups still
//!   consume the series (drop per-pod series, keep their rollup);
//! - each matching rollup rule adds one output with the rolled-up labels.
//!
//! [`MatchCache`] memoises plans by series hash so the globs run once per series.

mod cache;
mod compile;
mod error;
mod filter;
mod line_table;
mod plan;
mod validate;

#[cfg(test)]
mod fixtures_test;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod validation_tests;

pub use cache::{CacheReader, CachedPlan, MatchCache};
pub use compile::RuleSet;
pub use error::{RuleLocation, RuleSection, RulesError};
pub use filter::{Filter, FilterBuilder, FilterError};
pub use line_table::{Keyed, LineTable, ProbeHint};
pub use plan::{OutputOrigin, PlannedOutput, PolicyAggregations, SeriesPlan};
