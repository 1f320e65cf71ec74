//! A cluster whose shard sets have one replica each relies on the
//! write-ahead log: an instance stopped under load (`kill -9`, or SIGTERM)
//! and started again on the same data directory replays what it acknowledged,
//! leads its set again and flushes every acknowledged sample exactly once,
//! in its own series' record and in the rollup (whose shares are logged too).

mod common;

use std::time::Duration;

use common::cluster::{counter_rules, Accounting, ClusterSpec, CounterLoad, TestCluster};

const TTL_S: u64 = 2;
const WINDOW_MS: i64 = 2_000;

#[derive(Clone, Copy, Debug)]
enum Stop {
    Kill9,
    Term,
}

/// What a run came to.
struct Run {
    /// Requests acknowledged before instance 1 was stopped.
    acked_before: usize,
    /// Whether instance 1's log says it replayed its write-ahead log.
    replayed: bool,
    /// What the stores hold of the acknowledged requests.
    accounting: Accounting,
}

/// Two instances, a shard set each, under load; instance 1 is stopped and
/// started again on the same data directory while writes go on.
async fn restart_under_load(stop_how: Stop) -> Run {
    let mut cluster = TestCluster::start(ClusterSpec {
        instances: 2,
        replicas: 1,
        shards: 16,
        rules: counter_rules("2s:1h"),
        lease_ttl_s: TTL_S,
        flush_interval_ms: 200,
        wal: true,
    });
    let load = CounterLoad::start(&cluster, 3).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // While instance 1 is down every request goes to instance 0, which
    // forwards the series of instance 1's shards (and waits for it).
    load.avoid(Some(1));
    let acked_before = load.acked_count();
    match stop_how {
        Stop::Kill9 => cluster.instances[1].kill9(),
        Stop::Term => cluster.instances[1].stop(),
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.instances[1].restart();
    load.avoid(None);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let acked = load.stop().await;
    // The last window, its lateness, a lease TTL for the set to be led again, and slack.
    tokio::time::sleep(Duration::from_millis(WINDOW_MS as u64 + 1_000 + TTL_S * 1_000 + 3_000)).await;
    Run {
        acked_before,
        replayed: cluster.instances[1].log().contains("write-ahead log replayed"),
        accounting: Accounting::read(&cluster, &acked, WINDOW_MS),
    }
}

/// Every acknowledged request once in its own record, and every window's
/// rollup the sum of its inputs' records.
fn assert_nothing_lost(run: &Run, how: Stop) {
    assert!(
        run.replayed,
        "{how:?}: instance 1 did not replay its log:\n{}",
        run.accounting.logs
    );
    assert!(
        run.acked_before > 50,
        "only {} requests acknowledged before the stop",
        run.acked_before
    );
    assert!(
        run.accounting.acked > run.acked_before + 50,
        "too few acknowledged after the restart: {}",
        run.accounting.acked
    );
    run.accounting.assert_exact(&format!("{how:?}"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_single_replica_loses_nothing_with_the_log() {
    let run = restart_under_load(Stop::Kill9).await;
    assert_nothing_lost(&run, Stop::Kill9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_a_single_replica_keeps_its_open_windows_in_the_log() {
    let run = restart_under_load(Stop::Term).await;
    assert_nothing_lost(&run, Stop::Term);
}
