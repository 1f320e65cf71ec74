//! Test harness: a tailfold service started in-process on a free loopback
//! port with a manual clock (or the real one) and a temporary data directory,
//! a real gRPC client, and readers for what the store and selection files hold.

#![allow(dead_code)]

pub mod cluster;
pub mod etcd;
pub mod ports;
pub mod process;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tailfold::api::v1;
use tailfold::clock::{Clock, ManualClock, SystemClock};
use tailfold::config::ServiceSettings;
use tailfold::rules::RuleSet;
use tailfold::server::{start, ServiceHandle};
use tailfold::sink::selections::SelectionRecord;
use tailfold::sink::JsonRecord;

pub struct TestService {
    pub handle: Option<ServiceHandle>,
    /// The manual clock the service reads; unused when `real_clock`.
    pub clock: Arc<ManualClock>,
    /// The service reads the system clock (`start_service_real_clock`).
    pub real_clock: bool,
    pub data_dir: tempfile::TempDir,
    pub client: v1::ingest_client::IngestClient<tonic::transport::Channel>,
}

/// A test service's shutdown flushes every open window; ops_profile's 50,000
/// series took over the default 10 s in a debug build on a slow machine, and
/// a test must not fail because the machine is slow.
const TEST_SHUTDOWN_GRACE_MS: u64 = 60_000;

/// Starts a service with `rules` (YAML) at clock time `now_ms`.
pub async fn start_service(rules: &str, now_ms: i64) -> TestService {
    start_service_with(rules, now_ms, "").await
}

/// Same, with extra process config YAML.
pub async fn start_service_with(rules: &str, now_ms: i64, extra_config: &str) -> TestService {
    let clock = Arc::new(ManualClock::new(now_ms));
    // The manual clock only moves when told to: windows flush on `flush_at`, not by themselves.
    let mut service = start_service_on(rules, clock.clone(), 3_600_000, extra_config).await;
    service.clock = clock;
    service.real_clock = false;
    service
}

/// Starts a service on the system clock whose flush loop looks for due
/// windows every `flush_interval_ms`, so windows flush by themselves (as in
/// production); `handle().flush_now()` forces one. For peers that stamp
/// samples with real time (a real Prometheus).
pub async fn start_service_real_clock(rules: &str, flush_interval_ms: u64, extra_config: &str) -> TestService {
    start_service_on(rules, Arc::new(SystemClock), flush_interval_ms, extra_config).await
}

async fn start_service_on(
    rules: &str,
    clock: Arc<dyn Clock>,
    flush_interval_ms: u64,
    extra_config: &str,
) -> TestService {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "grpc: {{listen: \"127.0.0.1:0\"}}\nhttp: {{listen: \"127.0.0.1:0\"}}\ndata_dir: {}\nflush: {{interval_ms: {flush_interval_ms}, progress_interval_ms: 0, shutdown_grace_ms: {TEST_SHUTDOWN_GRACE_MS}}}\n{extra_config}",
        data_dir.path().display()
    );
    let settings = ServiceSettings::parse(&config, Path::new("test/tailfold.yaml")).expect("config");
    let rules = RuleSet::parse(rules, "test-rules.yaml").expect("rules");
    let handle = start(settings, rules, clock).await.expect("start");
    let client = v1::ingest_client::IngestClient::connect(format!("http://{}", handle.grpc_addr()))
        .await
        .expect("connect");
    TestService {
        handle: Some(handle),
        clock: Arc::new(ManualClock::new(0)),
        real_clock: true,
        data_dir,
        client,
    }
}

impl TestService {
    pub fn handle(&self) -> &ServiceHandle {
        self.handle.as_ref().expect("running")
    }

    pub async fn write(&mut self, series: Vec<v1::Series>) -> Result<v1::WriteResponse, tonic::Status> {
        self.client
            .write(v1::WriteRequest { series })
            .await
            .map(|r| r.into_inner())
    }

    /// Moves the clock to `now_ms`, flushes what is due and waits for the sinks.
    pub async fn flush_at(&self, now_ms: i64) {
        assert!(
            !self.real_clock,
            "flush_at needs the manual clock; use handle().flush_now()"
        );
        self.clock.set(now_ms);
        self.handle().flush_now().await;
    }

    pub fn records(&self) -> Vec<JsonRecord> {
        read_json_lines(&self.data_dir.path().join("store"))
    }

