//! The `tailfold` binary as a newcomer runs it: the shipped rules
//! (`config/rules.yaml`), `tailfold loadgen` sending real traffic, quantiles
//! with exemplars in the data directory within two windows, and SIGTERM
//! flushing every open window before a clean exit.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tailfold::sink::JsonRecord;

const BINARY: &str = env!("CARGO_BIN_EXE_tailfold");

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `tailfold run` on a copy of the shipped config with a free port and
/// a temporary data directory; returns the process and its gRPC address.
fn start_binary(data_dir: &Path) -> (Running, String, String) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = std::fs::read_to_string(repo.join("config/tailfold.yaml")).unwrap();
    let config = shipped
        .replace("listen: 127.0.0.1:4770", "listen: 127.0.0.1:0")
        .replace("listen: 127.0.0.1:4771", "listen: 127.0.0.1:0")
        .replace("data_dir: data ", &format!("data_dir: {} ", data_dir.display()))
        .replace(
            "rules_file: rules.yaml",
            &format!("rules_file: {}", repo.join("config/rules.yaml").display()),
        );
    assert_ne!(config, shipped);
    let config_path = data_dir.join("tailfold.yaml");
    std::fs::write(&config_path, config).unwrap();

    let mut child = Command::new(BINARY)
        .args(["run", "-c"])
        .arg(&config_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tailfold run");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut read = |prefix: &str| {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        line.trim()
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("expected {prefix:?}, got {line:?}"))
            .to_string()
    };
    let grpc = read("tailfold: listening on grpc ");
    let http = read("tailfold: listening on http ");
    (Running(child), grpc, http)
}

#[test]
fn loadgen_traffic_lands_as_quantiles_with_exemplars_and_sigterm_flushes() {
    let data_dir = tempfile::tempdir().unwrap();
    let (mut service, address, http_address) = start_binary(data_dir.path());

    let loadgen = Command::new(BINARY)
        .args([
            "loadgen",
            "--target",
            &format!("http://{address}"),
            "--series",
            "200",
            "--rate",
            "5000",
            "--duration",
            "12s",
        ])
        .output()
        .expect("run loadgen");
    let report = String::from_utf8_lossy(&loadgen.stdout);
    assert!(
        loadgen.status.success(),
        "loadgen failed: {report}\n{}",
        String::from_utf8_lossy(&loadgen.stderr)
    );
    assert!(
        report.contains("accounted: every point sent was accepted or rejected"),
        "{report}"
    );

    // The same load over Prometheus remote write: every request answered 2xx, and the
    // service's own counters (read from /metrics) account for every sample: these
    // series were just sent as other kinds over gRPC, so most are kind conflicts.
    let remote = Command::new(BINARY)
        .args([
            "loadgen",
            "--protocol",
            "remote-write",
            "--target",
            &format!("http://{http_address}"),
        ])
        .args(["--series", "50", "--rate", "2000", "--duration", "2s"])
        .output()
        .expect("run loadgen over remote write");
    let remote_report = String::from_utf8_lossy(&remote.stdout);
    assert!(remote.status.success(), "{remote_report}");
    assert!(remote_report.contains("failed=0"), "{remote_report}");
    assert!(remote_report.contains("kind_conflict"), "{remote_report}");
    assert!(
        remote_report.contains("accounted: every point sent was accepted or rejected"),
        "{remote_report}"
    );
    assert!(!remote_report.contains("sent=0 "), "{remote_report}");

    // Within two 10 s windows (plus 5 s lateness) the store holds quantiles with exemplars.
    let deadline = Instant::now() + Duration::from_secs(40);
    let store = data_dir.path().join("store");
    let quantiles_with_exemplars = loop {
        let records: Vec<JsonRecord> = common::read_json_lines(&store);
        let found: Vec<JsonRecord> = records
            .into_iter()
            .filter(|r| {
                r.name == "http_request_duration_seconds:quantile"
                    && r.labels.contains_key("quantile")
                    && r.exemplar.is_some()
            })
            .collect();
        if !found.is_empty() || Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        !quantiles_with_exemplars.is_empty(),
        "no quantile with an exemplar under {}",
        store.display()
    );
    for record in &quantiles_with_exemplars {
        let exemplar = record.exemplar.as_ref().unwrap();
        assert_eq!(exemplar.trace_id.len(), 32);
        assert!(exemplar.timestamp_ms >= record.window_start_ms && exemplar.timestamp_ms < record.window_end_ms);
    }
    assert!(store.join("10s_2d").is_dir());

    // SIGTERM: the open windows (the 1m ones at least) are flushed, those not
    // yet ended marked partial, and the exit is clean.
    let sigterm_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let status = Command::new("kill")
        .args(["-TERM", &service.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = service.0.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "tailfold did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(exit.success(), "exit status {exit:?}");
    let records: Vec<JsonRecord> = common::read_json_lines(&store);
    // Every 1m window is flushed by now, and marked partial exactly when it
    // had not ended at the SIGTERM (a run straddling a minute boundary may
    // have its traffic all in a window that ended before the signal).
    let minute_windows: Vec<&JsonRecord> = records.iter().filter(|r| r.policy == "1m:40d").collect();
    assert!(!minute_windows.is_empty(), "no 1m window flushed at shutdown");
    for record in minute_windows {
        if record.window_end_ms > sigterm_ms + 1_000 {
            assert!(
                record.partial,
                "a 1m window still open at shutdown is not marked partial: {record:?}"
            );
        } else if record.window_end_ms < sigterm_ms - 1_000 {
            assert!(
                !record.partial,
                "a 1m window that had ended is marked partial: {record:?}"
            );
        }
    }
    let selections: Vec<tailfold::sink::selections::SelectionRecord> =
        common::read_json_lines(&data_dir.path().join("selections"));
    assert!(!selections.is_empty());
}

#[test]
fn run_refuses_a_broken_config_with_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "grpc: {listen: \"not an address\"}\n").unwrap();
    let output = Command::new(BINARY).args(["run", "-c"]).arg(&path).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.yaml: field grpc.listen: \"not an address\""),
        "{stderr}"
    );
}

#[test]
fn a_busy_port_names_its_listener_and_config_key_and_a_log_file_carries_no_colour() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    std::fs::write(dir.path().join("rules.yaml"), "").unwrap();
    let path = dir.path().join("tailfold.yaml");
    std::fs::write(
        &path,
        format!(
            "grpc: {{listen: \"127.0.0.1:0\"}}\nhttp: {{listen: \"127.0.0.1:{port}\"}}\ndata_dir: {}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    // stderr is a pipe here, as a file would be.
    let output = Command::new(BINARY).args(["run", "-c"]).arg(&path).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port} (config key http.listen)")),
        "{stderr}"
    );
    assert!(stderr.contains("another process holds this port"), "{stderr}");

    // Once the port is free it starts, logging to a file without colour codes.
    drop(busy);
    let log_path = dir.path().join("tailfold.log");
    let mut child = Running(
        Command::new(BINARY)
            .args(["run", "-c"])
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("tailfold: listening on"), "{line}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = std::fs::read_to_string(&log_path).unwrap();
        if log.contains("tailfold started") || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(log.contains("tailfold started"), "{log}");
    assert!(!log.contains('\x1b'), "colour codes in a log file: {log:?}");
}
