//! The write-ahead log against SIGKILL: the real `tailfold` binary under gRPC
//! load is killed mid-run, restarted on the same data directory and stopped
//! with SIGTERM (open windows stay in the log), then started once more under
//! load and stopped with Ctrl-C (SIGINT), and a last time, idle, until every
//! window is due. Every acknowledged point is in the store exactly once, per
//! window, no (series, window) was emitted twice and none partial.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::process::{replayed, start_run, stop_with, Running};
use parking_lot::Mutex;
use tailfold::api::v1;
use tailfold::sink::JsonRecord;

/// Points per request; each request writes its own series.
const POINTS: usize = 20;
const CLIENTS: usize = 4;

const RULES: &str = "defaults:\n  storage_policies: [\"1s:1h\"]\n  counter: { aggregations: [sum] }\n";

fn start(dir: &Path, run: usize) -> (Running, String) {
    let config = format!(
        "grpc: {{listen: \"127.0.0.1:0\"}}\nhttp: {{listen: \"127.0.0.1:0\"}}\ndata_dir: {dir}\nrules_file: {dir}/rules.yaml\n\
         flush: {{interval_ms: 200, jitter_ms: 20, progress_interval_ms: 0}}\nengine: {{lateness_ms: {{\"1s\": 1000}}}}\n\
         selections: {{file: false}}\nwal: {{enabled: true, segment_bytes: 65536}}\n",
        dir = dir.display()
    );
    std::fs::write(dir.join("rules.yaml"), RULES).unwrap();
    start_run(dir, run, &config)
}

