//! One rule set for a cluster of real `tailfold` processes and a real etcd:
//! a reload under load on one instance takes effect on every instance at the
//! boundary its publisher chose (each window folded by exactly one rule set,
//! every acknowledged sample counted once), a broken file is refused with
//! the cluster keeping its rules, an instance with another file follows etcd
//! (or, told to follow its file, neither leads nor forwards until it agrees),
//! and `tailfold check` compares a config's rules with the cluster's.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tailfold::api::v1;
use tailfold::cluster::rules::hash_text;
use tailfold::sink::JsonRecord;

use common::cluster::{client, http_get, http_post, now_ms, ClusterSpec, Instance, TestCluster};
use common::{point, series};

const WINDOW_MS: i64 = 2_000;
const TTL_S: u64 = 2;

const RULES_V1: &str = r#"
defaults:
  storage_policies: ["2s:1h"]
  counter: { aggregations: [sum, count] }
rollup_rules:
  - name: all-hits
    filter: '__name__:hits'
    rollup: {name: total_hits, group_by: [], aggregations: [sum]}
"#;

/// V1 plus a drop of `noise` and a new rollup by zone.
const RULES_V2: &str = r#"
defaults:
  storage_policies: ["2s:1h"]
  counter: { aggregations: [sum, count] }
mapping_rules:
  - name: drop-noise
    filter: '__name__:noise'
    drop: true
rollup_rules:
  - name: all-hits
    filter: '__name__:hits'
    rollup: {name: total_hits, group_by: [], aggregations: [sum]}
  - name: hits-by-zone
    filter: '__name__:hits'
    rollup: {name: zone_hits, group_by: [zone], aggregations: [sum]}
"#;

/// Drops `hits` outright: an instance folding this would lose them.
const RULES_DROP_HITS: &str = r#"
defaults:
  storage_policies: ["2s:1h"]
mapping_rules:
  - name: drop-hits
    filter: '__name__:hits'
    drop: true
"#;

const RULES_BROKEN: &str = r#"
defaults:
  storage_policies: ["2s:1h"]
mapping_rules:
  - name: bad-one
    filter: '__name__:hits'
    aggregations: [sum, p99x]
"#;

fn spec() -> ClusterSpec {
    ClusterSpec {
        instances: 3,
        replicas: 1,
        shards: 64,
        rules: RULES_V1.to_string(),
        lease_ttl_s: TTL_S,
        flush_interval_ms: 200,
        wal: false,
    }
}

fn window(at_ms: i64) -> i64 {
    at_ms.div_euclid(WINDOW_MS) * WINDOW_MS
}

