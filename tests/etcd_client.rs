//! The etcd client against a real etcd (Debian's `etcd-server`): key reads
//! and writes, the guarded transactions, leases kept and lost, watches,
//! elections, failover and broken endpoints.

mod common;

use std::time::Duration;

use common::etcd::EtcdServer;
use tailfold::cluster::etcd::{Election, EtcdClient, EtcdError, WatchKind};
use tokio::time::{timeout, Instant};

const TIMEOUT: Duration = Duration::from_secs(2);
/// The shortest lease etcd grants with its default election timeout.
const TTL_S: i64 = 2;

async fn client(server: &EtcdServer) -> EtcdClient {
    EtcdClient::connect(&[server.endpoint()], TIMEOUT)
        .await
        .expect("connect")
}

/// Waits (bounded) until `key` is gone.
async fn wait_deleted(client: &EtcdClient, key: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while client.get(key).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "{key} still there after {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn get_put_prefix_and_delete() {
    let server = EtcdServer::start();
    let etcd = client(&server).await;
    assert_eq!(etcd.get("/t/a").await.unwrap(), None);
    let first = etcd.put("/t/b", b"2".to_vec(), None).await.unwrap();
    let second = etcd.put("/t/a", b"1".to_vec(), None).await.unwrap();
    assert!(second > first, "revisions grow: {first} then {second}");
    etcd.put("/t/c/deep", b"3".to_vec(), None).await.unwrap();
    etcd.put("/u/a", b"outside".to_vec(), None).await.unwrap();

    let a = etcd.get("/t/a").await.unwrap().expect("/t/a");
    assert_eq!((a.key.as_str(), a.value.as_slice()), ("/t/a", b"1".as_slice()));
    assert_eq!((a.create_revision, a.mod_revision, a.lease), (second, second, 0));

    let under: Vec<(String, Vec<u8>)> = etcd
        .get_prefix("/t/")
        .await
        .unwrap()
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect();
    assert_eq!(
        under,
        vec![
            ("/t/a".to_string(), b"1".to_vec()),
            ("/t/b".to_string(), b"2".to_vec()),
            ("/t/c/deep".to_string(), b"3".to_vec()),
        ]
    );
    assert!(etcd.get_prefix("/nothing/").await.unwrap().is_empty());

    let rewritten = etcd.put("/t/a", b"one".to_vec(), None).await.unwrap();
    let a = etcd.get("/t/a").await.unwrap().unwrap();
    assert_eq!(
        (a.value.as_slice(), a.create_revision, a.mod_revision),
        (b"one".as_slice(), second, rewritten)
    );

    assert!(etcd.delete("/t/a").await.unwrap());
    assert!(!etcd.delete("/t/a").await.unwrap(), "a second delete finds nothing");
    assert_eq!(etcd.get("/t/a").await.unwrap(), None);
    assert_eq!(etcd.get_prefix("/t/").await.unwrap().len(), 2);
}

#[tokio::test]
async fn create_and_compare_and_put_refuse_stale_writes() {
    let server = EtcdServer::start();
    let etcd = client(&server).await;
    assert!(etcd.create("/c/k", b"first".to_vec(), None).await.unwrap());
    assert!(!etcd.create("/c/k", b"second".to_vec(), None).await.unwrap());
    assert_eq!(etcd.get("/c/k").await.unwrap().unwrap().value, b"first");

    let revision = etcd.get("/c/k").await.unwrap().unwrap().mod_revision;
    assert!(etcd.compare_and_put("/c/k", revision, b"v2".to_vec()).await.unwrap());
    assert!(
        !etcd.compare_and_put("/c/k", revision, b"stale".to_vec()).await.unwrap(),
        "a write from a stale revision is refused"
    );
    assert_eq!(etcd.get("/c/k").await.unwrap().unwrap().value, b"v2");
    assert!(
        !etcd.compare_and_put("/c/k", 0, b"new".to_vec()).await.unwrap(),
        "0 means must not exist"
    );
    assert!(etcd.compare_and_put("/c/fresh", 0, b"new".to_vec()).await.unwrap());
    assert_eq!(etcd.get("/c/fresh").await.unwrap().unwrap().value, b"new");
}

