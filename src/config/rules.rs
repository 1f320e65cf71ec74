//! The rules file schema (`mapping_rules`, `rollup_rules`, `defaults`) as serde
//! structs. Only the shape is checked here; `crate::rules` validates values
//! and compiles them, so every semantic error can name its rule and field.

use serde::{Deserialize, Serialize};

use crate::model::Kind;

/// The built-in defaults, in one place: what an empty rules file (or one
/// without `defaults:`) gets. Strings, so they go through the same parsers
/// as the operator's own values.
pub mod builtin {
    /// Storage policies for series no mapping rule matches, and for rules without `storage_policies`.
    pub const STORAGE_POLICIES: &[&str] = &["10s:2d"];
    /// Aggregations of a counter series no mapping rule matches.
    pub const COUNTER_AGGREGATIONS: &[&str] = &["sum", "rate"];
    /// Aggregations of a gauge series no mapping rule matches.
    pub const GAUGE_AGGREGATIONS: &[&str] = &["last", "min", "max"];
    /// Aggregations of a distribution series no mapping rule matches.
    pub const DISTRIBUTION_AGGREGATIONS: &[&str] = &["count", "sum", "min", "max", "p50", "p90", "p99", "p999"];
    /// Aggregations of a set series (statsd `|s`) no mapping rule matches: its distinct members.
    pub const SET_AGGREGATIONS: &[&str] = &["count"];

    pub(super) fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|value| value.to_string()).collect()
    }
}

/// A whole rules file. Every section is optional; an empty file means "defaults only".
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    /// What applies where no rule says otherwise.
    #[serde(default, deserialize_with = "null_as_default")]
    pub defaults: DefaultsConfig,
    /// Rules that choose the aggregations and policies of a series' own output, or drop it.
    #[serde(default, deserialize_with = "null_as_default")]
    pub mapping_rules: Vec<MappingRuleConfig>,
    /// Rules that fold matching series into a new series with fewer labels.
    #[serde(default, deserialize_with = "null_as_default")]
    pub rollup_rules: Vec<RollupRuleConfig>,
}

/// Reads a bare `mapping_rules:` (YAML null) as empty: that is what a file
/// with every rule of a section commented out looks like.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// The `defaults:` section; each field falls back to [`builtin`].
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultsConfig {
    /// Policies (`10s:2d`) used when no mapping rule matches and by rules that name none.
    #[serde(default = "default_storage_policies")]
    pub storage_policies: Vec<String>,
    /// Aggregations of counter series no mapping rule matches.
    #[serde(default = "default_counter")]
    pub counter: KindDefaultsConfig,
    /// Aggregations of gauge series no mapping rule matches.
    #[serde(default = "default_gauge")]
    pub gauge: KindDefaultsConfig,
    /// Aggregations of distribution series no mapping rule matches.
    #[serde(default = "default_distribution")]
    pub distribution: KindDefaultsConfig,
    /// Aggregations of set series (statsd `|s`) no mapping rule matches; only `count` (distinct members) applies.
    #[serde(default = "default_set")]
    pub set: KindDefaultsConfig,
}

impl Default for DefaultsConfig {
    fn default() -> Self {
        DefaultsConfig {
            storage_policies: default_storage_policies(),
            counter: default_counter(),
            gauge: default_gauge(),
            distribution: default_distribution(),
            set: default_set(),
        }
    }
}

fn default_storage_policies() -> Vec<String> {
    builtin::strings(builtin::STORAGE_POLICIES)
}

fn default_counter() -> KindDefaultsConfig {
    KindDefaultsConfig {
        aggregations: builtin::strings(builtin::COUNTER_AGGREGATIONS),
    }
}

fn default_gauge() -> KindDefaultsConfig {
    KindDefaultsConfig {
        aggregations: builtin::strings(builtin::GAUGE_AGGREGATIONS),
    }
}

fn default_distribution() -> KindDefaultsConfig {
    KindDefaultsConfig {
        aggregations: builtin::strings(builtin::DISTRIBUTION_AGGREGATIONS),
    }
}