/// True once a store segment file has bytes (read without parsing: it may be mid-append).
fn store_has_data(store: &Path) -> bool {
    let Ok(files) = std::fs::read_dir(store.join("1s_1h")) else {
        return false;
    };
    files
        .flatten()
        .any(|file| file.metadata().is_ok_and(|meta| meta.len() > 0))
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// What the load sent: per request id, its point timestamps and whether it was acknowledged.
#[derive(Default)]
struct Ledger {
    sent: BTreeMap<usize, Vec<i64>>,
    acknowledged: BTreeMap<usize, bool>,
}

/// Sends requests (one fresh series each) until `stop` or the first failure.
async fn load(address: String, next_id: Arc<AtomicUsize>, ledger: Arc<Mutex<Ledger>>, stop: Arc<AtomicBool>) {
    let mut client = v1::ingest_client::IngestClient::connect(format!("http://{address}"))
        .await
        .expect("connect");
    while !stop.load(Ordering::Relaxed) {
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        // Spread over the last 0.86 s (less than the 1 s lateness): often two windows, always on time.
        let stamps: Vec<i64> = (0..POINTS as i64).map(|i| now - i * 45).collect();
        let points = stamps.iter().map(|t| common::point(1.0, *t)).collect();
        let request_id = id.to_string();
        ledger.lock().sent.insert(id, stamps);
        let series = common::series(
            &[("__name__", "load"), ("request", &request_id)],
            v1::Kind::Counter,
            points,
        );
        match client.write(v1::WriteRequest { series: vec![series] }).await {
            Ok(response) => {
                let response = response.into_inner();
                assert_eq!(
                    response.accepted, POINTS as u64,
                    "request {id}: every point is on time: {response:?}"
                );
                ledger.lock().acknowledged.insert(id, true);
            }
            // The kill: this request and the rest of this client are unacknowledged.
            Err(_) => return,
        }
    }
}

async fn run_load(address: &str, next_id: &Arc<AtomicUsize>, ledger: &Arc<Mutex<Ledger>>, for_how_long: Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(load(
                address.to_string(),
                Arc::clone(next_id),
                Arc::clone(ledger),
                Arc::clone(&stop),
            ))
        })
        .collect();
    tokio::time::sleep(for_how_long).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("load task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_load_loses_no_acknowledged_point_and_emits_no_window_twice() {
    let data_dir = tempfile::tempdir().unwrap();
    let dir = data_dir.path();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let next_id = Arc::new(AtomicUsize::new(0));

    // Run 1: load for 3 s (windows flush meanwhile), SIGKILL while requests are in flight.
    let (mut first, address) = start(dir, 1);
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(load(
                address.clone(),
                Arc::clone(&next_id),
                Arc::clone(&ledger),
                Arc::clone(&stop),
            ))
        })
        .collect();
    // Kill once some windows have flushed (so watermarks and the checkpoint are in play).
    let store = dir.join("store");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !store_has_data(&store) {
        assert!(
            Instant::now() < deadline,
            "no window flushed; see {}/run-1.log",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    first.child.kill().expect("SIGKILL");
    first.child.wait().unwrap();
    for task in tasks {
        task.await.expect("load task");
    }
    let before_kill = ledger.lock().acknowledged.len();
    assert!(before_kill > 20, "the load ran: {before_kill} requests acknowledged");
    let flushed_before_kill = common::read_json_lines::<JsonRecord>(&store).len();
    assert!(flushed_before_kill > 0, "some windows flushed before the kill");

    // Run 2: same data directory; more load, then SIGTERM flushes the due
    // windows and leaves the open ones to the log.
    let (second, address) = start(dir, 2);
    run_load(&address, &next_id, &ledger, Duration::from_millis(1_500)).await;
    stop_with(second, "-TERM", dir, 2);
    // The restart replayed acknowledged points into windows open at the kill.
    assert!(replayed(dir, 2) > 0);

    // Run 3, after a clean stop: no window was written partial, so the load
    // goes on at once, in the same windows if they are still open.
    let (third, address) = start(dir, 3);
    // Windows still open at the stop (if the stop's flush came before they
    // were due) come back from the log; the rest were written at the stop.
    replayed(dir, 3);
    let before_third = ledger.lock().acknowledged.len();
    run_load(&address, &next_id, &ledger, Duration::from_millis(1_000)).await;
    assert!(ledger.lock().acknowledged.len() > before_third);
    // Ctrl-C takes the same path as SIGTERM.
    stop_with(third, "-INT", dir, 3);

    // Run 4, idle: replays what run 3 left open and writes it once it is due.
    let (fourth, _) = start(dir, 4);
    replayed(dir, 4);
    let last_sent = ledger.lock().sent.values().flatten().copied().max().unwrap();
    // Past the log's horizon (the largest window plus its lateness) for the
    // last point sent, then a flush or two.
    while now_ms() < last_sent + 1000 + 1000 + 600 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_with(fourth, "-TERM", dir, 4);

    // Every (series, window) once; per window, the points of acknowledged requests exactly.
    let records: Vec<JsonRecord> = common::read_json_lines(&store);
    let mut emitted: HashMap<(String, i64), f64> = HashMap::new();
    for record in &records {
        assert_eq!(record.name, "load:sum", "{record:?}");
        assert!(
            !record.partial,
            "no window is written partial with the log on: {record:?}"
        );
        let request = record.labels["request"].clone();
        let value = record.value.as_f64().expect("a number");
        let previous = emitted.insert((request.clone(), record.window_start_ms), value);
        assert!(
            previous.is_none(),
            "window {} of request {request} emitted twice",
            record.window_start_ms
        );
    }
    let ledger = ledger.lock();
    let mut checked = 0;
    for (id, stamps) in &ledger.sent {
        let mut expected: BTreeMap<i64, f64> = BTreeMap::new();
        for stamp in stamps {
            *expected.entry(stamp.div_euclid(1000) * 1000).or_default() += 1.0;
        }
        let found: BTreeMap<i64, f64> = emitted
            .iter()
            .filter(|((request, _), _)| *request == id.to_string())
            .map(|((_, window), value)| (*window, *value))
            .collect();
        if ledger.acknowledged.contains_key(id) {
            assert_eq!(found, expected, "acknowledged request {id}");
            checked += 1;
        } else {
            // Unacknowledged (in flight at the kill): logged whole or not at all, never twice.
            assert!(found.is_empty() || found == expected, "request {id}: {found:?}");
        }
    }
    assert!(checked > before_kill, "requests after the restart were checked too");
    // Every segment fed only windows written since: deleted, but for the
    // last run's own (empty) segment.
    let segments: Vec<_> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .flatten()
        .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "wal"))
        .filter(|entry| entry.metadata().is_ok_and(|meta| meta.len() > 0))
        .collect();
    assert!(
        segments.is_empty(),
        "once every window was written no log segment holds anything: {segments:?}"
    );
}
