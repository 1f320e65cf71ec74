//! Restarts keep every acknowledged point in every output, against the real
//! `tailfold` binary: with the write-ahead log a SIGTERM leaves open windows
//! to the log (replayed at the next start, never written partial), so points
//! acknowledged before and after the restart land in their own series' record
//! and in the rollup, each exactly once. Without the log, the windows a stop
//! flushed partial refuse later points, output by output, and the answer says
//! which output refused what.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::process::{replayed, start_run, stop_with, Running};
use prost::Message;
use tailfold::api::prometheus as wire;
use tailfold::api::v1;
use tailfold::model::{series_hash, Labels};
use tailfold::sink::JsonRecord;

/// Input series of the rollup.
const SERIES: usize = 40;
/// Points per series per run.
const POINTS: usize = 5;
const RESOLUTION_MS: i64 = 5_000;
const SHARDS: u64 = 64;

const RULES: &str = "defaults:\n  storage_policies: [\"5s:1h\"]\n  counter: { aggregations: [sum] }\n\
rollup_rules:\n  - name: all-load\n    filter: '__name__:load'\n    rollup: {name: \"load:all\", group_by: [], aggregations: [sum]}\n";

/// Starts the binary on `dir`, with or without the log, with the 5 s windows' `lateness_ms`.
fn start(dir: &Path, run: usize, wal: bool, lateness_ms: u64) -> (Running, String) {
    let config = format!(
        "grpc: {{listen: \"127.0.0.1:0\"}}\nhttp: {{listen: \"127.0.0.1:0\"}}\ndata_dir: {dir}\nrules_file: {dir}/rules.yaml\n\
         flush: {{interval_ms: 200, jitter_ms: 20, progress_interval_ms: 0}}\n\
         engine: {{shards: {SHARDS}, lateness_ms: {{\"5s\": {lateness_ms}}}}}\n\
         selections: {{file: false}}\nwal: {{enabled: {wal}}}\n",
        dir = dir.display()
    );
    std::fs::write(dir.join("rules.yaml"), RULES).unwrap();
    start_run(dir, run, &config)
}