#[tokio::test]
async fn put_if_lease_holds_writes_only_while_the_guard_lease_lives() {
    let server = EtcdServer::start();
    let etcd = client(&server).await;
    let lease = etcd.lease_grant(30).await.unwrap();
    let other = etcd.lease_grant(30).await.unwrap();
    assert!(etcd.create("/g/leader", b"a".to_vec(), Some(lease)).await.unwrap());
    assert_eq!(etcd.get("/g/leader").await.unwrap().unwrap().lease, lease);

    assert!(etcd
        .put_if_lease_holds("/g/leader", lease, "/g/flush", b"1".to_vec())
        .await
        .unwrap());
    assert!(
        !etcd
            .put_if_lease_holds("/g/leader", other, "/g/flush", b"other".to_vec())
            .await
            .unwrap(),
        "another lease does not hold the guard"
    );
    assert!(!etcd
        .put_if_lease_holds("/g/missing", lease, "/g/flush", b"x".to_vec())
        .await
        .unwrap());

    etcd.lease_revoke(lease).await.unwrap();
    assert_eq!(
        etcd.get("/g/leader").await.unwrap(),
        None,
        "revoking deletes the lease's keys"
    );
    assert!(!etcd
        .put_if_lease_holds("/g/leader", lease, "/g/flush", b"2".to_vec())
        .await
        .unwrap());
    assert_eq!(etcd.get("/g/flush").await.unwrap().unwrap().value, b"1");
}

