//! A cluster of real `tailfold` processes coordinated through a real etcd:
//! load sent to random instances gives exactly what one node gives for the
//! same samples (rollups included, bucket for bucket), and losing an instance
//! with `kill -9` loses no acknowledged sample and emits no record twice.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tailfold::api::v1;
use tailfold::sink::JsonRecord;

use common::cluster::{
    acked_not_in_store, by_identity, client, now_ms, rollups_unlike_inputs, ClusterSpec, CounterLoad, TestCluster,
};
use common::{point, series, traced_point};

const RULES: &str = r#"
defaults:
  storage_policies: ["2s:1h"]
  counter: { aggregations: [sum, count] }
  distribution: { aggregations: [count, sum, min, max, p50, p99, histogram] }
rollup_rules:
  - name: latency-by-service
    filter: '__name__:lat'
    rollup: {name: lat_by_service, group_by: [service], aggregations: [count, sum, min, max, p99, histogram]}
  - name: requests-all
    filter: '__name__:req'
    rollup: {name: req_all, group_by: [], aggregations: [sum, count]}
"#;

const TTL_S: u64 = 2;
const FLUSH_MS: u64 = 200;

fn spec(instances: usize, replicas: usize) -> ClusterSpec {
    ClusterSpec {
        instances,
        replicas,
        shards: 64,
        rules: RULES.to_string(),
        lease_ttl_s: TTL_S,
        flush_interval_ms: FLUSH_MS,
        wal: false,
    }
}

/// How long after the last sample every window holding it is in every store:
/// the window, its lateness, the rollup forwarding lateness, and slack.
fn settle_time() -> Duration {
    Duration::from_millis(2_000 + 1_000 + TTL_S * 1_000 + 2_000 + 3_000)
}

/// One request's series: latencies of a pod and a counter.
fn request(rng: &mut SmallRng, at_ms: i64) -> Vec<v1::Series> {
    let pod = rng.random_range(0..30).to_string();
    let service = ["api", "web", "db"][rng.random_range(0..3)];
    let latencies = (0..20)
        .map(|n| {
            let value = (rng.random::<f64>() * 3.0).exp() * 0.01;
            if n % 3 == 0 {
                traced_point(value, at_ms, rng.random(), rng.random())
            } else {
                point(value, at_ms)
            }
        })
        .collect();
    vec![
        series(
            &[("__name__", "lat"), ("service", service), ("pod", &pod)],
            v1::Kind::Distribution,
            latencies,
        ),
        series(
            &[("__name__", "req"), ("pod", &pod)],
            v1::Kind::Counter,
            vec![point(1.0, at_ms)],
        ),
    ]
}

fn scalar(record: &JsonRecord) -> Option<f64> {
    record.value.as_f64()
}

