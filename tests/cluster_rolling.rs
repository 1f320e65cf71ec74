//! A rolling restart of every instance under load, by the documented
//! procedure: `tailfold cluster drain`, another replica leads, SIGTERM,
//! restart, wait until the status shows it ready. Every acknowledged sample
//! is counted once in its (series, window), no record is emitted twice, every
//! rollup equals the sum of its inputs (as one node's would), and no write of
//! the senders (who skip the instance being restarted) is refused. A drain
//! that would leave a set without a ready replica is refused with the reason.

mod common;

use std::collections::BTreeMap;
use std::process::Output;
use std::time::{Duration, Instant};

use common::cluster::{counter_rules, http_get, http_post, now_ms, Accounting, ClusterSpec, CounterLoad, TestCluster};
use common::{point, series};
use tailfold::api::v1;

const TTL_S: u64 = 2;
const WINDOW_MS: i64 = 2_000;

fn spec(instances: usize, replicas: usize, wal: bool) -> ClusterSpec {
    ClusterSpec {
        instances,
        replicas,
        shards: 16,
        rules: counter_rules("2s:1h"),
        lease_ttl_s: TTL_S,
        flush_interval_ms: 200,
        wal,
    }
}

/// `tailfold cluster <command> --etcd .. --cluster .. <instance>`.
fn cluster_cli(cluster: &TestCluster, command: &str, instance: &str) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tailfold"))
        .args(["cluster", command, "--etcd", &cluster.etcd.endpoint(), "--cluster"])
        .arg(cluster.id())
        .arg(instance)
        .output()
        .expect("run tailfold cluster")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The status of instance `id` and the leader of its set.
fn state_of(status: &serde_json::Value, id: &str) -> (String, Option<String>) {
    for set in status["sets"].as_array().unwrap() {
        for instance in set["instances"].as_array().unwrap() {
            if instance["id"] == id {
                return (
                    instance["state"].as_str().unwrap().to_string(),
                    set["leader"].as_str().map(str::to_string),
                );
            }
        }
    }
    panic!("{id} not in {status}");
}

