//! Tests of rules file errors: each names the file, the rule (section, index,
//! name), the field and the bad value.

use super::*;

fn error(yaml: &str) -> RulesError {
    match RuleSet::parse(yaml, "rules.yaml") {
        Ok(_) => panic!("expected an error for:\n{yaml}"),
        Err(error) => error,
    }
}

/// Asserts the structured fields and the whole message of a semantic error.
fn assert_invalid(yaml: &str, location: RuleLocation, field: &str, message: &str) {
    let error = error(yaml);
    assert_eq!(error.to_string(), message);
    assert_eq!(error.file(), "rules.yaml");
    assert_eq!(error.location(), Some(&location));
    assert_eq!(error.field(), Some(field));
}

fn mapping(index: usize, name: &str) -> RuleLocation {
    RuleLocation::Rule {
        section: RuleSection::MappingRules,
        index,
        name: Some(name.into()),
    }
}

fn rollup(index: usize, name: &str) -> RuleLocation {
    RuleLocation::Rule {
        section: RuleSection::RollupRules,
        index,
        name: Some(name.into()),
    }
}

/// A valid mapping rule to put in front of the one under test.
const FIRST: &str = "  - { name: ok, filter: '__name__:x', aggregations: [sum] }\n";

#[test]
fn unknown_aggregation() {
    let yaml = format!("mapping_rules:\n{FIRST}  - name: api-latency\n    filter: 'service:api'\n    aggregations: [count, sum, p9x]\n");
    assert_invalid(
        &yaml,
        mapping(1, "api-latency"),
        "aggregations[2]",
        "rules.yaml: mapping_rules[1] \"api-latency\": field aggregations[2]: unknown aggregation \"p9x\": expected one of count, sum, rate, total, last, min, max, mean, stdev, histogram, pNN (p50, p99, p999 ...), quantile(Q), above(T), below(T)",
    );
}

#[test]
fn invalid_glob() {
    assert_invalid(
        "mapping_rules:\n  - { name: x, filter: 'service:[a-', aggregations: [sum] }\n",
        mapping(0, "x"),
        "filter",
        "rules.yaml: mapping_rules[0] \"x\": field filter: invalid glob \"[a-\" in term \"service:[a-\": unclosed character class; missing ']'",
    );
}

#[test]
fn broken_filters() {
    let cases = [
        ("''", "empty filter: expected"),
        ("'__name__:x service'", "term \"service\" has no ':'"),
        ("':x'", "empty label name in term \":x\""),
    ];
    for (filter, problem) in cases {
        let yaml = format!("mapping_rules:\n  - {{ name: f, filter: {filter}, aggregations: [sum] }}\n");
        let error = error(&yaml);
        let prefix = "rules.yaml: mapping_rules[0] \"f\": field filter: ";
        assert!(error.to_string().starts_with(&format!("{prefix}{problem}")), "{error}");
        assert_eq!(error.field(), Some("filter"));
    }
    let error = error("mapping_rules:\n  - { name: f, aggregations: [sum] }\n");
    assert!(
        error
            .to_string()
            .starts_with("rules.yaml: mapping_rules[0] \"f\": field filter: missing"),
        "{error}"
    );
}

#[test]
fn rollup_without_name() {
    assert_invalid(
        "rollup_rules:\n  - name: by-svc\n    filter: '__name__:x'\n    rollup: { group_by: [svc], aggregations: [sum] }\n",
        rollup(0, "by-svc"),
        "rollup.name",
        "rules.yaml: rollup_rules[0] \"by-svc\": field rollup.name: missing: a rollup needs the name of the series it produces",
    );
}

#[test]
fn duplicate_name_across_sections() {
    let yaml = "
mapping_rules:
  - { name: a, filter: '__name__:x', aggregations: [sum] }
rollup_rules:
  - { name: b, filter: '__name__:x', rollup: { name: r, group_by: [], aggregations: [sum] } }
  - { name: c, filter: '__name__:x', rollup: { name: r, group_by: [], aggregations: [sum] } }
  - { name: a, filter: '__name__:x', rollup: { name: r, group_by: [], aggregations: [sum] } }
";
    assert_invalid(
        yaml,
        rollup(2, "a"),
        "name",
        "rules.yaml: rollup_rules[2] \"a\": field name: duplicate rule name \"a\" (first used by mapping_rules[0])",
    );
}