/// Same value: numbers to 1e-9 relative (sums differ in the last bit with the
/// order of addition), histograms bucket for bucket.
fn same_value(left: &JsonRecord, right: &JsonRecord) -> bool {
    match (scalar(left), scalar(right)) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0),
        _ => {
            let strip = |value: &serde_json::Value| {
                let mut value = value.clone();
                if let Some(object) = value.as_object_mut() {
                    object.remove("sum");
                }
                value
            };
            strip(&left.value) == strip(&right.value)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_on_random_instances_aggregates_exactly_as_one_node() {
    let cluster = TestCluster::start(spec(4, 2));
    let single = cluster.single.as_ref().unwrap();
    let mut single_client = client(single.grpc).await;
    let mut clients = Vec::new();
    for instance in &cluster.instances {
        clients.push(client(instance.grpc).await);
    }
    let mut rng = SmallRng::seed_from_u64(13);
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < Duration::from_secs(5) {
        let series = request(&mut rng, now_ms());
        let points: u64 = series.iter().map(|s| s.points.len() as u64).sum();
        let target = rng.random_range(0..clients.len());
        let answer = clients[target]
            .write(v1::WriteRequest { series: series.clone() })
            .await
            .expect("cluster write")
            .into_inner();
        assert_eq!(answer.accepted, points, "{answer:?}");
        let answer = single_client
            .write(v1::WriteRequest { series })
            .await
            .expect("single write")
            .into_inner();
        assert_eq!(answer.accepted, points, "{answer:?}");
        sent += points;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(settle_time()).await;

    let expected = single.records();
    let got = cluster.records();
    let expected = by_identity(&expected);
    let got = by_identity(&got);
    assert!(
        sent > 1_000 && expected.len() > 100,
        "sent {sent}, {} records",
        expected.len()
    );
    let missing: Vec<_> = expected.keys().filter(|key| !got.contains_key(*key)).take(5).collect();
    assert!(
        missing.is_empty(),
        "records missing in the cluster: {missing:?}\n{}",
        cluster.logs()
    );
    let extra: Vec<_> = got.keys().filter(|key| !expected.contains_key(*key)).take(5).collect();
    assert!(extra.is_empty(), "records only in the cluster: {extra:?}");
    let rollups = expected
        .keys()
        .filter(|(name, ..)| name.starts_with("lat_by_service") || name.starts_with("req_all"))
        .count();
    assert!(rollups > 10, "rollups were compared: {rollups}");
    for (key, record) in &expected {
        assert!(
            same_value(record, got[key]),
            "{key:?}: single node {:?}, cluster {:?}",
            record.value,
            got[key].value
        );
    }
}

/// Which instance `kill_instance` picks: the leader or follower of shard set 0, or a receiver.
#[derive(Clone, Copy, Debug)]
enum Victim {
    Leader,
    Follower,
    Receiver,
}

async fn kill_under_load(victim: Victim) {
    let mut cluster = TestCluster::start(spec(4, 2));
    // Wait for set 0 to have a leader before picking the victim.
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        let status = cluster.status();
        if let Some(leader) = status["sets"][0]["leader"].as_str() {
            break leader.to_string();
        }
        assert!(Instant::now() < deadline, "no leader: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let set0: Vec<String> = cluster.status()["sets"][0]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|instance| instance["id"].as_str().unwrap().to_string())
        .collect();
    let victim_id = match victim {
        Victim::Leader => leader.clone(),
        Victim::Follower => set0.iter().find(|id| **id != leader).unwrap().clone(),
        // A receiver that owns nothing of set 0 (the writes it took were all forwarded).
        Victim::Receiver => cluster
            .instances
            .iter()
            .map(|instance| instance.id.clone())
            .find(|id| !set0.contains(id))
            .unwrap(),
    };
    let victim_index = cluster.instances.iter().position(|i| i.id == victim_id).unwrap();

    let load = CounterLoad::start(&cluster, 3).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.instances[victim_index].kill9();
    load.avoid(Some(victim_index));
    let killed_at = Instant::now();
    if let Victim::Leader = victim {
        let took_over = loop {
            let status = cluster.status();
            match status["sets"][0]["leader"].as_str() {
                Some(now) if now != victim_id => break killed_at.elapsed(),
                _ => {}
            }
            assert!(killed_at.elapsed() < Duration::from_secs(30), "no new leader: {status}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // The lease TTL plus one flush interval, and a second for the processes to be scheduled.
        let bound = Duration::from_millis(TTL_S * 1_000 + FLUSH_MS + 1_000);
        assert!(
            took_over <= bound,
            "the follower took over after {took_over:?}, bound {bound:?}"
        );
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let acked = load.stop().await;
    tokio::time::sleep(settle_time()).await;

    let records = cluster.records();
    let records = by_identity(&records);
    assert!(acked.len() > 200, "only {} requests acknowledged", acked.len());
    let missing = acked_not_in_store(&records, &acked, 2_000);
    assert!(
        missing.is_empty(),
        "{victim:?} killed: {} of {} acknowledged requests missing or not 5, e.g. {:?}; records e.g. {:?}\n{}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)],
        records.keys().take(4).collect::<Vec<_>>(),
        cluster.logs()
    );
    // The rollup of a window holds exactly what its inputs' records hold.
    let (differ, _) = rollups_unlike_inputs(&records);
    assert!(
        differ.is_empty(),
        "rollups unlike their inputs (window, inputs, rollup): {differ:?}"
    );
    let _ = &mut cluster;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_leader_under_load_loses_no_acknowledged_sample() {
    kill_under_load(Victim::Leader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_follower_under_load_loses_no_acknowledged_sample() {
    kill_under_load(Victim::Follower).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_receiving_instance_loses_no_acknowledged_sample() {
    kill_under_load(Victim::Receiver).await;
}

/// A series name whose shard lies in the first shard range of the first set
/// (of `status`, 64 shards) that `pick` chooses.
fn series_of_set(status: &serde_json::Value, pick: impl Fn(&serde_json::Value) -> bool) -> String {
    let set = status["sets"].as_array().unwrap().iter().find(|set| pick(set)).unwrap();
    let (from, to) = (
        set["shards"][0][0].as_u64().unwrap() as u32,
        set["shards"][0][1].as_u64().unwrap() as u32,
    );
    (0..)
        .map(|n| format!("series_{n}"))
        .find(|name| {
            let shard = tailfold::cluster::placement::shard_of(
                "default",
                &tailfold::model::Labels::from_pairs([("__name__", name.as_str())]),
                64,
            );
            (from..to).contains(&shard)
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_forwards_are_refused_with_the_reason_and_counted() {
    use tailfold::api::cluster_v1::cluster_client::ClusterClient;
    use tailfold::api::cluster_v1::{ForwardRequest, ShareRequest};
    use tailfold::model::{IngestBatch, Kind, Labels, Point, SeriesBatch};

    let cluster = TestCluster::start(spec(2, 1));
    let target = &cluster.instances[0];
    let mut forward = ClusterClient::connect(format!("http://{}", target.internal))
        .await
        .unwrap();
    let frame = |name: &str| {
        let batch = IngestBatch {
            tenant: Arc::from("default"),
            series: vec![SeriesBatch::new(
                Labels::from_pairs([("__name__", name)]),
                Kind::Counter,
                vec![Point::new(1.0, Some(now_ms()), None)],
            )],
        };
        let mut frame = Vec::new();
        tailfold::wal::codec::encode(&batch, now_ms(), &mut frame);
        frame
    };
    let rules_hash = cluster.status()["sets"][0]["instances"][0]["rules_hash"]
        .as_str()
        .unwrap()
        .to_string();
    let request = |cluster: &str, batch: Vec<u8>| ForwardRequest {
        cluster: cluster.to_string(),
        placement_version: 1,
        from_instance: "intruder".to_string(),
        batch: batch.into(),
        rules_hash: rules_hash.clone(),
        batch_id: 1,
        rules_version: 1,
    };

    let wrong = forward
        .forward(request("another-cluster", frame("x")))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::PermissionDenied);
    assert!(
        wrong.message().contains("\"another-cluster\" is not this instance's"),
        "{wrong}"
    );

    let other_rules = ForwardRequest {
        rules_hash: "0123456789abcdef".into(),
        ..request("test-cluster", frame("x"))
    };
    let differ = forward.forward(other_rules).await.unwrap_err();
    assert_eq!(differ.code(), tonic::Code::FailedPrecondition);
    assert!(differ.message().contains("rules differ"), "{differ}");

    let garbage = forward.forward(request("test-cluster", vec![7; 40])).await.unwrap_err();
    assert_eq!(garbage.code(), tonic::Code::InvalidArgument);
    assert!(garbage.message().contains("malformed forwarded batch"), "{garbage}");

    // Find a series whose shard the other instance owns.
    let status = cluster.status();
    let foreign = series_of_set(&status, |set| set["instances"][0]["id"] != "i0");
    let not_owner = forward
        .forward(request("test-cluster", frame(&foreign)))
        .await
        .unwrap_err();
    assert_eq!(not_owner.code(), tonic::Code::FailedPrecondition);
    assert!(not_owner.message().contains("does not own shard"), "{not_owner}");

    // A retry of a batch taken (same sender and id) gets the first answer
    // and is not folded again; another id is another batch.
    let own = series_of_set(&status, |set| {
        set["instances"].as_array().unwrap().iter().any(|i| i["id"] == "i0")
    });
    let batch = frame(&own);
    for id in [7, 7, 8] {
        let taken = forward
            .forward(ForwardRequest {
                batch_id: id,
                ..request("test-cluster", batch.clone())
            })
            .await
            .unwrap();
        assert_eq!(taken.get_ref().accepted, 1, "batch {id}");
    }

    let share = ShareRequest {
        cluster: "test-cluster".into(),
        from_instance: "intruder".into(),
        source_set: 0,
        shares: vec![vec![0xff; 10]],
        rules_hash: rules_hash.clone(),
        rules_version: 1,
    };
    let bad_share = forward.share(share).await.unwrap_err();
    assert_eq!(bad_share.code(), tonic::Code::InvalidArgument);

    let (_, metrics) = common::cluster::http_get(target.http, "/metrics").unwrap();
    for (reason, count) in [
        ("wrong_cluster", 1),
        ("rules_differ", 1),
        ("malformed", 2),
        ("not_owner", 1),
    ] {
        let line = metrics
            .lines()
            .find(|line| {
                line.starts_with("tailfold_cluster_refused_total") && line.contains(&format!("reason=\"{reason}\""))
            })
            .unwrap_or_else(|| panic!("no {reason} counter in\n{metrics}"));
        assert!(line.ends_with(&format!(" {count}")), "{line}");
    }
    let retried = metrics
        .lines()
        .find(|line| line.starts_with("tailfold_cluster_forward_retries_answered_total"))
        .unwrap_or_else(|| panic!("no retry counter in\n{metrics}"));
    assert!(retried.ends_with(" 1"), "{retried}");
    // The instance still serves: a real write through it is taken.
    let mut writer = client(target.grpc).await;
    let answer = writer
        .write(v1::WriteRequest {
            series: vec![series(
                &[("__name__", "req"), ("pod", "a")],
                v1::Kind::Counter,
                vec![point(1.0, now_ms())],
            )],
        })
        .await
        .unwrap();
    assert_eq!(answer.get_ref().accepted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_stopped_for_15_s_under_load_loses_nothing_and_flushes_nothing_twice() {
    let mut cluster = TestCluster::start(spec(4, 2));
    let mut clients = Vec::new();
    for instance in &cluster.instances {
        clients.push(client(instance.grpc).await);
    }
    let mut rng = SmallRng::seed_from_u64(5);
    let mut acked = Vec::new();
    let mut outage = None;
    let started = Instant::now();
    let mut n = 0;
    let mut etcd_running = true;
    while started.elapsed() < Duration::from_secs(25) {
        if outage.is_none() && started.elapsed() > Duration::from_secs(3) {
            cluster.etcd.stop();
            etcd_running = false;
            outage = Some(Instant::now());
        }
        if let Some(since) = outage {
            if since.elapsed() > Duration::from_secs(15) && !etcd_running {
                cluster.etcd.start_again();
                etcd_running = true;
            }
        }
        n += 1;
        let id = n.to_string();
        let at = now_ms();
        let request = vec![series(
            &[("__name__", "req"), ("r", &id)],
            v1::Kind::Counter,
            (0..5).map(|_| point(1.0, at)).collect(),
        )];
        let target = rng.random_range(0..clients.len());
        let answer = clients[target]
            .write(v1::WriteRequest { series: request })
            .await
            .expect("writes go on without etcd");
        assert_eq!(answer.get_ref().accepted, 5, "{:?}", answer.get_ref());
        acked.push((id, at));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(settle_time() + Duration::from_secs(TTL_S * 2)).await;
    let records = cluster.records();
    let records = by_identity(&records);
    let missing = acked_not_in_store(&records, &acked, 2_000);
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged requests missing: {:?}\n{}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)],
        cluster.logs()
    );
    let (_, metrics) = common::cluster::http_get(cluster.instances[0].http, "/metrics").unwrap();
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("tailfold_cluster_flush_waits_total") && line.contains("reason=\"etcd\"")),
        "the wait for etcd is visible on /metrics"
    );
}

/// The ports an instance listens on stay reserved for this test process while
/// the instance is down: another test process (nextest runs several at once)
/// cannot pick them, so a restart after `kill -9` finds its ports free. Here
/// the other process is Python taking the same `flock` the test helpers take.
#[test]
fn ports_handed_out_stay_reserved_against_other_test_processes() {
    let try_lock = |path: &std::path::Path| {
        std::process::Command::new("python3")
            .args([
                "-c",
                "import fcntl, sys\nf = open(sys.argv[1], 'a')\nfcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)",
            ])
            .arg(path)
            .output()
            .expect("python3")
    };
    let port = common::ports::unused_port();
    let held = try_lock(&common::ports::reservation_file(port));
    assert!(
        !held.status.success(),
        "another process took the reservation of port {port}"
    );
    assert!(String::from_utf8_lossy(&held.stderr).contains("BlockingIOError"));

    let dir = tempfile::tempdir().unwrap();
    let free = try_lock(&dir.path().join("not-reserved"));
    assert!(free.status.success(), "{}", String::from_utf8_lossy(&free.stderr));
    assert_ne!(common::ports::unused_port(), port, "a port is handed out once");
}
