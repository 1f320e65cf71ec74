//! The same statsd lines to Etsy statsd (npm `statsd` 0.9, which
//! `scripts/test.sh` installs under `target/etsy-statsd`) and to tailfold,
//! compared flush by flush. Both flush every second on whole seconds (1 s
//! windows in tailfold), and each round of lines is sent 300 ms into a
//! second, so a round is one statsd flush and one tailfold window.
//!
//! Agreeing per round: counters (summed, sampled ones divided by their rate),
//! absolute gauges (the last value), relative gauges (`+3|g` changes the value
//! held from an earlier round), held gauges (a round without a gauge's lines
//! still has its last value), sets (distinct members, exact within
//! `engine.set_max_exact_values`), timers' count (sampled ones counted
//! 1/rate times), min and max, tags (statsd's `name;tag=value` keys are
//! tailfold's labels), and malformed lines (refused and counted by both).
//! Differing as the README documents: a sampled timer's sum (statsd sums what
//! it received, tailfold weighs each value by 1/rate, the unbiased estimate of
//! the sum of all observations), names that differ only in `.`/`-`/`_`
//! (statsd keeps them apart, tailfold folds them into one series and counts
//! the collision), a set past the exact bound (tailfold's sketch is within
//! its stated error of statsd's exact count), a set without members in a
//! round (statsd flushes it empty, tailfold has no sample), and quantiles
//! (tailfold's rank is `ceil(q n)`, statsd's `round(q n)`).

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::Value;
use tailfold::sink::JsonRecord;