fn rules_of(instance: &Instance) -> serde_json::Value {
    let (status, body) = http_get(instance.http, "/-/rules").expect("GET /-/rules");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn newest_hash(instance: &Instance) -> String {
    let rules = rules_of(instance);
    let sets = rules["rule_sets"].as_array().unwrap();
    sets.last().unwrap()["content_hash"].as_str().unwrap().to_string()
}

fn metrics_of(instance: &Instance) -> String {
    http_get(instance.http, "/metrics").expect("GET /metrics").1
}

/// The value of the metric line starting with `prefix` (0 when absent).
fn metric(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn check(config: &std::path::Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tailfold"))
        .args(["check", "-c"])
        .arg(config)
        .output()
        .expect("run tailfold check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `sum` records named `name`, by their labels other than `__name__` and window start.
fn sums(records: &[JsonRecord], name: &str) -> BTreeMap<(Vec<(String, String)>, i64), f64> {
    let mut out = BTreeMap::new();
    for record in records.iter().filter(|record| {
        record.aggregation == "sum" && record.labels.get("__name__").is_some_and(|n| n.starts_with(name))
    }) {
        let labels = record
            .labels
            .iter()
            .filter(|(label, _)| *label != "__name__")
            .map(|(label, value)| (label.clone(), value.clone()))
            .collect();
        let earlier = out.insert((labels, record.window_start_ms), record.value.as_f64().unwrap());
        assert!(earlier.is_none(), "{name} record twice: {record:?}");
    }
    out
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_under_load_takes_effect_on_every_instance_at_one_boundary() {
    let cluster = TestCluster::start(spec());
    let mut clients = Vec::new();
    for instance in &cluster.instances {
        clients.push(client(instance.grpc).await);
    }
    let mut rng = SmallRng::seed_from_u64(6);
    // (timestamp, pod, zone) of every acknowledged request.
    let mut sent: Vec<(i64, String, &str)> = Vec::new();
    let mut effective_from_ms: Option<i64> = None;
    let started = Instant::now();
    loop {
        let at_ms = now_ms();
        if effective_from_ms.is_some_and(|from| at_ms > from + 2 * WINDOW_MS + 500) {
            break;
        }
        if effective_from_ms.is_none() && started.elapsed() > Duration::from_secs(3) {
            // The reload, on one instance only, while the load goes on.
            std::fs::write(&cluster.instances[0].rules_file, RULES_V2).unwrap();
            let (status, body) = http_post(cluster.instances[0].http, "/-/reload").expect("POST /-/reload");
            assert_eq!(status, 200, "{body}");
            let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(answer["status"], "published", "{answer}");
            assert_eq!(answer["version"], 2, "{answer}");
            let from = answer["effective_from_ms"].as_i64().unwrap();
            assert_eq!(from % WINDOW_MS, 0, "a window boundary: {answer}");
            assert!(from >= at_ms + 5_000, "at least the margin ahead: {from} vs {at_ms}");
            effective_from_ms = Some(from);
        }
        let pod = rng.random_range(0..12).to_string();
        let zone = ["north", "south"][rng.random_range(0..2)];
        let request = vec![
            series(
                &[("__name__", "hits"), ("pod", &pod), ("zone", zone)],
                v1::Kind::Counter,
                vec![point(1.0, at_ms)],
            ),
            series(
                &[("__name__", "noise"), ("pod", &pod)],
                v1::Kind::Counter,
                vec![point(1.0, at_ms)],
            ),
        ];
        let target = rng.random_range(0..clients.len());
        let answer = clients[target]
            .write(v1::WriteRequest { series: request })
            .await
            .unwrap_or_else(|status| panic!("write refused around the reload: {status}\n{}", cluster.logs()))
            .into_inner();
        // Nothing is refused for any reason but the new drop rule.
        let dropped: u64 = answer
            .rejections
            .iter()
            .filter(|reason| reason.reason == "dropped_by_rule")
            .map(|reason| reason.count)
            .sum();
        assert_eq!(answer.accepted + dropped, 2, "{answer:?}");
        assert_eq!(
            dropped,
            u64::from(effective_from_ms.is_some_and(|from| at_ms >= from)),
            "{answer:?} at {at_ms}"
        );
        sent.push((at_ms, pod, zone));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let from = effective_from_ms.unwrap();
    let v2_hash = hash_text(RULES_V2);
    // Every instance staged the new set at the same boundary.
    for instance in &cluster.instances {
        let rules = rules_of(instance);
        let staged = rules["rule_sets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|set| set["content_hash"] == v2_hash.as_str())
            .unwrap_or_else(|| panic!("{} never staged the new rules: {rules}", instance.id));
        assert_eq!(staged["effective_from_ms"], from, "{}: {rules}", instance.id);
        assert_eq!(rules["cluster"]["cluster_version"], 2, "{rules}");
        assert!(rules["cluster"]["differs"].is_null(), "{rules}");
    }
    let status = cluster.status();
    assert_eq!(status["rules"]["version"], 2, "{status}");
    assert_eq!(status["rules"]["effective_from_ms"], from, "{status}");
    assert_eq!(
        status["rules"]["previous_hash"],
        hash_text(RULES_V1).as_str(),
        "{status}"
    );

    tokio::time::sleep(Duration::from_millis(
        (WINDOW_MS + 1_000 + TTL_S as i64 * 1_000 + 2_000 + 3_000) as u64,
    ))
    .await;

    // What each rule set makes of the acknowledged samples, window by window.
    let mut hits = BTreeMap::new();
    let mut total = BTreeMap::new();
    let mut by_zone = BTreeMap::new();
    let mut noise = BTreeMap::new();
    for (at_ms, pod, zone) in &sent {
        let start = window(*at_ms);
        *hits
            .entry((labels(&[("pod", pod), ("zone", zone)]), start))
            .or_insert(0.0) += 1.0;
        *total.entry((Vec::new(), start)).or_insert(0.0) += 1.0;
        if start >= from {
            *by_zone.entry((labels(&[("zone", zone)]), start)).or_insert(0.0) += 1.0;
        } else {
            *noise.entry((labels(&[("pod", pod)]), start)).or_insert(0.0) += 1.0;
        }
    }
    assert!(
        noise.len() > 20 && by_zone.len() >= 4,
        "windows on both sides of the boundary: {} before, {} after",
        noise.len(),
        by_zone.len()
    );
    let records = cluster.records();
    assert_eq!(
        sums(&records, "hits"),
        hits,
        "hits per series and window\n{}",
        cluster.logs()
    );
    assert_eq!(
        sums(&records, "total_hits"),
        total,
        "the rollup of every hit, per window"
    );
    assert_eq!(
        sums(&records, "zone_hits"),
        by_zone,
        "the new rollup: windows from the boundary on only"
    );
    assert_eq!(
        sums(&records, "noise"),
        noise,
        "the dropped metric: windows before the boundary only"
    );

    for instance in &cluster.instances {
        let metrics = metrics_of(instance);
        for counter in [
            "tailfold_cluster_refused_total",
            "tailfold_cluster_forward_failures_total",
            "tailfold_cluster_rollup_shares_lost_total",
            "tailfold_cluster_rules_late_total",
        ] {
            let refused: f64 = metrics
                .lines()
                .filter(|line| line.starts_with(counter) && !line.contains("rules_pending"))
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            assert_eq!(refused, 0.0, "{} counted {counter}:\n{metrics}", instance.id);
        }
        assert_eq!(metric(&metrics, "tailfold_cluster_rules_version"), 2.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_reload_is_refused_and_check_compares_with_the_cluster() {
    let cluster = TestCluster::start(spec());
    let v1_hash = hash_text(RULES_V1);
    let (ok, text) = check(&cluster.instances[0].config);
    assert!(ok, "{text}");
    assert!(text.contains("rules version 1"), "{text}");
    assert!(text.contains("matches the cluster's rules"), "{text}");
    for instance in &cluster.instances {
        assert!(
            text.contains(&format!(
                "instance {}: folds {v1_hash} (cluster version 1)",
                instance.id
            )),
            "{text}"
        );
    }

    // A file that does not compile: refused with its file, rule and field; nothing published.
    let broken = &cluster.instances[1];
    std::fs::write(&broken.rules_file, RULES_BROKEN).unwrap();
    let (status, body) = http_post(broken.http, "/-/reload").unwrap();
    assert_eq!(status, 400, "{body}");
    for part in [broken.rules_file.display().to_string(), "bad-one".into(), "p99x".into()] {
        assert!(body.contains(&part), "{part} in {body}");
    }
    let (ok, text) = check(&broken.config);
    assert!(!ok && text.contains("p99x"), "{text}");
    assert_eq!(cluster.status()["rules"]["version"], 1);
    for instance in &cluster.instances {
        assert_eq!(newest_hash(instance), v1_hash, "{}", instance.id);
    }
    // Still serving with the old rules.
    let mut writer = client(broken.grpc).await;
    let answer = writer
        .write(v1::WriteRequest {
            series: vec![series(
                &[("__name__", "hits"), ("pod", "a"), ("zone", "north")],
                v1::Kind::Counter,
                vec![point(1.0, now_ms())],
            )],
        })
        .await
        .unwrap();
    assert_eq!(answer.get_ref().accepted, 1);

    // A valid file that is not the cluster's: check says so and fails.
    std::fs::write(&broken.rules_file, RULES_V2).unwrap();
    let (ok, text) = check(&broken.config);
    assert!(!ok, "{text}");
    assert!(text.contains("DIFFERS from the cluster's rules"), "{text}");
    assert!(text.contains(&hash_text(RULES_V2)), "{text}");

    // Two publishers from the same version: the second loses, with a clear error.
    let etcd = tailfold::cluster::etcd::EtcdClient::connect(&[cluster.etcd.endpoint()], Duration::from_secs(5))
        .await
        .unwrap();
    let stale = tailfold::cluster::rules::read(&etcd, cluster.id())
        .await
        .unwrap()
        .unwrap();
    let rules = tailfold::rules::RuleSet::parse(RULES_V2, "v2").unwrap();
    let publish = |by| tailfold::cluster::rules::Publish {
        cluster: cluster.id(),
        by,
        source: RULES_V2,
        rules: &rules,
        now_ms: now_ms(),
        margin_ms: 5_000,
    };
    let first = tailfold::cluster::rules::publish(&etcd, publish("first"), Some(&stale))
        .await
        .unwrap();
    assert_eq!(first.version, 2);
    let second = tailfold::cluster::rules::publish(&etcd, publish("second"), Some(&stale))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        second.contains("another publish won") && second.contains("version 2") && second.contains("first"),
        "{second}"
    );
    // Every instance follows the winner.
    let v2_hash = hash_text(RULES_V2);
    wait_for("every instance to stage version 2", Duration::from_secs(10), || {
        cluster
            .instances
            .iter()
            .all(|instance| newest_hash(instance) == v2_hash)
    });
    let (ok, text) = check(&broken.config);
    assert!(ok && text.contains("matches the cluster's rules"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_with_another_rules_file_follows_etcd_or_neither_leads_nor_forwards() {
    let mut cluster = TestCluster::start(spec());
    let v1_hash = hash_text(RULES_V1);
    let hit = || v1::WriteRequest {
        series: vec![series(
            &[("__name__", "hits"), ("pod", "a"), ("zone", "north")],
            v1::Kind::Counter,
            vec![point(1.0, now_ms())],
        )],
    };

    // Following etcd (the default): another file is not what it folds.
    let follower = &mut cluster.instances[2];
    follower.stop();
    std::fs::write(&follower.rules_file, RULES_DROP_HITS).unwrap();
    follower.restart_with("");
    assert_eq!(newest_hash(follower), v1_hash);
    let answer = client(follower.grpc).await.write(hit()).await.unwrap();
    assert_eq!(
        answer.get_ref().accepted,
        1,
        "the cluster's rules keep hits: {answer:?}"
    );

    // Following its file: it says so, neither leads nor forwards.
    let loner = &mut cluster.instances[1];
    loner.stop();
    std::fs::write(&loner.rules_file, RULES_DROP_HITS).unwrap();
    loner.restart_with("  rules_source: file\n");
    let rules = rules_of(loner);
    let differs = rules["cluster"]["differs"].as_str().unwrap_or_default().to_string();
    assert!(
        differs.contains("differs from the cluster's rules version 1"),
        "{rules}"
    );
    assert!(
        loner.log().contains("RULES DIFFER FROM THE CLUSTER'S"),
        "{}",
        loner.log()
    );
    let refused = client(loner.grpc).await.write(hit()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert!(
        refused.message().contains("does not fold the cluster's rules"),
        "{refused}"
    );
    let metrics = metrics_of(loner);
    assert_eq!(metric(&metrics, "tailfold_cluster_rules_agree"), 0.0, "{metrics}");
    assert_eq!(
        metric(&metrics, "tailfold_cluster_rules_differ_refused_points_total"),
        1.0
    );
    let loner_id = loner.id.clone();
    let set_of = |status: &serde_json::Value| {
        status["sets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|set| set["instances"][0]["id"] == loner_id.as_str())
            .unwrap()
            .clone()
    };
    let status = cluster.status();
    let reason = set_of(&status)["instances"][0]["rules_differ"].clone();
    assert!(
        reason
            .as_str()
            .is_some_and(|reason| reason.contains("rules_source is file")),
        "{status}"
    );
    let (ok, text) = check(&cluster.instances[1].config);
    assert!(!ok, "{text}");
    assert!(text.contains(&format!("instance {loner_id}: RULES DIFFER")), "{text}");
    // Past the warm-up (one window and its lateness), it still does not campaign.
    std::thread::sleep(Duration::from_millis(6_000));
    assert!(set_of(&cluster.status())["leader"].is_null(), "{}", cluster.status());

    // Given the cluster's rules, it agrees, leads its set and forwards again.
    let loner = &cluster.instances[1];
    std::fs::write(&loner.rules_file, RULES_V1).unwrap();
    let (status, body) = http_post(loner.http, "/-/reload").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(rules_of(loner)["cluster"]["differs"].is_null());
    assert_eq!(newest_hash(loner), v1_hash);
    wait_for("the instance to lead its set", Duration::from_secs(15), || {
        set_of(&cluster.status())["leader"] == loner_id.as_str()
    });
    let answer = client(loner.grpc).await.write(hit()).await.unwrap();
    assert_eq!(answer.get_ref().accepted, 1);
    let status = cluster.status();
    assert!(set_of(&status)["instances"][0]["rules_differ"].is_null(), "{status}");

    // The cluster moves on to rules its file does not hold: it steps down.
    std::fs::write(&cluster.instances[0].rules_file, RULES_V2).unwrap();
    let (status, body) = http_post(cluster.instances[0].http, "/-/reload").unwrap();
    assert_eq!(status, 200, "{body}");
    wait_for("the instance to resign", Duration::from_secs(10), || {
        set_of(&cluster.status())["leader"].is_null()
    });
    let status = cluster.status();
    let reason = set_of(&status)["instances"][0]["rules_differ"].clone();
    assert!(
        reason
            .as_str()
            .is_some_and(|reason| reason.contains("cluster's rules version 2")),
        "{status}"
    );
    let metrics = metrics_of(&cluster.instances[1]);
    assert_eq!(
        metric(&metrics, "tailfold_cluster_rules_resignations_total"),
        1.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "tailfold_cluster_rules_agree"), 0.0);
}
