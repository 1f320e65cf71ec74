//! Turns the deserialized rules file into a [`RuleSet`], checking every value
//! and reporting the first problem with its file, rule and field.

use std::collections::HashMap;
use std::sync::Arc;

use crate::aggregate::Aggregation;
use crate::config::rules::{DefaultsConfig, MappingRuleConfig, RollupRuleConfig, RollupTargetConfig, RulesFile};
use crate::model::{Kind, StoragePolicy, METRIC_NAME_LABEL};

use super::compile::{AggregationsByKind, Grouping, MappingRule, RollupRule, RuleHead, RuleSet};
use super::error::{RuleLocation, RuleSection, RulesError};
use super::filter::{is_label_name, Filter};

/// Where errors are reported: the file and the section or rule being checked.
struct Site<'a> {
    file: &'a str,
    location: RuleLocation,
}

impl Site<'_> {
    fn error(&self, field: impl Into<String>, problem: impl Into<String>) -> RulesError {
        RulesError::Invalid {
            file: self.file.into(),
            location: self.location.clone(),
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// Validates `config` and compiles it.
pub(super) fn compile(config: &RulesFile, file: &str) -> Result<RuleSet, RulesError> {
    let defaults_site = Site {
        file,
        location: RuleLocation::Defaults,
    };
    let (default_policies, default_aggregations) = defaults(&defaults_site, &config.defaults)?;
    let mut names = RuleNames::default();
    let mut drop_rules = Vec::new();
    let mut mapping_rules = Vec::new();
    for (index, rule) in config.mapping_rules.iter().enumerate() {
        let site = rule_site(file, RuleSection::MappingRules, index, rule.name.as_deref());
        let head = head(&site, &mut names, &rule.name, &rule.filter, rule.kind.map(Kind::from))?;
        match mapping_action(&site, rule, head.kind, &default_policies)? {
            None => drop_rules.push(head),
            Some((aggregations, policies)) => mapping_rules.push(MappingRule {
                head,
                aggregations,
                policies,
            }),
        }
    }
    let mut rollup_rules = Vec::new();
    for (index, rule) in config.rollup_rules.iter().enumerate() {
        let site = rule_site(file, RuleSection::RollupRules, index, rule.name.as_deref());
        let head = head(&site, &mut names, &rule.name, &rule.filter, rule.kind.map(Kind::from))?;
        rollup_rules.push(rollup(&site, head, rule, &default_policies)?);
    }
    Ok(RuleSet {
        generation: RuleSet::next_generation(),
        drop_rules: drop_rules.into(),
        mapping_rules: mapping_rules.into(),
        rollup_rules: rollup_rules.into(),
        default_policies,
        default_aggregations,
    })
}

fn rule_site<'a>(file: &'a str, section: RuleSection, index: usize, name: Option<&str>) -> Site<'a> {
    // A blank name would print as `""`, which reads like a quoting bug: leave it out.
    let name = name.filter(|name| !name.trim().is_empty()).map(String::from);
    Site {
        file,
        location: RuleLocation::Rule { section, index, name },
    }
}

type DefaultsCompiled = (Arc<[StoragePolicy]>, [Arc<[Aggregation]>; 4]);

fn defaults(site: &Site, config: &DefaultsConfig) -> Result<DefaultsCompiled, RulesError> {
    let policies = policies(site, "storage_policies", &config.storage_policies)?;
    let per_kind = [
        (Kind::Counter, &config.counter.aggregations),
        (Kind::Gauge, &config.gauge.aggregations),
        (Kind::Distribution, &config.distribution.aggregations),
        (Kind::Set, &config.set.aggregations),
    ];
    let mut compiled = Vec::with_capacity(4);
    for (kind, list) in per_kind {
        let field = format!("{}.aggregations", kind.as_str());
        compiled.push(Arc::from(aggregations(site, &field, list, Some(kind))?));
    }
    let compiled: [Arc<[Aggregation]>; 4] = compiled.try_into().expect("four kinds");
    Ok((policies, compiled))
}

/// Rule names seen so far, with where each was first used.
#[derive(Default)]
struct RuleNames(HashMap<String, String>);

/// Name, filter and kind of a rule; the name must be unique across sections.
fn head(
    site: &Site,
    names: &mut RuleNames,
    name: &Option<String>,
    filter: &Option<String>,
    kind: Option<Kind>,
) -> Result<RuleHead, RulesError> {
    let name = name
        .as_deref()
        .ok_or_else(|| site.error("name", "missing: every rule needs a unique name"))?;
    if name.trim().is_empty() {
        return Err(site.error("name", "empty: every rule needs a unique name"));
    }
    if let Some(first) = names.0.get(name) {
        return Err(site.error("name", format!("duplicate rule name {name:?} (first used by {first})")));
    }
    let position = match &site.location {
        RuleLocation::Rule { section, index, .. } => format!("{section}[{index}]"),
        RuleLocation::Defaults => "defaults".into(),
    };
    names.0.insert(name.into(), position);
    let filter = filter
        .as_deref()
        .ok_or_else(|| site.error("filter", "missing: every rule needs a filter, e.g. \"__name__:http_*\""))?;
    let filter = Filter::parse(filter).map_err(|error| site.error("filter", error.to_string()))?;
    Ok(RuleHead {
        name: name.into(),
        filter,
        kind,
    })
}

type Aggregating = (AggregationsByKind, Arc<[StoragePolicy]>);