#[test]
fn bad_default_policy() {
    assert_invalid(
        "defaults:\n  storage_policies: ['10x:2d']\n",
        RuleLocation::Defaults,
        "storage_policies[0]",
        "rules.yaml: defaults: field storage_policies[0]: invalid storage policy \"10x:2d\": invalid duration \"10x\": expected a whole number and a unit (ms, s, m, h, d, w, y), e.g. \"10s\"",
    );
}

#[test]
fn default_aggregations_must_fit_their_kind() {
    assert_invalid(
        "defaults:\n  counter: { aggregations: [sum, p99] }\n",
        RuleLocation::Defaults,
        "counter.aggregations[1]",
        "rules.yaml: defaults: field counter.aggregations[1]: aggregation \"p99\" does not apply to counter series",
    );
}

#[test]
fn rule_names_missing_or_empty() {
    let error = error("mapping_rules:\n  - { filter: '__name__:x', aggregations: [sum] }\n");
    assert_eq!(
        error.to_string(),
        "rules.yaml: mapping_rules[0]: field name: missing: every rule needs a unique name"
    );
    let error = error_of_rollup_name("'  '");
    assert_eq!(
        error.to_string(),
        "rules.yaml: rollup_rules[0]: field name: empty: every rule needs a unique name"
    );
}

fn error_of_rollup_name(name: &str) -> RulesError {
    error(&format!(
        "rollup_rules:\n  - {{ name: {name}, filter: '__name__:x', rollup: {{ name: r, group_by: [], aggregations: [sum] }} }}\n"
    ))
}

#[test]
fn drop_rules_take_no_aggregations_or_policies() {
    assert_invalid(
        "mapping_rules:\n  - { name: d, filter: '__name__:x', drop: true, aggregations: [sum] }\n",
        mapping(0, "d"),
        "aggregations",
        "rules.yaml: mapping_rules[0] \"d\": field aggregations: not allowed on a drop rule (drop: true): a dropped series has no own output",
    );
    let error =
        error("mapping_rules:\n  - { name: d, filter: '__name__:x', drop: true, storage_policies: ['1m:1d'] }\n");
    assert_eq!(error.field(), Some("storage_policies"));
    assert!(error
        .to_string()
        .contains("\"d\": field storage_policies: not allowed on a drop rule"));
}

#[test]
fn mapping_rules_need_aggregations_or_drop() {
    assert_invalid(
        "mapping_rules:\n  - { name: m, filter: '__name__:x' }\n",
        mapping(0, "m"),
        "aggregations",
        "rules.yaml: mapping_rules[0] \"m\": field aggregations: missing: a mapping rule needs aggregations, or drop: true",
    );
    assert_invalid(
        "mapping_rules:\n  - { name: m, filter: '__name__:x', aggregations: [] }\n",
        mapping(0, "m"),
        "aggregations",
        "rules.yaml: mapping_rules[0] \"m\": field aggregations: empty list: name at least one aggregation",
    );
    assert_invalid(
        "mapping_rules:\n  - { name: m, filter: '__name__:x', aggregations: [sum], storage_policies: [] }\n",
        mapping(0, "m"),
        "storage_policies",
        "rules.yaml: mapping_rules[0] \"m\": field storage_policies: empty list: name at least one storage policy, e.g. \"10s:2d\"",
    );
}

#[test]
fn aggregations_must_fit_the_rule_kind() {
    assert_invalid(
        "mapping_rules:\n  - { name: c, filter: '__name__:x', kind: counter, aggregations: [sum, p99] }\n",
        mapping(0, "c"),
        "aggregations[1]",
        "rules.yaml: mapping_rules[0] \"c\": field aggregations[1]: aggregation \"p99\" does not apply to counter series",
    );
    assert_invalid(
        "rollup_rules:\n  - { name: g, filter: '__name__:x', kind: gauge, rollup: { name: r, without: [pod], aggregations: [rate] } }\n",
        rollup(0, "g"),
        "rollup.aggregations[0]",
        "rules.yaml: rollup_rules[0] \"g\": field rollup.aggregations[0]: aggregation \"rate\" does not apply to gauge series",
    );
}

fn rollup_error(target: &str) -> RulesError {
    error(&format!(
        "rollup_rules:\n  - {{ name: r, filter: '__name__:x', rollup: {target} }}\n"
    ))
}

