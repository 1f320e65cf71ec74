//! docs/configuration.md cannot drift from the config: every key path of the
//! example configs in `config/` (commented-out example keys included) and
//! every field of the serde config types (process config and rules file)
//! must be documented there as `` `path` `` (list items as `name[].field`).

use std::collections::BTreeSet;
use std::path::Path;

use serde_yaml::Value;
use tailfold::config::rules::{MappingRuleConfig, RollupRuleConfig, RollupTargetConfig, RulesFile};
use tailfold::config::{ProcessConfig, RemoteWriteConfig};

/// Adds the key path of every leaf (and of every list of mappings) under `value`.
fn key_paths(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Mapping(map) => {
            let user_keyed = map.keys().any(|key| {
                key.as_str()
                    .is_some_and(|key| key.starts_with(|c: char| c.is_ascii_digit()))
            });
            if user_keyed || map.is_empty() {
                // A map keyed by the operator (e.g. `lateness_ms: {"10s": 5000}`) is one setting.
                out.insert(prefix.to_string());
                return;
            }
            for (key, child) in map {
                let key = key.as_str().expect("string keys");
                let path = if prefix.is_empty() {
                    key.to_string()
                } else {
                    format!("{prefix}.{key}")
                };
                key_paths(child, &path, out);
            }
        }
        Value::Sequence(items) if items.iter().any(Value::is_mapping) => {
            out.insert(prefix.to_string());
            for item in items {
                key_paths(item, &format!("{prefix}[]"), out);
            }
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

/// The YAML with commented-out example keys (`# key: value`, `#   - key: value`) uncommented.
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|line| {
            let trimmed = line.trim_start();
            let Some(rest) = trimmed.strip_prefix('#') else {
                return line.to_string();
            };
            let indent = &line[..line.len() - trimmed.len()];
            let rest = rest.strip_prefix(' ').unwrap_or(rest);
            let body = rest.trim_start().trim_start_matches("- ");
            let key = body.split(':').next().unwrap_or("");
            let looks_like_key = body.contains(':')
                && !key.is_empty()
                && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                && (body[key.len() + 1..].is_empty() || body[key.len() + 1..].starts_with(' '));
            if looks_like_key {
                format!("{indent}{rest}")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn documented() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    std::fs::read_to_string(path).expect("docs/configuration.md")
}

fn missing(paths: &BTreeSet<String>, docs: &str) -> Vec<String> {
    paths
        .iter()
        .filter(|path| !docs.contains(&format!("`{path}`")))
        .cloned()
        .collect()
}

#[test]
fn every_key_of_the_example_configs_is_documented() {
    let docs = documented();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (what, text) in [
            ("as shipped", text.clone()),
            ("with examples uncommented", uncommented(&text)),
        ] {
            let value: Value = serde_yaml::from_str(&text)
                .unwrap_or_else(|error| panic!("{} {what} is not YAML: {error}", path.display()));
            let mut paths = BTreeSet::new();
            key_paths(&value, "", &mut paths);
            assert!(!paths.is_empty(), "{}", path.display());
            let missing = missing(&paths, &docs);
            assert!(
                missing.is_empty(),
                "{} ({what}): keys not in docs/configuration.md: {missing:?}",
                path.display()
            );
            checked += paths.len();
        }
    }
    assert!(checked > 40, "only {checked} keys found: is config/ there?");
}

#[test]
fn every_field_of_the_config_types_is_documented() {
    let docs = documented();
    let mut paths = BTreeSet::new();
    let mut process = serde_yaml::to_value(ProcessConfig::default()).unwrap();
    process["remote_write"] = Value::Sequence(vec![serde_yaml::to_value(RemoteWriteConfig::default()).unwrap()]);
    key_paths(&process, "", &mut paths);
    let rules = RulesFile {
        mapping_rules: vec![MappingRuleConfig::default()],
        rollup_rules: vec![RollupRuleConfig {
            rollup: Some(RollupTargetConfig::default()),
            ..RollupRuleConfig::default()
        }],
        ..RulesFile::default()
    };
    key_paths(&serde_yaml::to_value(rules).unwrap(), "", &mut paths);
    // Sanity: the walk sees nested fields of both files.
    for expected in [
        "engine.histogram.scale",
        "remote_write[].url",
        "rollup_rules[].rollup.group_by",
    ] {
        assert!(paths.contains(expected), "{expected} not among {paths:?}");
    }
    let missing = missing(&paths, &docs);
    assert!(
        missing.is_empty(),
        "config fields not in docs/configuration.md: {missing:?}"
    );
}

#[test]
fn commented_example_keys_are_found() {
    let text = "statsd:\n  # listen: 127.0.0.1:8125   # comment\n  tenant: a\n# A prose comment: not a key\n# remote_write:\n#   - name: x\n#     url: http://h\n";
    let mut paths = BTreeSet::new();
    key_paths(&serde_yaml::from_str(&uncommented(text)).unwrap(), "", &mut paths);
    let paths: Vec<_> = paths.into_iter().collect();
    assert_eq!(
        paths,
        [
            "remote_write",
            "remote_write[].name",
            "remote_write[].url",
            "statsd.listen",
            "statsd.tenant"
        ]
    );
}