    pub fn selections(&self) -> Vec<SelectionRecord> {
        read_json_lines(&self.data_dir.path().join("selections"))
    }

    pub async fn shutdown(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.shutdown().await.expect("clean shutdown");
        }
    }
}

/// Every JSON line of every `.jsonl` file below `dir`.
pub fn read_json_lines<T: serde::de::DeserializeOwned>(dir: &Path) -> Vec<T> {
    let mut files = Vec::new();
    collect_files(dir, &mut files);
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read segment");
        for line in text.lines() {
            out.push(serde_json::from_str(line).unwrap_or_else(|e| panic!("{}: {e}: {line}", file.display())));
        }
    }
    out
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "jsonl") {
            out.push(path);
        }
    }
}

pub fn label(name: &str, value: &str) -> v1::Label {
    v1::Label {
        name: name.to_string(),
        value: value.to_string(),
    }
}

pub fn labels(pairs: &[(&str, &str)]) -> Vec<v1::Label> {
    pairs.iter().map(|(n, v)| label(n, v)).collect()
}

pub fn point(value: f64, timestamp_ms: i64) -> v1::Point {
    v1::Point {
        value,
        timestamp_ms: Some(timestamp_ms),
        trace_id: vec![].into(),
        span_id: vec![].into(),
    }
}

pub fn traced_point(value: f64, timestamp_ms: i64, trace_id: [u8; 16], span_id: [u8; 8]) -> v1::Point {
    v1::Point {
        value,
        timestamp_ms: Some(timestamp_ms),
        trace_id: trace_id.to_vec().into(),
        span_id: span_id.to_vec().into(),
    }
}

pub fn series(pairs: &[(&str, &str)], kind: v1::Kind, points: Vec<v1::Point>) -> v1::Series {
    v1::Series {
        labels: labels(pairs),
        kind: kind as i32,
        points,
    }
}

/// Records whose labels include every pair in `pairs`; a record with a
/// `quantile` or `threshold` label only matches when `pairs` names that label.
pub fn find<'a>(records: &'a [JsonRecord], pairs: &[(&str, &str)]) -> Vec<&'a JsonRecord> {
    records
        .iter()
        .filter(|record| {
            pairs
                .iter()
                .all(|(n, v)| record.labels.get(*n).map(String::as_str) == Some(*v))
        })
        .filter(|record| {
            ["quantile", "threshold"]
                .iter()
                .all(|extra| !record.labels.contains_key(*extra) || pairs.iter().any(|(n, _)| n == extra))
        })
        .collect()
}

/// The single record matching `pairs` in window `window_start_ms`.
pub fn one<'a>(records: &'a [JsonRecord], pairs: &[(&str, &str)], window_start_ms: i64) -> &'a JsonRecord {
    let found: Vec<_> = find(records, pairs)
        .into_iter()
        .filter(|r| r.window_start_ms == window_start_ms)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one record for {pairs:?} at {window_start_ms}, got {found:#?}"
    );
    found[0]
}

pub fn value(record: &JsonRecord) -> f64 {
    record
        .value
        .as_f64()
        .unwrap_or_else(|| panic!("not a number: {record:?}"))
}

/// Exact nearest-rank quantile: the value at rank max(1, ceil(q*n)).
pub fn exact_quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
    sorted[rank - 1]
}

/// Sums bucket counts of JSON histograms (same scale required).
pub fn merged_buckets(histograms: &[&serde_json::Value]) -> (i64, BTreeMap<i64, u64>) {
    let mut scale = None;
    let mut buckets = BTreeMap::new();
    for histogram in histograms {
        let this = histogram["scale"].as_i64().expect("scale");
        assert_eq!(*scale.get_or_insert(this), this, "inputs at different scales");
        for pair in histogram["positive"].as_array().expect("positive") {
            *buckets.entry(pair[0].as_i64().unwrap()).or_default() += pair[1].as_u64().unwrap();
        }
    }
    (scale.unwrap_or(0), buckets)
}

/// Runs tests/otlp/export.py and returns its JSON lines; fails the test with its stderr.
pub async fn otlp_export(args: Vec<String>) -> Vec<serde_json::Value> {
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/otlp/export.py"))
            .args(&args)
            .output()
            .expect("python3 runs (scripts/test.sh installs the OpenTelemetry SDK)")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "export.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}
