//! The real `tailfold` binary as a child process on a data directory: started
//! with a config (its log in `run-N.log` there), stopped by a signal, and
//! the write-ahead log replay it reported read back from that log.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_tailfold");

/// A running `tailfold run`; killed if dropped while running.
pub struct Running {
    pub child: Child,
    /// Kept open: the service's stdout must not hit a closed pipe.
    stdout: BufReader<ChildStdout>,
}

impl Running {
    /// The HTTP listener's address (the line after the gRPC one; read once).
    pub fn http_addr(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim()
            .strip_prefix("tailfold: listening on http ")
            .unwrap_or_else(|| panic!("unexpected second line {line:?}"))
            .to_string()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `config` to `dir/tailfold.yaml` and runs the binary on it (run
/// number `run` names its log); returns it and its gRPC address.
pub fn start_run(dir: &Path, run: usize, config: &str) -> (Running, String) {
    std::fs::write(dir.join("tailfold.yaml"), config).unwrap();
    let log = std::fs::File::create(dir.join(format!("run-{run}.log"))).unwrap();
    let mut child = Command::new(BINARY)
        .args(["run", "-c"])
        .arg(dir.join("tailfold.yaml"))
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn tailfold run");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let grpc = line
        .trim()
        .strip_prefix("tailfold: listening on grpc ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}; see {}/run-{run}.log", dir.display()))
        .to_string();
    (Running { child, stdout }, grpc)
}

/// Sends `signal` (`-TERM`, `-INT`) and waits for a clean exit.
pub fn stop_with(mut running: Running, signal: &str, dir: &Path, run: usize) {
    let status = Command::new("kill")
        .args([signal, &running.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = running.child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "tailfold did not exit after kill {signal}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit {exit:?}; see {}/run-{run}.log", dir.display());
}

/// Points the replay at the start of run `run` folded into open windows again, from its log.
pub fn replayed(dir: &Path, run: usize) -> u64 {
    let path = dir.join(format!("run-{run}.log"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(&path).unwrap();
        if let Some(line) = log.lines().find(|line| line.contains("write-ahead log replayed")) {
            let line = strip_ansi(line);
            return line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("accepted="))
                .and_then(|count| count.parse().ok())
                .unwrap_or_else(|| panic!("{line}"));
        }
        assert!(Instant::now() < deadline, "no replay line in {}", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The log line without terminal colour codes (`ESC [ ... m`).
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
