//! Write-ahead log tests with a real engine: replay refills open windows,
//! committed watermarks stop replay from emitting a window twice, segments
//! go once their windows have flushed, and a torn tail loses only itself.

use std::sync::Arc;

use super::*;
use crate::engine::{AggregateRecord, EngineSettings, RecordValue};
use crate::model::{Kind, Labels, Point, SeriesBatch};
use crate::rules::RuleSet;

const RULES: &str = "defaults:\n  storage_policies: [\"10s:1h\"]\n  counter: { aggregations: [sum] }\n";

fn engine() -> Engine {
    let settings = EngineSettings {
        shards: 4,
        lateness_overrides: vec![(10_000, 1_000)],
        ..EngineSettings::default()
    };
    Engine::new(settings, RuleSet::parse(RULES, "rules.yaml").unwrap())
}

fn batch(series: &str, value: f64, timestamp_ms: i64) -> IngestBatch {
    IngestBatch {
        tenant: Arc::from("default"),
        series: vec![SeriesBatch::new(
            Labels::from_pairs([("__name__", series)]),
            Kind::Counter,
            vec![Point::new(value, Some(timestamp_ms), None)],
        )],
    }
}

fn settings(dir: &Path) -> WalSettings {
    WalSettings {
        dir: dir.to_path_buf(),
        segment_bytes: 1 << 20,
    }
}

/// (series, window start, sum) of every record a flush of everything emits.
fn sums(engine: &Engine, now_ms: i64) -> Vec<(String, i64, f64)> {
    let mut records: Vec<AggregateRecord> = Vec::new();
    engine.flush_all(now_ms, |chunk| records.extend(chunk));
    let mut sums: Vec<_> = records
        .iter()
        .map(|record| match record.value {
            RecordValue::Scalar(value) => (record.output_name(), record.window_start_ms, value),
            RecordValue::Histogram(_) => panic!("no histograms here"),
        })
        .collect();
    sums.sort_by(|a, b| a.partial_cmp(b).unwrap());
    sums
}

#[tokio::test]
async fn replay_refills_open_windows_with_what_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let first = engine();
    let (wal, stats) = Wal::open(&settings(dir.path()), &first).unwrap();
    assert_eq!(stats, ReplayStats::default());
    for (index, timestamp_ms) in [1_000, 4_000, 12_000, 15_000].into_iter().enumerate() {
        let batch = batch(if index % 2 == 0 { "a" } else { "b" }, index as f64 + 1.0, timestamp_ms);
        wal.append(&batch, 5_000).await.unwrap();
        first.ingest(&batch, 5_000).unwrap();
    }
    // A crash: the writer is stopped, nothing was flushed or committed.
    drop(wal);

    let second = engine();
    let (_wal, stats) = Wal::open(&settings(dir.path()), &second).unwrap();
    assert_eq!(
        (stats.segments, stats.batches, stats.accepted, stats.refused),
        (1, 4, 4, 0)
    );
    let expected = sums(&first, 16_000);
    assert_eq!(expected.len(), 4);
    assert_eq!(sums(&second, 16_000), expected);
}