/// Polls `tailfold cluster status` until `done` holds for instance `id`'s state and its set's leader.
fn wait_for(cluster: &TestCluster, id: &str, what: &str, done: impl Fn(&str, Option<&str>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = cluster.status();
        let (state, leader) = state_of(&status, id);
        if done(&state, leader.as_deref()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never {what}: {status}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of instance `index`'s `tailfold_cluster_draining` gauge, as written on /metrics.
fn draining_gauge(cluster: &TestCluster, index: usize) -> String {
    let (_, metrics) = http_get(cluster.instances[index].http, "/metrics").unwrap();
    let line = metrics
        .lines()
        .find(|line| line.starts_with("tailfold_cluster_draining"))
        .unwrap_or_else(|| panic!("no draining gauge in\n{metrics}"));
    line.trim_start_matches("tailfold_cluster_draining").to_string()
}

/// Restarts every instance in turn by the documented procedure; with two
/// replicas, also checks that the peer of a stopped instance cannot drain.
async fn restart_every_instance(cluster: &mut TestCluster, load: &CounterLoad) {
    let replicas = cluster.spec.replicas;
    for index in 0..cluster.instances.len() {
        let id = cluster.instances[index].id.clone();
        // The senders send to the other instances meanwhile (as a client
        // with several instances behind a balancer whose health check is /-/ready).
        load.avoid(Some(index));
        let drained = cluster_cli(cluster, "drain", &id);
        assert!(drained.status.success(), "drain {id}: {}", text(&drained));
        let answer: serde_json::Value = serde_json::from_slice(&drained.stdout).expect("drain answer json");
        assert_eq!(answer["draining"], true, "{answer}");
        if replicas > 1 {
            assert!(
                answer["leader"].as_str().is_some_and(|leader| leader != id),
                "drain answers once another replica leads: {answer}"
            );
        }
        wait_for(cluster, &id, "showed draining", |state, leader| {
            state == "draining" && (replicas == 1 || leader.is_some_and(|leader| leader != id))
        });
        // Balancers that check /-/ready send elsewhere; a sender that still comes is served.
        let (status, body) = http_get(cluster.instances[index].http, "/-/ready").unwrap();
        assert_eq!(status, 503, "{body}");
        assert!(body.starts_with("draining"), "{body}");
        cluster.instances[index].stop();
        // A write sent to the stopped instance itself is refused for retry elsewhere (UNAVAILABLE).
        let endpoint = format!("http://{}", cluster.instances[index].grpc);
        let mut direct = v1::ingest_client::IngestClient::new(
            tonic::transport::Endpoint::from_shared(endpoint)
                .unwrap()
                .connect_lazy(),
        );
        let request = v1::WriteRequest {
            series: vec![series(
                &[("__name__", "req"), ("r", "to-the-stopped-one")],
                v1::Kind::Counter,
                vec![point(1.0, now_ms())],
            )],
        };
        let refused = direct.write(request).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused}");
        if replicas > 1 {
            // A stopped replica revoked its registration before it exited: no sender waits for it.
            let (state, _) = state_of(&cluster.status(), &id);
            assert_eq!(state, "down", "{id} still registered after its stop");
            // Its peer is now the set's only replica: draining it is refused.
            let peer = cluster.instances[index ^ 1].id.clone();
            let refused = cluster_cli(cluster, "drain", &peer);
            assert!(!refused.status.success(), "drain {peer} with {id} down was taken");
            let message = text(&refused);
            assert!(
                message.contains(&format!("instance {peer} cannot drain"))
                    && message.contains(&format!("{id} is down")),
                "{message}"
            );
        }
        cluster.instances[index].restart();
        wait_for(cluster, &id, "was ready again", |state, _| state == "ready");
        load.avoid(None);
    }
}

/// What a run came to: the stores' accounting and the refused writes by kind.
async fn rolling_restart_under_load(cluster: &mut TestCluster) -> (Accounting, BTreeMap<String, usize>) {
    let load = CounterLoad::start(cluster, 3).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    restart_every_instance(cluster, &load).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let refused = load.refused();
    let acked = load.stop().await;
    // The last window, its lateness, the rollup's forwarding lateness, and slack.
    tokio::time::sleep(Duration::from_millis(
        WINDOW_MS as u64 + 1_000 + TTL_S * 1_000 + 2_000 + 2_000,
    ))
    .await;
    (Accounting::read(cluster, &acked, WINDOW_MS), refused)
}

/// The exact promise, and no write refused to the senders.
fn assert_exact(run: &(Accounting, BTreeMap<String, usize>), what: &str) {
    let (accounting, refused) = run;
    // Only shows the load ran through the changes: far below what even a
    // loaded machine acknowledges, so a slow machine does not fail it.
    assert!(
        accounting.acked > 30,
        "{what}: only {} requests acknowledged",
        accounting.acked
    );
    assert!(
        refused.is_empty(),
        "{what}: writes refused (kind: requests): {refused:?}\n{}",
        accounting.logs
    );
    accounting.assert_exact(what, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_two_replica_sets_loses_nothing_and_refuses_no_write() {
    let mut cluster = TestCluster::start(spec(4, 2, false));
    // Every instance ready (warm, campaigning) before the first drain.
    for id in ["i0", "i1", "i2", "i3"] {
        wait_for(&cluster, id, "was ready", |state, _| state == "ready");
    }
    // Two replicas of one set cannot both drain; an undrain puts one back in line.
    let first = cluster_cli(&cluster, "drain", "i3");
    assert!(first.status.success(), "{}", text(&first));
    let second = cluster_cli(&cluster, "drain", "i2");
    assert!(!second.status.success(), "both replicas of set 1 drained");
    assert!(
        text(&second)
            .contains("instance i2 cannot drain: shard set 1 would have no ready replica (i3 is draining too)"),
        "{}",
        text(&second)
    );
    let (status, body) = http_get(cluster.instances[3].http, "/-/ready").unwrap();
    assert_eq!(status, 503, "drained i3 is not ready: {body}");
    assert_eq!(draining_gauge(&cluster, 3), " 1");
    let (status, body) = http_post(cluster.instances[3].http, "/api/v1/cluster/undrain").unwrap();
    assert_eq!(status, 200, "{body}");
    wait_for(&cluster, "i3", "was ready after its undrain", |state, _| {
        state == "ready"
    });
    let (status, body) = http_get(cluster.instances[3].http, "/-/ready").unwrap();
    assert_eq!(status, 200, "undrained i3 is ready again: {body}");
    assert_eq!(draining_gauge(&cluster, 3), " 0");

    let run = rolling_restart_under_load(&mut cluster).await;
    assert_exact(&run, "replicas 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_one_replica_sets_with_the_log_loses_nothing() {
    let mut cluster = TestCluster::start(spec(2, 1, true));
    for id in ["i0", "i1"] {
        wait_for(&cluster, id, "was ready", |state, _| state == "ready");
    }
    let run = rolling_restart_under_load(&mut cluster).await;
    assert_exact(&run, "replicas 1 with the log");
    // While instance 1 was down instance 0 held the writes for its set (retried
    // while it was still listed, then waited for it to register again) rather
    // than refusing them.
    let (_, metrics) = http_get(cluster.instances[0].http, "/metrics").unwrap();
    assert!(
        metrics.lines().any(|line| {
            (line.starts_with("tailfold_cluster_forward_waits_total")
                || line.starts_with("tailfold_cluster_forward_retries_total{instance=\"i1\"}"))
                && !line.ends_with(" 0")
        }),
        "no write was held for the restarting set:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_the_only_replica_without_the_log_is_refused() {
    let cluster = TestCluster::start(spec(2, 1, false));
    let refused = cluster_cli(&cluster, "drain", "i0");
    assert!(!refused.status.success(), "drained the only replica without a log");
    assert!(
        text(&refused).contains("instance i0 cannot drain: shard set 0 would have no ready replica (it is the set's only replica and has no write-ahead log"),
        "{}",
        text(&refused)
    );
    let (state, _) = state_of(&cluster.status(), "i0");
    assert_ne!(state, "draining");
    let unknown = cluster_cli(&cluster, "drain", "nobody");
    assert!(
        text(&unknown).contains("instance \"nobody\" is not in the placement"),
        "{}",
        text(&unknown)
    );
}
