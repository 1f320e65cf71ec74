//! A real cluster for tests: a real etcd, `tailfold cluster init`, and real
//! `tailfold run` processes on free loopback ports, each with its own data
//! directory; `kill -9` stands in for a lost machine. Every process is killed
//! when the harness drops.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tailfold::api::v1;
use tailfold::sink::JsonRecord;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::etcd::EtcdServer;
use super::{point, series};

/// A free loopback port for a process to take (see [`super::ports`]).
pub fn free_port() -> u16 {
    super::ports::unused_port()
}

/// The rules of the cluster tests that count counters: `sum` and `count` per
/// series in windows of `policy` (e.g. `2s:1h`), and one rollup of every
/// `req` series into `req_all`, so every window's rollup can be checked
/// against its inputs.
pub fn counter_rules(policy: &str) -> String {
    format!(
        r#"
defaults:
  storage_policies: ["{policy}"]
  counter: {{ aggregations: [sum, count] }}
rollup_rules:
  - name: requests-all
    filter: '__name__:req'
    rollup: {{name: req_all, group_by: [], aggregations: [sum]}}
"#
    )
}

/// One `tailfold run` process.
pub struct Instance {
    pub id: String,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub internal: SocketAddr,
    pub dir: PathBuf,
    /// Its own rules file (each instance has one, as on separate machines).
    pub rules_file: PathBuf,
    pub config: PathBuf,
    child: Option<Child>,
    /// Logs of the runs before the last restart.
    earlier_log: String,
}

impl Instance {
    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("tailfold.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tailfold"))
            .args(["run", "-c"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn tailfold");
        self.child = Some(child);
    }

    /// Starts it again (after `stop` or `kill9`), with `cluster_extra` lines
    /// added to its `cluster:` section, and waits until it is ready.
    pub fn restart_with(&mut self, cluster_extra: &str) {
        let config = std::fs::read_to_string(&self.config).unwrap();
        std::fs::write(&self.config, format!("{config}{cluster_extra}")).unwrap();
        self.spawn();
        self.wait_ready();
    }

    /// Waits until `GET /-/ready` answers 200.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().and_then(|child| child.try_wait().unwrap()) {
                panic!("instance {} exited with {status}:\n{}", self.id, self.log());
            }
            if http_get(self.http, "/-/ready").is_some_and(|(status, _)| status == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("instance {} never became ready:\n{}", self.id, self.log());
    }

    /// Starts the process again on the same config and data directory (its
    /// log kept, the earlier one's appended below a marker) and waits until ready.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "instance {} is still running", self.id);
        let earlier = std::fs::read_to_string(self.dir.join("tailfold.log")).unwrap_or_default();
        self.earlier_log.push_str(&earlier);
        self.earlier_log.push_str("==== restarted\n");
        self.spawn();
        self.wait_ready();
    }

    /// Waits up to `wait` for the process to exit by itself; its exit status.
    pub fn wait_exit(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().and_then(|child| child.try_wait().unwrap()) {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// `ID=HOST:PORT,http=HOST:PORT`, as `tailfold cluster init|add|replace` take it.
    pub fn spec(&self) -> String {
        format!("{}={},http={}", self.id, self.internal, self.http)
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe_sigterm(child.id());
            let _ = child.wait();
        }
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn log(&self) -> String {
        let now = std::fs::read_to_string(self.dir.join("tailfold.log")).unwrap_or_default();
        format!("{}{now}", self.earlier_log)
    }

    /// The records of this instance's store; a line cut by `kill -9` is skipped.
    pub fn records(&self) -> Vec<JsonRecord> {
        let mut files = Vec::new();
        collect(&self.dir.join("data/store"), &mut files);
        files.sort();
        let mut out = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for line in text.lines() {
                if let Ok(record) = serde_json::from_str(line) {
                    out.push(record);
                }
            }
        }
        out
    }
}

fn unsafe_sigterm(pid: u32) {
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "jsonl") {
            out.push(path);
        }
    }
}

/// A plain HTTP/1.1 GET on loopback: status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http_request(addr, "GET", path, Duration::from_secs(5))
}