fn default_set() -> KindDefaultsConfig {
    KindDefaultsConfig {
        aggregations: builtin::strings(builtin::SET_AGGREGATIONS),
    }
}

/// Default aggregations for one kind of series.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KindDefaultsConfig {
    /// Aggregation names (`sum`, `p99`, `above(1.5)` ...), each applicable to this kind.
    pub aggregations: Vec<String>,
}

/// The kind of series a rule is restricted to, as written in YAML.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KindName {
    /// `counter`
    Counter,
    /// `gauge`
    Gauge,
    /// `distribution`
    Distribution,
    /// `set` (statsd `|s`)
    Set,
}

impl From<KindName> for Kind {
    fn from(name: KindName) -> Kind {
        match name {
            KindName::Counter => Kind::Counter,
            KindName::Gauge => Kind::Gauge,
            KindName::Distribution => Kind::Distribution,
            KindName::Set => Kind::Set,
        }
    }
}

/// One entry of `mapping_rules`: either an aggregating rule or a drop rule.
///
/// Fields the validator must report by name (rather than as a bare YAML
/// "missing field") are `Option`s.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MappingRuleConfig {
    /// Unique across all mapping and rollup rules; errors and drop counters name the rule by it.
    pub name: Option<String>,
    /// Space-separated `label:glob` terms, ANDed; `!label:glob` negates.
    pub filter: Option<String>,
    /// Restricts the rule to series of this kind.
    pub kind: Option<KindName>,
    /// Aggregations of the matching series; required unless `drop: true`.
    pub aggregations: Option<Vec<String>>,
    /// Policies of those aggregations; `defaults.storage_policies` when absent.
    pub storage_policies: Option<Vec<String>>,
    /// Suppresses the own output of matching series (rollups still see them).
    #[serde(default)]
    pub drop: bool,
}

/// One entry of `rollup_rules`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RollupRuleConfig {
    /// Unique across all mapping and rollup rules.
    pub name: Option<String>,
    /// Which input series feed the rollup; same syntax as mapping rule filters.
    pub filter: Option<String>,
    /// Restricts the rule to series of this kind.
    pub kind: Option<KindName>,
    /// The series the rule produces.
    pub rollup: Option<RollupTargetConfig>,
    /// Policies of the rolled-up series; `defaults.storage_policies` when absent.
    pub storage_policies: Option<Vec<String>>,
}

/// The `rollup:` block: the produced series' name, labels and aggregations.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RollupTargetConfig {
    /// Metric name (`__name__`) of the produced series, `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    pub name: Option<String>,
    /// Labels kept from the input series; exactly one of `group_by` and `without`.
    pub group_by: Option<Vec<String>>,
    /// Labels removed from the input series; exactly one of `group_by` and `without`.
    pub without: Option<Vec<String>>,
    /// Aggregations of the produced series.
    pub aggregations: Option<Vec<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_sections_take_builtin_defaults() {
        let file: RulesFile = serde_yaml::from_str("defaults: { gauge: { aggregations: [last] } }").unwrap();
        assert_eq!(file.defaults.storage_policies, vec!["10s:2d".to_string()]);
        assert_eq!(file.defaults.gauge.aggregations, vec!["last".to_string()]);
        assert_eq!(file.defaults.counter.aggregations, vec!["sum", "rate"]);
        assert!(file.mapping_rules.is_empty() && file.rollup_rules.is_empty());
    }

    #[test]
    fn bare_section_keys_read_as_empty() {
        let file: RulesFile = serde_yaml::from_str("defaults:\nmapping_rules:\nrollup_rules:\n").unwrap();
        assert_eq!(file, RulesFile::default());
    }

    #[test]
    fn unknown_fields_and_kinds_are_refused_with_their_path() {
        let error = serde_yaml::from_str::<RulesFile>("mapping_rules:\n  - name: a\n    filtr: x\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("mapping_rules[0]: unknown field `filtr`"), "{error}");
        assert!(error.contains("line 3"), "{error}");
        let error = serde_yaml::from_str::<RulesFile>("rollup_rules:\n  - kind: histo\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown variant `histo`"), "{error}");
    }
}
