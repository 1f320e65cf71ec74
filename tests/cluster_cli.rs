//! `tailfold cluster init|status` (the built binary) against a real etcd:
//! created once, a second init refused without touching the first, broken
//! input refused with the reason, and the placement read back unchanged
//! after etcd restarts.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::etcd::EtcdServer;
use tailfold::cluster::etcd::EtcdClient;
use tailfold::cluster::placement::{keys, Placement};
use tailfold::cluster::status::ClusterStatus;

fn tailfold(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tailfold"))
        .args(args)
        .output()
        .expect("run tailfold")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

const A: &str = "a=127.0.0.1:7001,http=127.0.0.1:7101";
const B: &str = "b=127.0.0.1:7002,http=127.0.0.1:7102";
const C: &str = "c=127.0.0.1:7003,http=127.0.0.1:7103";
const D: &str = "d=127.0.0.1:7004,http=127.0.0.1:7104";

fn init(etcd: &str, cluster: &str, extra: &[&str]) -> Output {
    let mut args = vec!["cluster", "init", "--etcd", etcd, "--cluster", cluster];
    args.extend_from_slice(extra);
    tailfold(&args)
}

async fn client(server: &EtcdServer) -> EtcdClient {
    EtcdClient::connect(&[server.endpoint()], Duration::from_secs(2))
        .await
        .unwrap()
}

#[tokio::test]
async fn init_then_status_shows_the_placement() {
    let server = EtcdServer::start();
    let endpoint = server.endpoint();
    let output = init(
        &endpoint,
        "c1",
        &[
            "--shards",
            "64",
            "--instance",
            A,
            "--instance",
            B,
            "--instance",
            C,
            "--instance",
            D,
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "created cluster c1: 64 shards in 2 sets of 2\n"
    );

    let output = tailfold(&["cluster", "status", "--etcd", &endpoint, "--cluster", "c1", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let status: ClusterStatus = serde_json::from_slice(&output.stdout).expect("status json");
    assert_eq!(
        (status.cluster.as_str(), status.version, status.shards, status.replicas),
        ("c1", 1, 64, 2)
    );
    // (set, shard ranges, instance ids)
    type Set<'a> = (u32, Vec<(u32, u32)>, Vec<&'a str>);
    let sets: Vec<Set> = status
        .sets
        .iter()
        .map(|set| {
            (
                set.set,
                set.shards.clone(),
                set.instances.iter().map(|i| i.id.as_str()).collect(),
            )
        })
        .collect();
    assert_eq!(
        sets,
        vec![(0, vec![(0, 32)], vec!["a", "b"]), (1, vec![(32, 64)], vec!["c", "d"])]
    );
    let a = &status.sets[0].instances[0];
    assert_eq!(
        (a.endpoint.as_str(), a.http.as_str()),
        ("127.0.0.1:7001", "127.0.0.1:7101")
    );
    // No instance runs: none is live, no set has a leader or a flush mark.
    assert!(status
        .sets
        .iter()
        .all(|set| set.leader.is_none() && set.flushed.is_empty()));
    assert!(status.sets.iter().flat_map(|set| &set.instances).all(|i| !i.live));

    let output = tailfold(&["cluster", "status", "--etcd", &endpoint, "--cluster", "c1"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("set 1  shards 32..64  leader (none)"), "{table}");
}

#[tokio::test]
async fn a_second_init_is_refused_and_leaves_the_first_placement_alone() {
    let server = EtcdServer::start();
    let endpoint = server.endpoint();
    let etcd = client(&server).await;
    assert!(
        init(&endpoint, "c1", &["--replicas", "1", "--instance", A, "--instance", B])
            .status
            .success()
    );
    let first = Placement::load(&etcd, "c1").await.unwrap().unwrap();

    let output = init(&endpoint, "c1", &["--replicas", "1", "--instance", C]);
    assert!(!output.status.success());
    assert_eq!(
        stderr(&output),
        "tailfold: cluster c1 already has a placement in etcd\n"
    );
    assert_eq!(
        Placement::load(&etcd, "c1").await.unwrap(),
        Some(first),
        "the first placement stays whole"
    );

    // Sets left by an init interrupted before its meta key are replaced.
    etcd.put(&format!("{}7", keys::sets_prefix("c2")), b"left over".to_vec(), None)
        .await
        .unwrap();
    assert!(init(&endpoint, "c2", &["--replicas", "1", "--instance", C])
        .status
        .success());
    let c2 = Placement::load(&etcd, "c2").await.unwrap().unwrap();
    assert_eq!(c2.sets.len(), 1);
}

#[tokio::test]
async fn broken_input_is_refused_with_the_reason() {
    let server = EtcdServer::start();
    let endpoint = server.endpoint();
    let etcd = client(&server).await;
    for (instances, reason) in [
        (vec!["a"], "--instance \"a\": expected ID=HOST:PORT[,http=HOST:PORT]"),
        (vec!["a=127.0.0.1"], "\"127.0.0.1\" is not HOST:PORT"),
        (vec!["a=127.0.0.1:7001,grpc=1"], "unknown part \"grpc=1\""),
        (
            vec!["a b=127.0.0.1:7001"],
            "the id \"a b\" is not 1 or more of [A-Za-z0-9._-]",
        ),
        (vec![A, B, C], "cannot form sets"),
    ] {
        let mut args = Vec::new();
        for instance in &instances {
            args.extend(["--instance", instance]);
        }
        let output = init(&endpoint, "bad", &args);
        assert!(!output.status.success(), "{instances:?} accepted");
        assert!(stderr(&output).contains(reason), "{instances:?}: {}", stderr(&output));
    }
    assert_eq!(Placement::load(&etcd, "bad").await.unwrap(), None, "nothing written");

    let output = init("localhost:2379", "c1", &["--instance", A, "--instance", B]);
    assert!(
        stderr(&output).contains("invalid etcd endpoint \"localhost:2379\": no scheme"),
        "{}",
        stderr(&output)
    );
    let dead = format!("http://127.0.0.1:{}", common::ports::unused_port());
    let output = init(&dead, "c1", &["--instance", A, "--instance", B]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains(&dead), "{}", stderr(&output));

    let output = tailfold(&["cluster", "status", "--etcd", &endpoint, "--cluster", "none"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("cluster none: no placement in etcd"),
        "{}",
        stderr(&output)
    );
    etcd.put(&keys::meta("broken"), b"{\"shards\":".to_vec(), None)
        .await
        .unwrap();
    let output = tailfold(&["cluster", "status", "--etcd", &endpoint, "--cluster", "broken"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("placement of cluster broken: meta: "),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn the_placement_survives_an_etcd_restart() {
    let mut server = EtcdServer::start();
    let endpoint = server.endpoint();
    assert!(init(
        &endpoint,
        "c1",
        &["--instance", A, "--instance", B, "--instance", C, "--instance", D]
    )
    .status
    .success());
    let etcd = client(&server).await;
    let before = Placement::load(&etcd, "c1").await.unwrap().unwrap();
    assert_eq!((before.shards, before.sets.len()), (1024, 2));

    server.stop();
    assert!(Placement::load(&etcd, "c1").await.is_err(), "etcd is down");
    let server = tokio::task::spawn_blocking(move || {
        server.start_again();
        server
    })
    .await
    .unwrap();
    let after = Placement::load(&client(&server).await, "c1").await.unwrap().unwrap();
    assert_eq!(after, before);
    assert_eq!(after.set_of_shard(700).set, 1);
}
