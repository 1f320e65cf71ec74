//! Replays every committed fuzz input (`fuzz/corpus/<target>/`: seeds, inputs
//! the fuzzers kept, and past crashes) through the same entry points the fuzz
//! targets call. A crash found once stays fixed.

use std::path::Path;

use tailfold::fuzzing;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|error| panic!("{}: {error}", dir.display())) {
        let path = entry.expect("corpus entry").path();
        if path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        let data = std::fs::read(&path).expect("read corpus file");
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            panic!("{target}: {} crashed", path.display());
        }
        inputs += 1;
    }
    // An emptied or misplaced corpus would make this test pass vacuously.
    assert!(
        inputs >= 10,
        "{target}: only {inputs} corpus files in {}",
        dir.display()
    );
}

#[test]
fn remote_write_corpus_replays_without_a_crash() {
    replay("remote_write", fuzzing::remote_write);
}

#[test]
fn statsd_corpus_replays_without_a_crash() {
    replay("statsd", fuzzing::statsd);
}

#[test]
fn grpc_batch_corpus_replays_without_a_crash() {
    replay("grpc_batch", fuzzing::grpc_batch);
}

#[test]
fn rules_corpus_replays_without_a_crash() {
    replay("rules", fuzzing::rules);
}