/// Etsy statsd's entry point: `$ETSY_STATSD`, else where `scripts/test.sh` installs it.
fn etsy_statsd() -> PathBuf {
    if let Some(path) = std::env::var_os("ETSY_STATSD") {
        return PathBuf::from(path);
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/etsy-statsd/node_modules/statsd/stats.js");
    assert!(
        path.exists(),
        "Etsy statsd is not installed at {}: run scripts/test.sh (it runs `npm install --prefix target/etsy-statsd statsd@0.9.0`)",
        path.display()
    );
    path
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running Etsy statsd flushing every second into a JSON-lines file; killed when dropped.
struct EtsyStatsd {
    addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl EtsyStatsd {
    fn start() -> EtsyStatsd {
        let dir = tempfile::tempdir().unwrap();
        let port = free_udp_port();
        let backend = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/statsd/json_backend.js");
        let config = format!(
            "{{ port: {port}, address: \"127.0.0.1\", mgmt_address: \"127.0.0.1\", mgmt_port: {}, flushInterval: 1000,\n  backends: [{:?}], jsonBackend: {{ file: {:?} }} }}\n",
            free_tcp_port(),
            backend.display().to_string(),
            dir.path().join("flushes.jsonl").display().to_string()
        );
        std::fs::write(dir.path().join("config.js"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("statsd.log")).unwrap();
        let child = Command::new("node")
            .arg(etsy_statsd())
            .arg(dir.path().join("config.js"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("node runs (Debian's nodejs)");
        let statsd = EtsyStatsd {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            dir,
        };
        // Up once it has flushed once.
        let deadline = Instant::now() + Duration::from_secs(20);
        while statsd.flushes().is_empty() {
            assert!(Instant::now() < deadline, "statsd did not flush: {}", statsd.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        statsd
    }

    fn flushes(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("flushes.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("statsd.log")).unwrap_or_default()
    }
}

impl Drop for EtsyStatsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wall_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Distinct members of the big set of round 1: past the default exact bound (1,000).
const VISITORS: usize = 1_500;

/// One round: the datagrams sent, in order. The last round sends no gauge
/// and no set lines: statsd flushes the gauges' held values and the sets empty.
fn rounds() -> Vec<Vec<String>> {
    let timer_values = |base: f64| (0..20).map(|i| base + f64::from(i) * 1.5).collect::<Vec<_>>();
    let counters = |scale: f64| {
        let mut counters = String::new();
        for _ in 0..5 {
            counters.push_str(&format!("api.requests:{scale}|c|#service:api,region:eu\n"));
        }
        for _ in 0..4 {
            counters.push_str("api.requests:3|c|@0.5|#service:api,region:eu\n");
        }
        counters.push_str("jobs.done:2|c\njobs.done:2|c\njobs.done:2|c\n");
        // Two names statsd keeps apart and tailfold folds together.
        counters.push_str("api.errors:1|c\napi_errors:2|c\n");
        counters
    };
    let round = |scale: f64, gauges: &[f64], pool: &str, users: &[&str]| {
        let mut gauges: String = gauges.iter().map(|g| format!("queue.depth:{g}|g\n")).collect();
        gauges.push_str(pool);
        let mut timers = String::new();
        for value in timer_values(10.0 * scale) {
            timers.push_str(&format!("db.query:{value}|ms|#db:main\n"));
        }
        for value in [3.0, 7.5, 400.0, 12.25] {
            timers.push_str(&format!("db.query:{}|ms|@0.25|#db:main\n", value * scale));
        }
        // Members repeat within a round; a sample rate changes nothing for a set.
        let mut sets: String = users.iter().map(|user| format!("users:{user}|s\n")).collect();
        sets.push_str("users:carol|s|@0.5|#region:eu\nusers:carol|s|#region:eu\n");
        vec![counters(scale), gauges, timers, sets, "garbage\n".to_string()]
    };
    let mut big = round(2.0, &[4.0], "pool.size:+3|g\npool.size:-1|g\n", &["alice", "dave"]);
    let members: Vec<String> = (0..VISITORS).map(|i| format!("visitors:v{i}|s\n")).collect();
    big.extend(members.chunks(100).map(|chunk| chunk.concat()));
    // `pool.size` changes relatively across rounds: 10, then 10+3-1, then +5 and -0.5, then held.
    vec![
        round(
            1.0,
            &[5.0, 9.0],
            "pool.size:10|g\n",
            &["alice", "bob", "alice", "1", "1.0"],
        ),
        big,
        round(3.0, &[7.0, 2.5, 11.0], "pool.size:+5|g\npool.size:-0.5|g\n", &["erin"]),
        vec![counters(4.0), "garbage\n".to_string()],
    ]
}

/// Whether round `index` sends gauge, timer and set lines (all but the last).
fn full_round(index: usize) -> bool {
    index + 1 < rounds().len()
}

/// The value of the one record named `name` with exactly `labels` in the window at `start_ms`.
fn exact_record_value(records: &[JsonRecord], name: &str, labels: &[(&str, &str)], start_ms: i64) -> Option<f64> {
    let found: Vec<f64> = records
        .iter()
        .filter(|record| record.window_start_ms == start_ms && record.labels.len() == labels.len() + 1)
        .filter(|record| record.labels.get("__name__").map(String::as_str) == Some(name))
        .filter(|record| {
            labels
                .iter()
                .all(|(n, v)| record.labels.get(*n).map(String::as_str) == Some(*v))
        })
        .map(value)
        .collect();
    assert!(found.len() <= 1, "{name}{labels:?} at {start_ms}: {found:?}");
    found.first().copied()
}

/// The value of the one record named `name` with `labels` in the window at `start_ms`.
fn record_value(records: &[JsonRecord], name: &str, labels: &[(&str, &str)], start_ms: i64) -> f64 {
    let pairs: Vec<(&str, &str)> = [("__name__", name)].into_iter().chain(labels.iter().copied()).collect();
    value(one(records, &pairs, start_ms))
}

/// Timers of one round: count (1/rate per sampled value), min and max agree;
/// the sum differs as documented.
fn timer_checks(records: &[JsonRecord], round: &[String], flush: &Value, start: i64, at: &str) {
    // Timers: count (1/rate per sampled value), min, max.
    let timer = &flush["timer_data"]["db.query;db=main"];
    let db = [("db", "main")];
    assert_eq!(
        record_value(records, "db_query:count", &db, start),
        timer["count"].as_f64().unwrap(),
        "{at}"
    );
    assert_eq!(
        record_value(records, "db_query:min", &db, start),
        timer["lower"].as_f64().unwrap(),
        "{at}"
    );
    assert_eq!(
        record_value(records, "db_query:max", &db, start),
        timer["upper"].as_f64().unwrap(),
        "{at}"
    );
    // Documented difference: statsd sums what it received; tailfold weighs
    // each sampled value by 1/rate (here 4).
    let lines: Vec<(f64, f64)> = round[2]
        .lines()
        .map(|line| {
            let (value, rest) = line.trim_start_matches("db.query:").split_once('|').unwrap();
            let weight = if rest.contains("@0.25") { 4.0 } else { 1.0 };
            (value.parse::<f64>().unwrap(), weight)
        })
        .collect();
    let received: f64 = lines.iter().map(|(v, _)| v).sum();
    let weighted: f64 = lines.iter().map(|(v, w)| v * w).sum();
    assert!(
        (timer["sum"].as_f64().unwrap() - received).abs() < 1e-9,
        "{at}: statsd's sum"
    );
    let tailfold_sum = record_value(records, "db_query:sum", &db, start);
    assert!(
        (tailfold_sum - weighted).abs() < 1e-9,
        "{at}: {tailfold_sum} vs {weighted}"
    );
}

#[test]
fn the_same_lines_agree_with_etsy_statsd_per_flush_where_documented() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let statsd = EtsyStatsd::start();
    let mut service = runtime.block_on(start_service_real_clock(
        "defaults: {storage_policies: [\"1s:1h\"]}\n",
        100,
        "statsd: {listen: \"127.0.0.1:0\"}\nengine: {lateness_ms: {\"1s\": 500}}\n",
    ));
    let tailfold_addr = service.handle().statsd_addr().expect("statsd is on");
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();

    // Each round 300 ms into a second of its own, a second apart.
    let rounds = rounds();
    let mut windows = Vec::new();
    for round in &rounds {
        let next_second = (wall_ms() / 1000 + 1) * 1000;
        std::thread::sleep(Duration::from_millis((next_second + 300 - wall_ms()) as u64));
        windows.push(next_second);
        for datagram in round {
            socket.send_to(datagram.as_bytes(), statsd.addr).unwrap();
            socket.send_to(datagram.as_bytes(), tailfold_addr).unwrap();
        }
        std::thread::sleep(Duration::from_millis(1_000));
    }
    std::thread::sleep(Duration::from_millis(1_500));
    runtime.block_on(service.handle().flush_now());
    let records = service.records();
    let snapshot = service.handle().telemetry().snapshot();
    // statsd's flushes that received lines: one per round.
    let flushes: Vec<Value> = statsd
        .flushes()
        .into_iter()
        .filter(|flush| flush["counters"]["statsd.metrics_received"].as_f64() > Some(0.0))
        .collect();
    let context = format!("tailfold: {}\nstatsd log:\n{}", snapshot.progress_line(), statsd.log());
    assert_eq!(flushes.len(), rounds.len(), "one statsd flush per round\n{context}");

    for (index, (flush, &start)) in flushes.iter().zip(&windows).enumerate() {
        let at = format!("round {index}");
        let counter = |key: &str| {
            flush["counters"][key]
                .as_f64()
                .unwrap_or_else(|| panic!("{at}: no counter {key}"))
        };
        // Counters, sampled ones included, under their tags.
        let requests = counter("api.requests;service=api;region=eu");
        assert_eq!(
            record_value(
                &records,
                "api_requests:sum",
                &[("region", "eu"), ("service", "api")],
                start
            ),
            requests,
            "{at}"
        );
        assert_eq!(
            record_value(&records, "jobs_done:sum", &[], start),
            counter("jobs.done"),
            "{at}"
        );
        // Absolute gauges: the last value sent.
        assert_eq!(
            record_value(&records, "queue_depth", &[], start),
            flush["gauges"]["queue.depth"].as_f64().unwrap(),
            "{at}"
        );
        // Relative gauges: changes of the value held from earlier rounds.
        assert_eq!(
            record_value(&records, "pool_size", &[], start),
            flush["gauges"]["pool.size"].as_f64().unwrap(),
            "{at}"
        );
        // Held gauges: a round without their lines still has their last value.
        if !full_round(index) {
            assert_eq!(
                flush["gauges"]["queue.depth"].as_f64(),
                Some(11.0),
                "{at}: statsd holds it"
            );
            assert_eq!(
                flush["gauges"]["pool.size"].as_f64(),
                Some(16.5),
                "{at}: statsd holds it"
            );
            // Documented difference: statsd flushes a set without members as
            // empty (count 0), tailfold has no sample for it in that window.
            assert_eq!(flush["sets"]["users"].as_array().map(Vec::len), Some(0), "{at}");
            assert_eq!(exact_record_value(&records, "users:count", &[], start), None, "{at}");
        } else {
            // Sets: distinct members per flush, as text ("1" and "1.0" are two).
            for (key, labels) in [("users", &[][..]), ("users;region=eu", &[("region", "eu")][..])] {
                let members = flush["sets"][key]
                    .as_array()
                    .unwrap_or_else(|| panic!("{at}: no set {key}"))
                    .len();
                assert_eq!(
                    exact_record_value(&records, "users:count", labels, start),
                    Some(members as f64),
                    "{at}: {key}"
                );
            }
            timer_checks(&records, &rounds[index], flush, start, &at);
        }
        // Past the exact bound: statsd counts exactly, tailfold's sketch is
        // within four of its standard errors (0.81 % each), as documented.
        let visitors = flush["sets"]["visitors"].as_array().map_or(0, Vec::len);
        let estimate = exact_record_value(&records, "visitors:count", &[], start);
        if index == 1 {
            assert_eq!(visitors, VISITORS, "{at}: statsd counts exactly");
            let estimate = estimate.expect("visitors:count");
            let error = (estimate - VISITORS as f64).abs() / VISITORS as f64;
            assert!(error < 4.0 * 0.0081, "{at}: {estimate} for {VISITORS}");
            assert_ne!(estimate, VISITORS as f64, "{at}: a sketch, not an exact count");
        } else {
            assert_eq!((visitors, estimate), (0, None), "{at}");
        }
        // Documented difference: `api.errors` and `api_errors` are two series
        // in statsd and one in tailfold, which holds both.
        assert_eq!(
            record_value(&records, "api_errors:sum", &[], start),
            counter("api.errors") + counter("api_errors"),
            "{at}"
        );
        // Malformed lines: one per round, refused by both.
        assert_eq!(counter("statsd.bad_lines_seen"), 1.0, "{at}");
    }
    assert_eq!(snapshot.statsd_malformed_lines, rounds.len() as u64, "{context}");
    assert_eq!(snapshot.statsd_name_collisions, 1, "counted once: {context}");
    runtime.block_on(service.shutdown());
}