/// `None` for a drop rule, else its aggregations and policies.
fn mapping_action(
    site: &Site,
    rule: &MappingRuleConfig,
    kind: Option<Kind>,
    default_policies: &Arc<[StoragePolicy]>,
) -> Result<Option<Aggregating>, RulesError> {
    const NOT_ON_DROP: &str = "not allowed on a drop rule (drop: true): a dropped series has no own output";
    if rule.drop {
        if rule.aggregations.is_some() {
            return Err(site.error("aggregations", NOT_ON_DROP));
        }
        if rule.storage_policies.is_some() {
            return Err(site.error("storage_policies", NOT_ON_DROP));
        }
        return Ok(None);
    }
    let list = rule.aggregations.as_ref().ok_or_else(|| {
        site.error(
            "aggregations",
            "missing: a mapping rule needs aggregations, or drop: true",
        )
    })?;
    let aggregations = aggregations(site, "aggregations", list, kind)?;
    let policies = match &rule.storage_policies {
        Some(list) => policies(site, "storage_policies", list)?,
        None => Arc::clone(default_policies),
    };
    Ok(Some((AggregationsByKind::new(&aggregations), policies)))
}

fn rollup(
    site: &Site,
    head: RuleHead,
    rule: &RollupRuleConfig,
    default_policies: &Arc<[StoragePolicy]>,
) -> Result<RollupRule, RulesError> {
    let target: &RollupTargetConfig = rule.rollup.as_ref().ok_or_else(|| {
        site.error(
            "rollup",
            "missing: a rollup rule needs a rollup block with name, group_by or without, and aggregations",
        )
    })?;
    let metric_name = target.name.as_deref().ok_or_else(|| {
        site.error(
            "rollup.name",
            "missing: a rollup needs the name of the series it produces",
        )
    })?;
    if !is_metric_name(metric_name) {
        return Err(site.error(
            "rollup.name",
            format!("invalid metric name {metric_name:?}: expected [a-zA-Z_:][a-zA-Z0-9_:]*"),
        ));
    }
    let grouping = match (&target.group_by, &target.without) {
        (Some(_), Some(_)) => {
            return Err(site.error(
                "rollup.without",
                "not allowed together with group_by: keep labels with group_by, or remove them with without",
            ))
        }
        (None, None) => {
            return Err(site.error(
                "rollup.group_by",
                "missing: name the labels to keep (group_by) or to remove (without)",
            ))
        }
        (Some(names), None) => Grouping::By(label_list(site, "rollup.group_by", names)?),
        (None, Some(names)) => Grouping::Without(label_list(site, "rollup.without", names)?),
    };
    let list = target.aggregations.as_ref().ok_or_else(|| {
        site.error(
            "rollup.aggregations",
            "missing: a rollup needs the aggregations of the series it produces",
        )
    })?;
    let aggregations = aggregations(site, "rollup.aggregations", list, head.kind)?;
    let policies = match &rule.storage_policies {
        Some(list) => policies(site, "storage_policies", list)?,
        None => Arc::clone(default_policies),
    };
    Ok(RollupRule {
        head,
        metric_name: metric_name.into(),
        grouping,
        aggregations: AggregationsByKind::new(&aggregations),
        policies,
    })
}

/// Checks a group_by / without list: label names, no `__name__`, no repeats.
fn label_list(site: &Site, field: &str, names: &[String]) -> Result<Box<[Box<str>]>, RulesError> {
    let mut checked: Vec<Box<str>> = Vec::with_capacity(names.len());
    for (index, name) in names.iter().enumerate() {
        let field = format!("{field}[{index}]");
        if name == METRIC_NAME_LABEL {
            return Err(site.error(
                field,
                "\"__name__\" cannot be grouped or removed: rollup.name replaces it",
            ));
        }
        if !is_label_name(name) {
            return Err(site.error(
                field,
                format!("invalid label name {name:?}: expected [a-zA-Z_][a-zA-Z0-9_]*"),
            ));
        }
        if checked.iter().any(|seen| **seen == **name) {
            return Err(site.error(field, format!("duplicate label {name:?}")));
        }
        checked.push(name.as_str().into());
    }
    Ok(checked.into())
}

/// Parses an aggregation list: not empty, each known, each applicable to `kind`
/// when the rule is restricted to one. Repeats are dropped, order kept.
fn aggregations(site: &Site, field: &str, list: &[String], kind: Option<Kind>) -> Result<Vec<Aggregation>, RulesError> {
    if list.is_empty() {
        return Err(site.error(field, "empty list: name at least one aggregation"));
    }
    let mut parsed: Vec<Aggregation> = Vec::with_capacity(list.len());
    for (index, text) in list.iter().enumerate() {
        let item_field = format!("{field}[{index}]");
        let aggregation = text
            .parse::<Aggregation>()
            .map_err(|error| site.error(item_field.clone(), error.to_string()))?;
        if let Some(kind) = kind.filter(|&kind| !aggregation.applies_to(kind)) {
            return Err(site.error(
                item_field,
                format!("aggregation {text:?} does not apply to {} series", kind.as_str()),
            ));
        }
        if !parsed.contains(&aggregation) {
            parsed.push(aggregation);
        }
    }
    Ok(parsed)
}

/// Parses a policy list: not empty, each valid; sorted and distinct.
fn policies(site: &Site, field: &str, list: &[String]) -> Result<Arc<[StoragePolicy]>, RulesError> {
    if list.is_empty() {
        return Err(site.error(field, "empty list: name at least one storage policy, e.g. \"10s:2d\""));
    }
    let mut parsed = Vec::with_capacity(list.len());
    for (index, text) in list.iter().enumerate() {
        let policy = text
            .parse::<StoragePolicy>()
            .map_err(|error| site.error(format!("{field}[{index}]"), error.to_string()))?;
        parsed.push(policy);
    }
    parsed.sort_unstable();
    parsed.dedup();
    Ok(parsed.into())
}

/// Prometheus metric names: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn is_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_' | b':'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}