/// A plain HTTP/1.1 POST without a body on loopback: status and body.
pub fn http_post(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http_request(addr, "POST", path, Duration::from_secs(10))
}

fn http_request(addr: SocketAddr, method: &str, path: &str, wait: Duration) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(wait)).ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_string())?;
    Some((status, body))
}

/// Settings of a test cluster.
pub struct ClusterSpec {
    pub instances: usize,
    pub replicas: usize,
    pub shards: u32,
    pub rules: String,
    pub lease_ttl_s: u64,
    pub flush_interval_ms: u64,
    /// Each instance logs what it takes in its write-ahead log.
    pub wal: bool,
}

/// etcd, the instances, and a single node fed the same samples for comparison.
pub struct TestCluster {
    pub etcd: EtcdServer,
    pub instances: Vec<Instance>,
    pub single: Option<Instance>,
    pub spec: ClusterSpec,
    _dir: tempfile::TempDir,
}

const CLUSTER_ID: &str = "test-cluster";

impl TestCluster {
    /// Starts etcd, creates the placement and starts every instance (and a single node).
    pub fn start(spec: ClusterSpec) -> TestCluster {
        let etcd = EtcdServer::start();
        let dir = tempfile::tempdir().unwrap();
        let mut instances = Vec::new();
        for index in 0..spec.instances {
            let id = format!("i{index}");
            instances.push(make_instance(dir.path(), &id, &spec, Some(&etcd.endpoint())));
        }
        let mut init = Command::new(env!("CARGO_BIN_EXE_tailfold"));
        init.args([
            "cluster",
            "init",
            "--etcd",
            &etcd.endpoint(),
            "--cluster",
            CLUSTER_ID,
            "--shards",
            &spec.shards.to_string(),
            "--replicas",
            &spec.replicas.to_string(),
        ]);
        for instance in &instances {
            init.args([
                "--instance",
                &format!("{}={},http={}", instance.id, instance.internal, instance.http),
            ]);
        }
        let output = init.output().expect("run tailfold cluster init");
        assert!(
            output.status.success(),
            "cluster init failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut single = make_instance(dir.path(), "single", &spec, None);
        single.spawn();
        for instance in &mut instances {
            instance.spawn();
        }
        for instance in instances.iter_mut().chain(std::iter::once(&mut single)) {
            instance.wait_ready();
        }
        let cluster = TestCluster {
            etcd,
            instances,
            single: Some(single),
            spec,
            _dir: dir,
        };
        // Every instance registered (each does before it is ready; the others' view follows within 250 ms).
        let all_live = |status: &serde_json::Value| {
            status["sets"].as_array().is_some_and(|sets| {
                sets.iter()
                    .flat_map(|set| set["instances"].as_array().cloned().unwrap_or_default())
                    .all(|instance| instance["live"] == true)
            })
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !all_live(&cluster.status()) {
            assert!(
                Instant::now() < deadline,
                "instances never all registered: {}",
                cluster.status()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        cluster
    }

    /// The cluster id every instance uses.
    pub fn id(&self) -> &'static str {
        CLUSTER_ID
    }

    /// `tailfold cluster status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let output = Command::new(env!("CARGO_BIN_EXE_tailfold"))
            .args([
                "cluster",
                "status",
                "--etcd",
                &self.etcd.endpoint(),
                "--cluster",
                CLUSTER_ID,
                "--json",
            ])
            .output()
            .expect("run tailfold cluster status");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).expect("status json")
    }

    /// Every record of every instance's store (the killed ones' included).
    pub fn records(&self) -> Vec<JsonRecord> {
        self.instances.iter().flat_map(Instance::records).collect()
    }

    /// Starts instance `id`, not in the placement: it registers and waits
    /// to be placed (by `add` or `replace`). Returns its index once registered.
    pub fn start_unplaced(&mut self, id: &str) -> usize {
        let mut instance = make_instance(self._dir.path(), id, &self.spec, Some(&self.etcd.endpoint()));
        instance.spawn();
        self.instances.push(instance);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.status();
            let unplaced = status["unplaced"].as_array().cloned().unwrap_or_default();
            if unplaced.iter().any(|registered| registered == id) {
                return self.instances.len() - 1;
            }
            assert!(
                Instant::now() < deadline,
                "{id} never registered: {status}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `tailfold cluster ARGS --etcd .. --cluster .. --json`: the JSON it
    /// printed, or its error message.
    pub fn cluster_cli(&self, args: &[&str]) -> Result<serde_json::Value, String> {
        let output = Command::new(env!("CARGO_BIN_EXE_tailfold"))
            .arg("cluster")
            .args(args)
            .args(["--etcd", &self.etcd.endpoint(), "--cluster", CLUSTER_ID, "--json"])
            .output()
            .expect("run tailfold cluster");
        if output.status.success() {
            Ok(serde_json::from_slice(&output.stdout).expect("json"))
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// Waits until no placement change is in flight (its handoff completed).
    pub fn wait_change_completed(&self, wait: Duration) -> serde_json::Value {
        let deadline = Instant::now() + wait;
        loop {
            let status = self.status();
            if status["change"].is_null() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the change never completed: {status:#}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn logs(&self) -> String {
        self.instances
            .iter()
            .map(|instance| format!("==== {}\n{}", instance.id, instance.log()))
            .collect()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for instance in self.instances.iter_mut().chain(self.single.as_mut()) {
            instance.kill9();
        }
        // On failure, TAILFOLD_TEST_KEEP=DIR keeps a copy of the cluster's
        // directory (each instance's log, store and write-ahead log) under DIR.
        if let (true, Some(keep)) = (std::thread::panicking(), std::env::var_os("TAILFOLD_TEST_KEEP")) {
            let keep = Path::new(&keep).join(format!("cluster-{}", std::process::id()));
            let copied = Command::new("cp").arg("-a").arg(self._dir.path()).arg(&keep).status();
            eprintln!("kept the cluster's directory in {} ({copied:?})", keep.display());
        }
    }
}

fn make_instance(root: &Path, id: &str, spec: &ClusterSpec, etcd: Option<&str>) -> Instance {
    let dir = root.join(id);
    std::fs::create_dir_all(&dir).unwrap();
    let rules = dir.join("rules.yaml");
    std::fs::write(&rules, &spec.rules).unwrap();
    let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let (grpc, http, internal) = (loopback(free_port()), loopback(free_port()), loopback(free_port()));
    let cluster = match etcd {
        Some(endpoint) => format!(
            "cluster:\n  etcd_endpoints: [\"{endpoint}\"]\n  cluster: {CLUSTER_ID}\n  instance: {id}\n  listen: \"{internal}\"\n  lease_ttl_s: {ttl}\n  forward_timeout_ms: {forward}\n  forward_lateness_ms: {lateness}\n",
            ttl = spec.lease_ttl_s,
            forward = spec.lease_ttl_s * 1_000 + 3_000,
            lateness = spec.lease_ttl_s * 1_000 + 2_000,
        ),
        None => String::new(),
    };
    let config = format!(
        "grpc: {{listen: \"{grpc}\"}}\nhttp: {{listen: \"{http}\"}}\nrules_file: {rules}\ndata_dir: {data}\nflush: {{interval_ms: {flush}, jitter_ms: 0, progress_interval_ms: 0}}\nlog: {{format: json}}\nwal: {{enabled: {wal}}}\n{cluster}",
        rules = rules.display(),
        data = dir.join("data").display(),
        flush = spec.flush_interval_ms,
        wal = spec.wal,
    );
    let config_file = dir.join("tailfold.yaml");
    std::fs::write(&config_file, config).unwrap();
    Instance {
        id: id.to_string(),
        grpc,
        http,
        internal,
        dir,
        rules_file: rules,
        config: config_file,
        child: None,
        earlier_log: String::new(),
    }
}

/// A gRPC client of `instance`.
pub async fn client(addr: SocketAddr) -> v1::ingest_client::IngestClient<tonic::transport::Channel> {
    v1::ingest_client::IngestClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
}

/// Records keyed by (name, labels, window start, aggregation); panics on a key seen twice.
pub fn by_identity(records: &[JsonRecord]) -> BTreeMap<(String, String, i64, String), &JsonRecord> {
    let mut out = BTreeMap::new();
    for record in records {
        let key = (
            record.name.clone(),
            format!("{:?}", record.labels),
            record.window_start_ms,
            record.aggregation.clone(),
        );
        if let Some(earlier) = out.insert(key.clone(), record) {
            panic!("record emitted twice: {key:?}\nfirst: {earlier:?}\nagain: {record:?}");
        }
    }
    out
}

/// Milliseconds since the epoch, as the instances stamp them.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The identity (see [`by_identity`]) of the `sum` record of `req{r=id}` in
/// the window starting at `window`.
pub fn counter_sum_key(id: &str, window: i64) -> (String, String, i64, String) {
    let name = "req:sum".to_string();
    let labels = BTreeMap::from([
        ("__name__".to_string(), name.clone()),
        ("r".to_string(), id.to_string()),
    ]);
    (name, format!("{labels:?}"), window, "sum".to_string())
}

/// Senders writing, every 10 ms each, one request of a counter series of its
/// own (`req{r="<worker>-<n>"}`, 5 points of 1 stamped now) to a random
/// instance, so a request lands whole or not at all; they keep the requests
/// acknowledged whole, with their time, and count the others by kind.
pub struct CounterLoad {
    acked: Arc<parking_lot::Mutex<Vec<(String, i64)>>>,
    /// Requests not acknowledged whole, by kind: the gRPC code, the reasons
    /// of a partial answer, or `no answer within 20 s`.
    refused: Arc<parking_lot::Mutex<BTreeMap<String, usize>>>,
    stop: Arc<AtomicBool>,
    avoid: Arc<AtomicUsize>,
    senders: Vec<tokio::task::JoinHandle<()>>,
}

impl CounterLoad {
    /// Starts `workers` senders on `cluster`'s instances.
    pub async fn start(cluster: &TestCluster, workers: u64) -> CounterLoad {
        let mut clients = Vec::new();
        for instance in &cluster.instances {
            clients.push(client(instance.grpc).await);
        }
        let load = CounterLoad {
            acked: Arc::default(),
            refused: Arc::default(),
            stop: Arc::default(),
            avoid: Arc::new(AtomicUsize::new(usize::MAX)),
            senders: Vec::new(),
        };
        let mut senders = Vec::new();
        for worker in 0..workers {
            let mut clients = clients.clone();
            let (acked, stop, avoid) = (Arc::clone(&load.acked), Arc::clone(&load.stop), Arc::clone(&load.avoid));
            let refused = Arc::clone(&load.refused);
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
                    let mut target = rng.random_range(0..clients.len());
                    if target == avoid.load(Ordering::Relaxed) {
                        target = (target + 1) % clients.len();
                    }
                    let answer = tokio::time::timeout(
                        Duration::from_secs(20),
                        clients[target].write(v1::WriteRequest { series: request }),
                    )
                    .await;
                    let refusal = match answer {
                        Ok(Ok(answer)) if answer.get_ref().accepted == 5 => {
                            acked.lock().push((id, at));
                            None
                        }
                        Ok(Ok(answer)) => Some(format!(
                            "partly: {:?}",
                            answer
                                .get_ref()
                                .rejections
                                .iter()
                                .map(|count| count.reason.as_str())
                                .collect::<Vec<_>>()
                        )),
                        Ok(Err(status)) => Some(format!("{:?}", status.code())),
                        Err(_) => Some("no answer within 20 s".to_string()),
                    };
                    if let Some(kind) = refusal {
                        *refused.lock().entry(kind).or_default() += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }));
        }
        CounterLoad { senders, ..load }
    }

    /// Sends nothing to instance `index` (its requests go to the next one) until told otherwise.
    pub fn avoid(&self, index: Option<usize>) {
        self.avoid.store(index.unwrap_or(usize::MAX), Ordering::Relaxed);
    }

    /// Requests acknowledged so far.
    pub fn acked_count(&self) -> usize {
        self.acked.lock().len()
    }

    /// Requests not acknowledged whole so far, by kind.
    pub fn refused(&self) -> BTreeMap<String, usize> {
        self.refused.lock().clone()
    }

    /// Stops the senders; the requests acknowledged whole, with their time.
    pub async fn stop(self) -> Vec<(String, i64)> {
        self.stop.store(true, Ordering::Relaxed);
        for sender in self.senders {
            sender.await.unwrap();
        }
        let acked = self.acked.lock().clone();
        acked
    }
}

/// Of the `acked` requests (see [`CounterLoad`]), those whose series' `sum`
/// record in its `window_ms` window is missing or is not 5.
pub fn acked_not_in_store(
    records: &BTreeMap<(String, String, i64, String), &JsonRecord>,
    acked: &[(String, i64)],
    window_ms: i64,
) -> Vec<(String, Option<f64>)> {
    acked
        .iter()
        .filter_map(|(id, at)| {
            let window = at - at.rem_euclid(window_ms);
            let value = records
                .get(&counter_sum_key(id, window))
                .and_then(|record| record.value.as_f64());
            (value != Some(5.0)).then(|| (id.clone(), value))
        })
        .collect()
}

/// Per window of `req:sum` records: (window, sum of the inputs' records, the
/// `req_all:sum` rollup record), where the two differ; and how many windows there were.
pub fn rollups_unlike_inputs(
    records: &BTreeMap<(String, String, i64, String), &JsonRecord>,
) -> (Vec<(i64, f64, Option<f64>)>, usize) {
    let mut inputs: BTreeMap<i64, f64> = BTreeMap::new();
    let mut rollups: BTreeMap<i64, f64> = BTreeMap::new();
    for ((name, _, window, aggregation), record) in records {
        let value = record.value.as_f64().unwrap_or(f64::NAN);
        match (name.as_str(), aggregation.as_str()) {
            ("req:sum", "sum") => *inputs.entry(*window).or_default() += value,
            ("req_all:sum", "sum") => {
                rollups.insert(*window, value);
            }
            _ => {}
        }
    }
    let differ = inputs
        .iter()
        .filter(|(window, sum)| rollups.get(window) != Some(sum))
        .map(|(window, sum)| (*window, *sum, rollups.get(window).copied()))
        .collect();
    (differ, inputs.len())
}

/// What a run under [`CounterLoad`] came to, read from every store of a cluster.
pub struct Accounting {
    /// Requests acknowledged whole.
    pub acked: usize,
    /// Acknowledged requests whose record is missing or not 5.
    pub not_in_store: Vec<(String, Option<f64>)>,
    /// Windows whose rollup differs from its inputs' records, and windows seen.
    pub rollups_differ: Vec<(i64, f64, Option<f64>)>,
    pub windows: usize,
    pub logs: String,
}

impl Accounting {
    /// Reads every store of `cluster` (panics on a record emitted twice) for
    /// the `acked` requests of a load, with windows of `window_ms`.
    pub fn read(cluster: &TestCluster, acked: &[(String, i64)], window_ms: i64) -> Accounting {
        let records = cluster.records();
        let records = by_identity(&records);
        let (rollups_differ, windows) = rollups_unlike_inputs(&records);
        Accounting {
            acked: acked.len(),
            not_in_store: acked_not_in_store(&records, acked, window_ms),
            rollups_differ,
            windows,
            logs: cluster.logs(),
        }
    }

    /// Every acknowledged request once in its own record, at least
    /// `min_windows` windows, and every window's rollup the sum of its inputs' records.
    pub fn assert_exact(&self, what: &str, min_windows: usize) {
        assert!(
            self.not_in_store.is_empty(),
            "{what}: {} of {} acknowledged requests missing or not 5, e.g. {:?}\n{}",
            self.not_in_store.len(),
            self.acked,
            &self.not_in_store[..self.not_in_store.len().min(5)],
            self.logs
        );
        assert!(self.windows >= min_windows, "{what}: only {} windows", self.windows);
        assert!(
            self.rollups_differ.is_empty(),
            "{what}: rollups differ from their inputs (window, inputs, rollup): {:?}\n{}",
            self.rollups_differ,
            self.logs
        );
    }
}
