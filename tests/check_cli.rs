//! `tailfold check -c FILE` on the shipped configs and on every broken rules
//! fixture: exit status, and an error naming the file, the rule and the field.

use std::path::{Path, PathBuf};
use std::process::Command;

use tailfold::rules::RuleSet;

const BINARY: &str = env!("CARGO_BIN_EXE_tailfold");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn check(path: &Path) -> (bool, String, String) {
    let output = Command::new(BINARY)
        .args(["check", "-c"])
        .arg(path)
        .output()
        .expect("run tailfold check");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn shipped_configs_and_the_valid_fixture_pass() {
    for path in [
        "config/tailfold.yaml",
        "config/rules.yaml",
        "tests/fixtures/rules/valid.yaml",
    ] {
        let (ok, stdout, stderr) = check(&repo(path));
        assert!(ok, "{path}: {stderr}");
        assert!(stdout.contains(": ok ("), "{path}: {stdout}");
    }
    let (_, stdout, _) = check(&repo("config/tailfold.yaml"));
    assert!(stdout.contains("policies 10s:2d, 1m:40d"), "{stdout}");
}

#[test]
fn each_broken_rules_file_fails_with_file_rule_and_field() {
    let named = [
        ("bad_glob.yaml", "\"api-latency\"", "field filter: invalid glob \"[a-\""),
        (
            "unknown_aggregation.yaml",
            "\"api-latency\"",
            "field aggregations[2]: unknown aggregation \"p9x\"",
        ),
        (
            "bad_policy.yaml",
            "\"latency-by-service\"",
            "field storage_policies[1]: invalid storage policy \"1m:40x\"",
        ),
        ("rollup_without_name.yaml", "\"by-svc\"", "field rollup.name: missing"),
        (
            "duplicate_name.yaml",
            "\"latency\"",
            "field name: duplicate rule name \"latency\"",
        ),
        ("bad_yaml.yaml", "", "invalid yaml"),
        ("unknown_field.yaml", "", "unknown field `aggregation`"),
    ];
    for (fixture, rule, field) in named {
        let path = repo(&format!("tests/fixtures/rules/{fixture}"));
        let (ok, _, stderr) = check(&path);
        assert!(!ok, "{fixture} passed the check");
        assert!(
            stderr.contains(&path.display().to_string()),
            "{fixture}: no file in {stderr:?}"
        );
        assert!(
            stderr.contains(rule) && stderr.contains(field),
            "{fixture}: {stderr:?} lacks {rule} / {field}"
        );
        // The CLI prints the library's error, whole.
        let error = RuleSet::load(&path).unwrap_err().to_string();
        assert_eq!(stderr.trim_end(), format!("tailfold: {error}"));
    }
}

#[test]
fn a_process_config_pointing_at_broken_rules_fails_and_a_missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tailfold.yaml");
    let rules = repo("tests/fixtures/rules/bad_glob.yaml");
    std::fs::write(&config, format!("rules_file: {}\n", rules.display())).unwrap();
    let (ok, _, stderr) = check(&config);
    assert!(!ok);
    assert!(
        stderr.contains("bad_glob.yaml: mapping_rules[1] \"api-latency\": field filter"),
        "{stderr}"
    );

    let (ok, _, stderr) = check(&dir.path().join("missing.yaml"));
    assert!(!ok);
    assert!(stderr.contains("missing.yaml: cannot read"), "{stderr}");
}