#[tokio::test]
async fn an_expired_lease_deletes_its_keys() {
    let server = EtcdServer::start();
    let etcd = client(&server).await;
    let lease = etcd.lease_grant(TTL_S).await.unwrap();
    etcd.put("/l/k", b"v".to_vec(), Some(lease)).await.unwrap();
    etcd.put("/l/kept", b"v".to_vec(), None).await.unwrap();
    assert_eq!(etcd.get("/l/k").await.unwrap().unwrap().lease, lease);
    // etcd checks for expired leases every 500 ms.
    wait_deleted(&etcd, "/l/k", Duration::from_secs(TTL_S as u64 + 3)).await;
    assert!(etcd.get("/l/kept").await.unwrap().is_some());
    let error = etcd.put("/l/late", b"v".to_vec(), Some(lease)).await.unwrap_err();
    assert!(error.to_string().contains("lease not found"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_holds_a_lease_and_reports_losing_it_when_etcd_is_gone() {
    let mut server = EtcdServer::start();
    let etcd = client(&server).await;
    let lease = etcd.lease_grant(TTL_S).await.unwrap();
    let keeper = etcd.keep_alive(lease);
    let mut alive = keeper.alive();
    etcd.put("/k/held", b"v".to_vec(), Some(lease)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2 * TTL_S as u64 + 1)).await;
    assert!(etcd.get("/k/held").await.unwrap().is_some(), "kept past twice the ttl");
    assert!(*alive.borrow());

    server.stop();
    let stopped = Instant::now();
    timeout(Duration::from_secs(TTL_S as u64 + 3), alive.wait_for(|alive| !alive))
        .await
        .expect("alive turns false once no renewal succeeded for a ttl")
        .unwrap();
    // The last renewal was at most ttl/3 before the stop.
    assert!(
        stopped.elapsed() >= Duration::from_millis(TTL_S as u64 * 1000 * 2 / 3 - 100),
        "turned false {:?} after the stop, before a ttl could have passed",
        stopped.elapsed()
    );

    let mut server = tokio::task::spawn_blocking(move || {
        server.start_again();
        server
    })
    .await
    .unwrap();
    // The same client reaches the restarted etcd; the keeper gave up for good.
    let deadline = Instant::now() + Duration::from_secs(10);
    while etcd.put("/k/after", b"v".to_vec(), None).await.is_err() {
        assert!(Instant::now() < deadline, "client never reached the restarted etcd");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!*keeper.alive().borrow(), "alive stays false");
    server.stop();
}

#[tokio::test]
async fn watch_sees_puts_and_deletes_under_its_prefix_only() {
    let server = EtcdServer::start();
    let etcd = client(&server).await;
    let before = etcd.put("/w/old", b"0".to_vec(), None).await.unwrap();
    let mut watch = etcd.watch_prefix("/w/", 0).await.unwrap();
    etcd.put("/w/a", b"1".to_vec(), None).await.unwrap();
    etcd.put("/x/a", b"outside".to_vec(), None).await.unwrap();
    etcd.put("/w/a", b"2".to_vec(), None).await.unwrap();
    let deleted_at = {
        etcd.delete("/w/a").await.unwrap();
        etcd.get("/x/a").await.unwrap().unwrap().mod_revision + 2
    };
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let events = timeout(TIMEOUT, watch.next()).await.expect("events").unwrap().unwrap();
        seen.extend(events);
    }
    let summary: Vec<(WatchKind, &str, &[u8])> = seen
        .iter()
        .map(|event| (event.kind, event.kv.key.as_str(), event.kv.value.as_slice()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (WatchKind::Put, "/w/a", b"1".as_slice()),
            (WatchKind::Put, "/w/a", b"2".as_slice()),
            (WatchKind::Delete, "/w/a", b"".as_slice()),
        ]
    );
    assert_eq!(seen[2].kv.mod_revision, deleted_at);
    assert_eq!(watch.revision(), deleted_at);

    // From a past revision, history is replayed.
    let mut replay = etcd.watch_prefix("/w/", before).await.unwrap();
    let events = timeout(TIMEOUT, replay.next()).await.unwrap().unwrap().unwrap();
    assert_eq!((events[0].kind, events[0].kv.key.as_str()), (WatchKind::Put, "/w/old"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_campaigner_leads_within_a_ttl_once_the_leader_is_gone() {
    let server = EtcdServer::start();
    let etcd = client(&server).await;
    let election = Election::new(etcd.clone(), "/e/set0");
    let mut observed = election.observe();

    let lease_a = etcd.lease_grant(TTL_S).await.unwrap();
    let keeper_a = etcd.keep_alive(lease_a);
    let a = timeout(TIMEOUT, election.campaign(lease_a, b"a".to_vec()))
        .await
        .expect("the first campaigner leads at once")
        .unwrap();
    assert_eq!(a.key, format!("/e/set0/{lease_a:x}"));
    assert_eq!(election.leader().await.unwrap().unwrap().value, b"a");
    timeout(TIMEOUT, observed.wait_for(|leader| leader.as_deref() == Some("a")))
        .await
        .unwrap()
        .unwrap();

    // b waits in line while a's lease is kept alive, past several TTLs.
    let lease_b = etcd.lease_grant(TTL_S).await.unwrap();
    let _keeper_b = etcd.keep_alive(lease_b);
    let b_election = election.clone();
    let mut b = tokio::spawn(async move { b_election.campaign(lease_b, b"b".to_vec()).await });
    assert!(
        timeout(Duration::from_secs(2 * TTL_S as u64 + 1), &mut b)
            .await
            .is_err(),
        "b must not lead while a does"
    );
    assert_eq!(election.leader().await.unwrap().unwrap().value, b"a");

    // c campaigns behind b on a lease nobody keeps: its campaign fails, it does not hang.
    let lease_c = etcd.lease_grant(TTL_S).await.unwrap();
    let c_election = election.clone();
    let c = tokio::spawn(async move { c_election.campaign(lease_c, b"c".to_vec()).await });

    // a's keeper stops (a lost instance): a's lease expires, b leads within a TTL of that.
    drop(keeper_a);
    let b = timeout(Duration::from_secs(TTL_S as u64 + 3), b)
        .await
        .expect("b leads within the ttl")
        .unwrap()
        .unwrap();
    assert_eq!(b.lease, lease_b);
    assert!(b.revision > a.revision);
    timeout(TIMEOUT, observed.wait_for(|leader| leader.as_deref() == Some("b")))
        .await
        .unwrap()
        .unwrap();
    let error = timeout(Duration::from_secs(TTL_S as u64 + 3), c)
        .await
        .expect("c's campaign ends when its lease expires")
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(error, EtcdError::LeaseGone { lease, .. } if lease == lease_c),
        "{error}"
    );

    // A revoked leader hands over at once; resigning leaves nobody.
    let lease_d = etcd.lease_grant(30).await.unwrap();
    let d_election = election.clone();
    let d = tokio::spawn(async move { d_election.campaign(lease_d, b"d".to_vec()).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    etcd.lease_revoke(lease_b).await.unwrap();
    let d = timeout(TIMEOUT, d)
        .await
        .expect("d leads once b's lease is revoked")
        .unwrap()
        .unwrap();
    timeout(TIMEOUT, observed.wait_for(|leader| leader.as_deref() == Some("d")))
        .await
        .unwrap()
        .unwrap();
    d.resign().await.unwrap();
    assert_eq!(election.leader().await.unwrap(), None);
    timeout(TIMEOUT, observed.wait_for(|leader| leader.is_none()))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn calls_fail_over_to_the_next_endpoint() {
    let mut first = EtcdServer::start();
    let second = EtcdServer::start();
    let etcd = EtcdClient::connect(&[first.endpoint(), second.endpoint()], TIMEOUT)
        .await
        .unwrap();
    assert_eq!(etcd.active_endpoint(), first.endpoint());
    etcd.put("/f/k", b"first".to_vec(), None).await.unwrap();
    first.stop();
    // Two separate one-member etcds stand in for members of one cluster: the
    // key written to the first is not in the second, which shows who answered.
    assert_eq!(etcd.get("/f/k").await.unwrap(), None);
    assert_eq!(etcd.active_endpoint(), second.endpoint());

    // An unreachable first endpoint is skipped at connect time.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let etcd = EtcdClient::connect(&[dead, second.endpoint()], TIMEOUT).await.unwrap();
    assert_eq!(etcd.active_endpoint(), second.endpoint());
}

fn free_port() -> u16 {
    common::ports::unused_port()
}

#[tokio::test]
async fn broken_endpoints_are_refused_with_a_clear_error() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let error = EtcdClient::connect(std::slice::from_ref(&dead), Duration::from_millis(500))
        .await
        .expect_err("nobody listens");
    let message = error.to_string();
    assert!(matches!(error, EtcdError::Unreachable { .. }), "{message}");
    assert!(message.contains(&dead) && message.contains("connect"), "{message}");

    for (endpoint, reason) in [
        ("not a url", "invalid"),
        ("127.0.0.1:2379", "no scheme"),
        ("https://127.0.0.1:2379", "scheme \"https\" is not supported"),
        ("http://127.0.0.1", "no port"),
        ("http://127.0.0.1:2379/v3", "a path is not allowed"),
    ] {
        let error = EtcdClient::connect(&[endpoint.to_string()], TIMEOUT)
            .await
            .err()
            .unwrap();
        assert!(
            matches!(error, EtcdError::InvalidEndpoint { .. }),
            "{endpoint}: {error}"
        );
        let message = error.to_string();
        assert!(
            message.contains(&format!("invalid etcd endpoint {endpoint:?}")) && message.contains(reason),
            "{endpoint}: {message}"
        );
    }
    let error = EtcdClient::connect(&[], TIMEOUT).await.err().unwrap();
    assert_eq!(error.to_string(), "no etcd endpoint given");
    let error = EtcdClient::connect(&[dead], TIMEOUT).await.err().unwrap();
    assert!(error.is_unreachable());
}

#[tokio::test]
async fn a_watch_ends_with_an_error_naming_its_prefix_when_etcd_goes_away() {
    let mut server = EtcdServer::start();
    let etcd = client(&server).await;
    let mut watch = etcd.watch_prefix("/gone/", 0).await.unwrap();
    server.stop();
    let error = timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("the stream breaks, it does not hang")
        .expect("an error before the end")
        .unwrap_err();
    assert!(error.is_unreachable(), "{error}");
    let message = error.to_string();
    assert!(
        message.starts_with(&format!(
            "etcd watch of prefix \"/gone/\" at {} ended: ",
            server.endpoint()
        )),
        "{message}"
    );
    assert!(watch.next().await.is_none(), "nothing after the error");
    let error = etcd.watch_prefix("/gone/", 0).await.err().expect("etcd is down");
    assert!(error.to_string().contains(&server.endpoint()), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_keeps_the_last_leader_through_an_outage_and_follows_again_after() {
    let server = EtcdServer::start();
    let etcd = client(&server).await;
    let election = Election::new(etcd.clone(), "/o/set0");
    let mut observed = election.observe();
    let lease = etcd.lease_grant(60).await.unwrap();
    let leadership = election.campaign(lease, b"a".to_vec()).await.unwrap();
    timeout(TIMEOUT, observed.wait_for(|leader| leader.as_deref() == Some("a")))
        .await
        .unwrap()
        .unwrap();

    let mut server = tokio::task::spawn_blocking(move || {
        let mut server = server;
        server.stop();
        std::thread::sleep(Duration::from_secs(1));
        server
    })
    .await
    .unwrap();
    assert_eq!(observed.borrow().as_deref(), Some("a"), "the last leader seen is kept");
    let server = tokio::task::spawn_blocking(move || {
        server.start_again();
        server
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(error) = etcd.get("/o/x").await {
        assert!(Instant::now() < deadline, "{error}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    leadership.resign().await.unwrap();
    timeout(Duration::from_secs(5), observed.wait_for(|leader| leader.is_none()))
        .await
        .expect("observe follows changes after the outage")
        .unwrap();
    drop(server);
}