#[test]
fn rollup_grouping_errors() {
    let cases = [
        (
            "{ name: y, group_by: [a], without: [b], aggregations: [sum] }",
            "rollup.without",
            "not allowed together with group_by",
        ),
        (
            "{ name: y, aggregations: [sum] }",
            "rollup.group_by",
            "missing: name the labels",
        ),
        (
            "{ name: y, group_by: [svc, __name__], aggregations: [sum] }",
            "rollup.group_by[1]",
            "\"__name__\" cannot be grouped or removed",
        ),
        (
            "{ name: y, without: [__name__], aggregations: [sum] }",
            "rollup.without[0]",
            "\"__name__\" cannot be grouped or removed",
        ),
        (
            "{ name: y, without: [pod, pod], aggregations: [sum] }",
            "rollup.without[1]",
            "duplicate label \"pod\"",
        ),
        (
            "{ name: y, group_by: [a-b], aggregations: [sum] }",
            "rollup.group_by[0]",
            "invalid label name \"a-b\"",
        ),
        (
            "{ name: 'y z', group_by: [a], aggregations: [sum] }",
            "rollup.name",
            "invalid metric name \"y z\"",
        ),
        (
            "{ name: 9y, group_by: [a], aggregations: [sum] }",
            "rollup.name",
            "invalid metric name \"9y\"",
        ),
        (
            "{ name: y, group_by: [a] }",
            "rollup.aggregations",
            "missing: a rollup needs the aggregations",
        ),
        (
            "{ name: y, group_by: [a], aggregations: [] }",
            "rollup.aggregations",
            "empty list",
        ),
        (
            "{ name: y, group_by: [a], aggregations: [p9x] }",
            "rollup.aggregations[0]",
            "unknown aggregation \"p9x\"",
        ),
    ];
    for (target, field, problem) in cases {
        let error = rollup_error(target);
        assert_eq!(error.field(), Some(field), "{error}");
        let prefix = format!("rules.yaml: rollup_rules[0] \"r\": field {field}: {problem}");
        assert!(
            error.to_string().starts_with(&prefix),
            "{error}\nexpected prefix: {prefix}"
        );
    }
    let error = error("rollup_rules:\n  - { name: r, filter: '__name__:x' }\n");
    assert_eq!(error.field(), Some("rollup"));
    assert!(error
        .to_string()
        .starts_with("rules.yaml: rollup_rules[0] \"r\": field rollup: missing"));
}

#[test]
fn rollup_policies_are_checked() {
    let error = error(
        "rollup_rules:\n  - { name: r, filter: '__name__:x', rollup: { name: y, group_by: [a], aggregations: [sum] }, storage_policies: ['1d:1h'] }\n",
    );
    assert_eq!(
        error.to_string(),
        "rules.yaml: rollup_rules[0] \"r\": field storage_policies[0]: invalid storage policy \"1d:1h\": retention must be at least the resolution"
    );
}

#[test]
fn yaml_errors_carry_position() {
    let error = error("mapping_rules:\n  - name: a\n    filtr: x\n");
    let message = error.to_string();
    assert!(
        message.starts_with("rules.yaml: invalid yaml: mapping_rules[0]: unknown field `filtr`"),
        "{message}"
    );
    assert!(message.contains("line 3 column 5"), "{message}");
    assert!(
        matches!(
            error,
            RulesError::Yaml {
                line: Some(3),
                column: Some(5),
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.location(), None);

    let message = RuleSet::parse("mapping_rules: [", "rules.yaml")
        .unwrap_err()
        .to_string();
    assert!(message.starts_with("rules.yaml: invalid yaml: "), "{message}");
    let message = RuleSet::parse("mapping_rules: 3", "rules.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("invalid type: integer `3`, expected a sequence"),
        "{message}"
    );
    let message = RuleSet::parse(
        "mapping_rules:\n  - { name: a, filter: 'a:b', kind: timer, drop: true }\n",
        "rules.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        message.contains("mapping_rules[0].kind: unknown variant `timer`"),
        "{message}"
    );
}

#[test]
fn unreadable_file() {
    let error = RuleSet::load(std::path::Path::new("/nonexistent/rules.yaml")).unwrap_err();
    assert_eq!(error.file(), "/nonexistent/rules.yaml");
    assert!(
        error
            .to_string()
            .starts_with("/nonexistent/rules.yaml: cannot read: No such file"),
        "{error}"
    );
}
