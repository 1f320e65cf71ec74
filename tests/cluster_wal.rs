//! A cluster whose shard sets have one replica each relies on the
//! write-ahead log: an instance stopped under load (`kill -9`, or SIGTERM)
//! and started again on the same data directory replays what it acknowledged,
//! leads its set again and flushes every acknowledged sample exactly once.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tailfold::api::v1;

use common::cluster::{by_identity, client, ClusterSpec, TestCluster};
use common::{point, series};

const RULES: &str = r#"
defaults:
  storage_policies: ["2s:1h"]
  counter: { aggregations: [sum, count] }
"#;

const TTL_S: u64 = 2;
const WINDOW_MS: i64 = 2_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[derive(Clone, Copy, Debug)]
enum Stop {
    Kill9,
    Term,
}

async fn restart_under_load(stop_how: Stop) {
    let mut cluster = TestCluster::start(ClusterSpec {
        instances: 2,
        replicas: 1,
        shards: 16,
        rules: RULES.to_string(),
        lease_ttl_s: TTL_S,
        flush_interval_ms: 200,
        wal: true,
    });
    let mut clients = Vec::new();
    for instance in &cluster.instances {
        clients.push(client(instance.grpc).await);
    }
    // Each request writes one series of its own, so its points land whole or not at all.
    let acked: Arc<parking_lot::Mutex<Vec<(String, i64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let down = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for worker in 0..3u64 {
        let mut clients = clients.clone();
        let (acked, stop, down) = (Arc::clone(&acked), Arc::clone(&stop), Arc::clone(&down));
        senders.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(worker);
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = format!("{worker}-{n}");
                let at = now_ms();
                let request = vec![series(
                    &[("__name__", "req"), ("r", &id)],
                    v1::Kind::Counter,
                    (0..5).map(|_| point(1.0, at)).collect(),
                )];
                // While instance 1 is down every request goes to instance 0, which
                // forwards the series of instance 1's shards (and waits for it).
                let target = if down.load(Ordering::Relaxed) {
                    0
                } else {
                    rng.random_range(0..2)
                };
                let answer = tokio::time::timeout(
                    Duration::from_secs(20),
                    clients[target].write(v1::WriteRequest { series: request }),
                )
                .await;
                if let Ok(Ok(answer)) = answer {
                    if answer.get_ref().accepted == 5 {
                        acked.lock().push((id, at));
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    down.store(true, Ordering::Relaxed);
    let acked_before = acked.lock().len();
    match stop_how {
        Stop::Kill9 => cluster.instances[1].kill9(),
        Stop::Term => cluster.instances[1].stop(),
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.instances[1].restart();
    down.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.await.unwrap();
    }
    // The last window, its lateness, a lease TTL for the set to be led again, and slack.
    tokio::time::sleep(Duration::from_millis(WINDOW_MS as u64 + 1_000 + TTL_S * 1_000 + 3_000)).await;

    let log = cluster.instances[1].log();
    assert!(
        log.contains("write-ahead log replayed"),
        "instance 1 did not replay its log:\n{log}"
    );
    let records = cluster.records();
    let records = by_identity(&records);
    let acked = acked.lock().clone();
    assert!(
        acked_before > 50,
        "only {acked_before} requests acknowledged before the stop"
    );
    assert!(
        acked.len() > acked_before + 50,
        "too few acknowledged after the restart: {}",
        acked.len()
    );
    let mut missing = Vec::new();
    for (id, at) in &acked {
        let window = at - at.rem_euclid(WINDOW_MS);
        let labels = std::collections::BTreeMap::from([
            ("__name__".to_string(), "req:sum".to_string()),
            ("r".to_string(), id.to_string()),
        ]);
        let key = ("req:sum".to_string(), format!("{labels:?}"), window, "sum".to_string());
        match records.get(&key) {
            Some(record) => assert_eq!(record.value.as_f64(), Some(5.0), "{id}: {record:?}"),
            None => missing.push(id.clone()),
        }
    }
    assert!(
        missing.is_empty(),
        "{stop_how:?}: {} of {} acknowledged requests missing, e.g. {:?}\n{}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)],
        cluster.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_single_replica_loses_nothing_with_the_log() {
    restart_under_load(Stop::Kill9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_a_single_replica_keeps_its_open_windows_in_the_log() {
    restart_under_load(Stop::Term).await;
}