#[tokio::test]
async fn committed_windows_are_not_replayed_and_their_segments_go() {
    let dir = tempfile::tempdir().unwrap();
    let first = engine();
    let (wal, _) = Wal::open(&settings(dir.path()), &first).unwrap();
    for (timestamp_ms, value) in [(1_000, 1.0), (2_000, 2.0)] {
        let batch = batch("a", value, timestamp_ms);
        wal.append(&batch, 3_000).await.unwrap();
        first.ingest(&batch, 3_000).unwrap();
    }
    // Window [0, 10 s) is due at 11 s: flushed and committed.
    let mut flushed = Vec::new();
    first.flush_due(11_000, |chunk| flushed.extend(chunk));
    assert_eq!(flushed.len(), 1);
    let horizon = first.flush_horizon_ms();
    assert_eq!(horizon, 11_000);
    // A sample at 2 s may feed a window ending as late as 12 s, due at 13 s: the segment stays.
    assert_eq!(wal.commit_flush(first.watermarks(), 11_000, horizon, false).unwrap(), 0);
    first.flush_due(13_000, |_| {});
    // Every window it feeds has flushed; being the active segment, it is asked to roll.
    assert_eq!(wal.commit_flush(first.watermarks(), 13_000, horizon, false).unwrap(), 0);
    let later = batch("a", 5.0, 14_000);
    wal.append(&later, 14_000).await.unwrap();
    first.ingest(&later, 14_000).unwrap();
    assert_eq!(wal.segment_count(), 2, "a new segment after the roll");
    assert_eq!(wal.commit_flush(first.watermarks(), 14_000, horizon, false).unwrap(), 1);
    assert_eq!(wal.segment_count(), 1);
    drop(wal);

    // Restart: only the open window [10 s, 20 s) comes back, once.
    let second = engine();
    let (wal, stats) = Wal::open(&settings(dir.path()), &second).unwrap();
    assert_eq!((stats.batches, stats.accepted), (1, 1));
    assert_eq!(sums(&second, 15_000), vec![("a:sum".to_string(), 10_000, 5.0)]);

    // A window already flushed stays refused after the restart even if its sample is replayed.
    let stale = batch("a", 7.0, 3_000);
    wal.append(&stale, 3_500).await.unwrap();
    assert_eq!(second.ingest(&stale, 3_500).unwrap().accepted, 0);
    wal.close().unwrap();
    assert_eq!(
        wal.segment_count(),
        2,
        "close without a committed shutdown flush keeps segments"
    );
    // Replayed again, that sample is skipped as already flushed, not refused.
    let (_wal, stats) = Wal::open(&settings(dir.path()), &engine()).unwrap();
    assert_eq!((stats.accepted, stats.already_flushed, stats.refused), (1, 1, 0));
}

#[tokio::test]
async fn a_committed_shutdown_flush_deletes_every_segment() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine();
    let (wal, _) = Wal::open(&settings(dir.path()), &engine).unwrap();
    let batch = batch("a", 1.0, 1_000);
    wal.append(&batch, 1_000).await.unwrap();
    engine.ingest(&batch, 1_000).unwrap();
    engine.flush_all(2_000, |_| {});
    wal.commit_flush(engine.watermarks(), 2_000, engine.flush_horizon_ms(), true)
        .unwrap();
    wal.close().unwrap();
    let left: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "wal"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(matches!(wal.append_blocking(&batch, 3_000), Err(WalError::Closed)));
}

#[tokio::test]
async fn a_torn_tail_loses_only_the_unacknowledged_frame() {
    let dir = tempfile::tempdir().unwrap();
    let first = engine();
    let (wal, _) = Wal::open(&settings(dir.path()), &first).unwrap();
    wal.append(&batch("a", 1.0, 1_000), 1_000).await.unwrap();
    wal.append(&batch("a", 2.0, 1_000), 1_000).await.unwrap();
    drop(wal);
    // A crash mid-append: half of a third frame.
    let segment = dir.path().join(segment_name(0));
    let mut frame = Vec::new();
    encode(&batch("a", 4.0, 1_000), 1_000, &mut frame);
    let mut file = OpenOptions::new().append(true).open(&segment).unwrap();
    file.write_all(&frame[..frame.len() / 2]).unwrap();
    drop(file);

    let second = engine();
    let (wal, stats) = Wal::open(&settings(dir.path()), &second).unwrap();
    assert_eq!((stats.batches, stats.accepted), (2, 2));
    assert_eq!(stats.skipped_bytes, (frame.len() / 2) as u64);
    assert_eq!(sums(&second, 2_000), vec![("a:sum".to_string(), 0, 3.0)]);
    // New appends go to a new segment, never after the torn frame.
    wal.append(&batch("a", 8.0, 1_000), 1_000).await.unwrap();
    drop(wal);
    let third = engine();
    let (_wal, stats) = Wal::open(&settings(dir.path()), &third).unwrap();
    assert_eq!((stats.segments, stats.batches), (2, 3));
    assert_eq!(sums(&third, 2_000), vec![("a:sum".to_string(), 0, 11.0)]);
}
