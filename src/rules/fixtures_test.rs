//! Loads every fixture under `tests/fixtures/rules/` and checks the error
//! substrings listed in its `EXPECTED.md`, so the table cannot go stale.

use std::path::{Path, PathBuf};

use super::RuleSet;
use crate::model::{Kind, Labels};

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rules")
}

/// The rows of EXPECTED.md: fixture name and the ``code spans`` of its second cell.
fn expected_rows() -> Vec<(String, Vec<String>)> {
    let table = std::fs::read_to_string(fixtures_dir().join("EXPECTED.md")).unwrap();
    table
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim().strip_prefix('|')?.split(" | ").collect();
            let fixture = cells.first()?.trim();
            if !fixture.ends_with(".yaml") {
                return None;
            }
            // A span is the text between "``" pairs; one space of padding is
            // markdown's way to let a span start or end with a backtick.
            let spans = cells[1..]
                .join(" | ")
                .split("``")
                .skip(1)
                .step_by(2)
                .map(|span| span.strip_suffix(' ').unwrap_or(span).to_string())
                .collect();
            Some((fixture.to_string(), spans))
        })
        .collect()
}

#[test]
fn every_fixture_fails_as_expected_md_says() {
    let rows = expected_rows();
    let mut fixtures: Vec<String> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml"))
        .collect();
    fixtures.sort();
    let mut listed: Vec<String> = rows.iter().map(|(name, _)| name.clone()).collect();
    listed.sort();
    assert_eq!(fixtures, listed, "EXPECTED.md must list every fixture once");
    for (fixture, spans) in rows.iter().filter(|(name, _)| name != "valid.yaml") {
        assert!(!spans.is_empty(), "{fixture}: no expected substring");
        let error = match RuleSet::load(&fixtures_dir().join(fixture)) {
            Ok(_) => panic!("{fixture} loaded, but EXPECTED.md says it fails"),
            Err(error) => error.to_string(),
        };
        for span in spans {
            assert!(error.contains(span.as_str()), "{fixture}: {error:?} lacks {span:?}");
        }
    }
}

#[test]
fn valid_fixture_loads_and_resolves() {
    let rules = RuleSet::load(&fixtures_dir().join("valid.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rules.rule_count(), 7);
    let policies: Vec<String> = rules.storage_policies().iter().map(|p| p.to_string()).collect();
    assert_eq!(policies, ["10s:2d", "1m:40d", "1h:1y"]);
    let pod = Labels::from_pairs([
        ("__name__", "http_request_duration_seconds"),
        ("service", "api-eu"),
        ("endpoint", "/users"),
        ("pod", "api-eu-1"),
    ]);
    let plan = rules.resolve(&pod, Kind::Distribution);
    assert_eq!(plan.dropped_by.as_deref(), Some("drop-per-pod-latency"));
    let names: Vec<String> = plan.outputs.iter().map(|o| o.labels.to_string()).collect();
    assert_eq!(
        names,
        [r#"http_request_duration_seconds:by_service{endpoint="/users",service="api-eu"}"#]
    );
}

#[test]
fn expected_md_spans_are_read_with_backticks_inside() {
    let rows = expected_rows();
    let unknown_field = rows.iter().find(|(name, _)| name == "unknown_field.yaml").unwrap();
    assert_eq!(
        unknown_field.1,
        [
            "unknown_field.yaml: invalid yaml: mapping_rules[0]: unknown field `aggregation`",
            "at line 4 column 5"
        ]
    );
}