fn terminate(running: Running, dir: &Path, run: usize) {
    stop_with(running, "-TERM", dir, run);
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// The start of a window with at least half of it still ahead (waiting for the next one if needed).
async fn fresh_window() -> i64 {
    let now = now_ms();
    if now.rem_euclid(RESOLUTION_MS) > RESOLUTION_MS / 2 {
        let next = now.div_euclid(RESOLUTION_MS) * RESOLUTION_MS + RESOLUTION_MS;
        tokio::time::sleep(Duration::from_millis((next - now + 5) as u64)).await;
    }
    now_ms().div_euclid(RESOLUTION_MS) * RESOLUTION_MS
}

fn series_labels(index: usize) -> Vec<(&'static str, String)> {
    vec![("__name__", "load".to_string()), ("series", index.to_string())]
}

/// One request: `POINTS` points of value 1 of series `index`, inside the window at `window_ms`.
async fn send(
    client: &mut v1::ingest_client::IngestClient<tonic::transport::Channel>,
    index: usize,
    window_ms: i64,
    run: usize,
) -> v1::WriteResponse {
    let points = (0..POINTS)
        .map(|i| common::point(1.0, window_ms + (run * 100 + i) as i64))
        .collect();
    let labels = series_labels(index);
    let pairs: Vec<(&str, &str)> = labels.iter().map(|(name, value)| (*name, value.as_str())).collect();
    let series = common::series(&pairs, v1::Kind::Counter, points);
    client
        .write(v1::WriteRequest { series: vec![series] })
        .await
        .expect("write")
        .into_inner()
}

async fn connect(address: &str) -> v1::ingest_client::IngestClient<tonic::transport::Channel> {
    v1::ingest_client::IngestClient::connect(format!("http://{address}"))
        .await
        .expect("connect")
}

/// Per (name, series label, window start): the values written, in order.
fn written(dir: &Path) -> BTreeMap<(String, String, i64), Vec<(f64, bool)>> {
    let mut out: BTreeMap<(String, String, i64), Vec<(f64, bool)>> = BTreeMap::new();
    for record in common::read_json_lines::<JsonRecord>(&dir.join("store")) {
        let series = record.labels.get("series").cloned().unwrap_or_default();
        let value = record.value.as_f64().expect("a number");
        out.entry((record.name.clone(), series, record.window_start_ms))
            .or_default()
            .push((value, record.partial));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_log_a_restart_keeps_every_acknowledged_point_in_its_own_record_and_the_rollup_once() {
    let data_dir = tempfile::tempdir().unwrap();
    let dir = data_dir.path();
    // Due 5 s after the window ends: the restart happens well inside it.
    let window = fresh_window().await;

    let (first, address) = start(dir, 1, true, 5_000);
    let mut client = connect(&address).await;
    for index in 0..SERIES {
        let answer = send(&mut client, index, window, 1).await;
        assert_eq!((answer.accepted, answer.partial), (POINTS as u64, 0), "{answer:?}");
        assert!(answer.output_refusals.is_empty(), "{answer:?}");
    }
    drop(client);
    terminate(first, dir, 1);
    assert!(
        written(dir).is_empty(),
        "a stop with the log writes no open window: {:?}",
        written(dir)
    );

    let (second, address) = start(dir, 2, true, 5_000);
    assert_eq!(
        replayed(dir, 2),
        (SERIES * POINTS) as u64,
        "the open windows came back from the log"
    );
    assert!(
        now_ms() < window + RESOLUTION_MS + 5_000,
        "the restart took longer than the lateness"
    );
    let mut client = connect(&address).await;
    for index in 0..SERIES {
        let answer = send(&mut client, index, window, 2).await;
        assert_eq!((answer.accepted, answer.rejected), (POINTS as u64, 0), "{answer:?}");
        assert!(answer.output_refusals.is_empty() && answer.partial == 0, "{answer:?}");
    }
    // The final stop once the window is due and written.
    let deadline = Instant::now() + Duration::from_secs(25);
    while written(dir).len() < SERIES + 1 {
        assert!(
            Instant::now() < deadline,
            "the window was not flushed: {:?}",
            written(dir)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    terminate(second, dir, 2);

    let records = written(dir);
    for index in 0..SERIES {
        let own = &records[&("load:sum".to_string(), index.to_string(), window)];
        assert_eq!(
            own,
            &vec![(2.0 * POINTS as f64, false)],
            "series {index}: both runs' points, once"
        );
    }
    let rollup = &records[&("load:all:sum".to_string(), String::new(), window)];
    assert_eq!(
        rollup,
        &vec![(2.0 * (SERIES * POINTS) as f64, false)],
        "the rollup, once"
    );
    assert_eq!(records.len(), SERIES + 1, "nothing else written: {records:?}");
}

/// Posts one remote-write sample of series `index` at `timestamp_ms`; returns the status and body.
async fn remote_write(http: &str, index: usize, timestamp_ms: i64) -> (u16, String) {
    let request = wire::WriteRequest {
        timeseries: vec![wire::TimeSeries {
            labels: series_labels(index)
                .into_iter()
                .map(|(name, value)| wire::Label {
                    name: name.to_string(),
                    value,
                })
                .collect(),
            samples: vec![wire::Sample {
                value: 1.0,
                timestamp: timestamp_ms,
            }],
            ..wire::TimeSeries::default()
        }],
        metadata: vec![],
    };
    let body = snap::raw::Encoder::new()
        .compress_vec(&request.encode_to_vec())
        .unwrap();
    let url = format!("http://{http}/api/v1/write");
    tokio::task::spawn_blocking(move || {
        let response = reqwest::blocking::Client::new()
            .post(url)
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .body(body)
            .send()
            .unwrap();
        (response.status().as_u16(), response.text().unwrap())
    })
    .await
    .unwrap()
}

/// Shard of an output (the engine's: its series key modulo the shard count).
fn shard_of(labels: &[(&str, String)]) -> u64 {
    series_hash(
        "default",
        &Labels::from_pairs(labels.iter().map(|(n, v)| (*n, v.as_str()))),
    ) % SHARDS
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_log_windows_flushed_partial_refuse_later_points_output_by_output() {
    let data_dir = tempfile::tempdir().unwrap();
    let dir = data_dir.path();
    // A long lateness: nothing is due during the test, so every refusal comes from the stop.
    let window = fresh_window().await;

    let (first, address) = start(dir, 1, false, 600_000);
    let mut client = connect(&address).await;
    for index in 0..SERIES {
        let answer = send(&mut client, index, window, 1).await;
        assert_eq!(answer.accepted, POINTS as u64, "{answer:?}");
    }
    drop(client);
    terminate(first, dir, 1);
    let partial = written(dir);
    assert_eq!(
        partial.len(),
        SERIES + 1,
        "the stop flushed every open window: {partial:?}"
    );
    assert!(partial.values().flatten().all(|(_, partial)| *partial), "{partial:?}");
    assert!(dir.join("flushed.json").exists(), "the stop kept its watermarks");

    let (mut second, address) = start(dir, 2, false, 600_000);
    let http = second.http_addr();
    let mut client = connect(&address).await;
    // A series of run 1: its own window and the rollup's were both written; both refuse.
    let answer = send(&mut client, 0, window, 2).await;
    assert_eq!((answer.accepted, answer.rejected), (0, POINTS as u64), "{answer:?}");
    let refusals: BTreeSet<(String, String, u64)> = answer
        .output_refusals
        .iter()
        .map(|entry| (entry.output.clone(), entry.reason.clone(), entry.count))
        .collect();
    let expected: BTreeSet<_> = [
        ("load".to_string(), "too_late".to_string(), POINTS as u64),
        ("load:all".to_string(), "too_late".to_string(), POINTS as u64),
    ]
    .into();
    assert_eq!(refusals, expected, "{answer:?}");

    // A new series whose own output sits on a shard that wrote nothing at the
    // stop: its own window takes the points, the rollup's refuses them, and
    // the answer says so instead of calling them simply accepted.
    let marked: BTreeSet<u64> = (0..SERIES)
        .map(|index| shard_of(&series_labels(index)))
        .chain([shard_of(&[("__name__", "load:all".to_string())])])
        .collect();
    let fresh = (SERIES..SERIES + 10_000)
        .find(|index| !marked.contains(&shard_of(&series_labels(*index))))
        .expect("a series on an unmarked shard");
    let answer = send(&mut client, fresh, window, 2).await;
    assert_eq!(
        (answer.accepted, answer.partial, answer.rejected),
        (POINTS as u64, POINTS as u64, 0),
        "{answer:?}"
    );
    assert_eq!(answer.output_refusals.len(), 1, "{answer:?}");
    let refusal = &answer.output_refusals[0];
    assert_eq!(
        (
            refusal.output.as_str(),
            refusal.reason.as_str(),
            refusal.storage_policy.as_str(),
            refusal.count
        ),
        ("load:all", "too_late", "5s:1h", POINTS as u64)
    );
    // Remote write says it in its answer too: still a success (a retry could
    // never be taken), with what each output refused.
    let (status, text) = remote_write(&http, 1, window + 300).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("load (5s:1h) too_late 1") && text.contains("load:all (5s:1h) too_late 1"),
        "{text}"
    );
    drop(client);
    terminate(second, dir, 2);

    // Nothing written twice: run 1's windows once, the new series' own window once.
    let records = written(dir);
    for ((name, series, start), values) in &records {
        assert_eq!(
            values.len(),
            1,
            "{name}{{series={series}}} window {start} written twice: {values:?}"
        );
    }
    assert_eq!(records.len(), SERIES + 2, "{records:?}");
    assert_eq!(
        records[&("load:all:sum".to_string(), String::new(), window)],
        vec![((SERIES * POINTS) as f64, true)]
    );
    assert_eq!(
        records[&("load:sum".to_string(), fresh.to_string(), window)],
        vec![(POINTS as f64, true)]
    );
}
