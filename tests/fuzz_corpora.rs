//! Replays every committed fuzz input (`fuzz/corpus/<target>/`: seeds, inputs
//! the fuzzers kept, and past crashes) through the same entry points the fuzz
//! targets call. A crash found once stays fixed.

use std::path::Path;

use tailfold::fuzzing;

/// Feeds every corpus file of `target` to `run`; the files that ran without a crash.
fn replay(target: &str, run: fn(&[u8])) -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut survived = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|error| panic!("{}: {error}", dir.display())) {
        let path = entry.expect("corpus entry").path();
        if path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        let data = std::fs::read(&path).expect("read corpus file");
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{target}: {} crashed", path.display());
        survived.push(path.display().to_string());
    }
    survived
}

/// An emptied or misplaced corpus would make a replay pass vacuously.
const MIN_CORPUS_FILES: usize = 10;

#[test]
fn remote_write_corpus_replays_without_a_crash() {
    let survived = replay("remote_write", fuzzing::remote_write);
    assert!(survived.len() >= MIN_CORPUS_FILES, "remote_write: only {survived:?}");
}

#[test]
fn statsd_corpus_replays_without_a_crash() {
    let survived = replay("statsd", fuzzing::statsd);
    assert!(survived.len() >= MIN_CORPUS_FILES, "statsd: only {survived:?}");
}

#[test]
fn grpc_batch_corpus_replays_without_a_crash() {
    let survived = replay("grpc_batch", fuzzing::grpc_batch);
    assert!(survived.len() >= MIN_CORPUS_FILES, "grpc_batch: only {survived:?}");
}

#[test]
fn rules_corpus_replays_without_a_crash() {
    let survived = replay("rules", fuzzing::rules);
    assert!(survived.len() >= MIN_CORPUS_FILES, "rules: only {survived:?}");
}

#[test]
fn otlp_corpus_replays_without_a_crash() {
    let survived = replay("otlp", fuzzing::otlp);
    assert!(survived.len() >= MIN_CORPUS_FILES, "otlp: only {survived:?}");
}
