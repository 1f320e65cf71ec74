//! A real Prometheus server for end-to-end tests: the Debian package
//! (`scripts/test.sh` installs it), started on a free loopback port with a
//! temporary data directory, remote-write receiver and native histograms on,
//! killed when dropped. Plus blocking helpers for its HTTP query API, and a
//! scrape target for it to scrape.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running Prometheus.
pub struct Prometheus {
    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    port: u16,
    child: Child,
    dir: tempfile::TempDir,
    client: reqwest::blocking::Client,
}

/// The `prometheus` binary: `$PROMETHEUS_BIN`, else the Debian package's.
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PROMETHEUS_BIN") {
        return PathBuf::from(path);
    }
    for candidate in ["/usr/bin/prometheus", "/usr/local/bin/prometheus"] {
        if std::path::Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    panic!("prometheus is not installed: run scripts/test.sh (it runs `apt-get install -y prometheus`)");
}

/// A loopback port nobody listens on right now, reserved for this test
/// process (see `common::ports`).
pub fn free_port() -> u16 {
    super::common::ports::unused_port()
}

impl Prometheus {
    /// Starts Prometheus with `config` as prometheus.yml (may be empty) and waits until it is ready.
    pub fn start(config: &str) -> Prometheus {
        Self::start_on(config, free_port())
    }

    /// Same, on a given loopback port.
    pub fn start_on(config: &str, port: u16) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let child = Self::spawn(&dir, port);
        let prometheus = Prometheus {
            url: format!("http://127.0.0.1:{port}"),
            port,
            child,
            dir,
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        };
        prometheus.wait_ready();
        prometheus
    }

    /// Stops it gracefully (SIGTERM) and waits for the exit; its data stays.
    pub fn stop(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let status = self.child.wait().unwrap();
        assert!(
            status.success() || status.code().is_none(),
            "prometheus exit {status:?}: {}",
            self.log()
        );
    }

    /// Starts it again on the same port and data directory and waits until ready.
    pub fn restart(&mut self) {
        self.child = Self::spawn(&self.dir, self.port);
        self.wait_ready();
    }

    fn spawn(dir: &tempfile::TempDir, port: u16) -> Child {
        let config_path = dir.path().join("prometheus.yml");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("prometheus.log"))
            .unwrap();
        Command::new(binary())
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--web.enable-remote-write-receiver")
            .arg("--enable-feature=exemplar-storage,native-histograms")
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus")
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = self.client.get(format!("{}/-/ready", self.url)).send();
            if ready.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            assert!(Instant::now() < deadline, "prometheus not ready: {}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Prometheus' own log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Its remote-write receiver.
    pub fn remote_write_url(&self) -> String {
        format!("{}/api/v1/write", self.url)
    }

    fn get(&self, path: &str, params: &[(&str, String)]) -> Value {
        let response = self
            .client
            .get(format!("{}{path}", self.url))
            .query(params)
            .send()
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let body: Value = serde_json::from_str(&response.text().unwrap()).unwrap();
        assert_eq!(body["status"], "success", "{path} {params:?}: {body}");
        body["data"].clone()
    }

    /// An instant query at `time_ms`; returns the `result` array.
    pub fn query(&self, promql: &str, time_ms: i64) -> Vec<Value> {
        let data = self.get(
            "/api/v1/query",
            &[
                ("query", promql.to_string()),
                ("time", format!("{:.3}", time_ms as f64 / 1000.0)),
            ],
        );
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// The single scalar value of an instant query, if there is exactly one series.
    pub fn query_value(&self, promql: &str, time_ms: i64) -> Option<f64> {
        let result = self.query(promql, time_ms);
        match result.as_slice() {
            [one] => one["value"][1].as_str().and_then(|v| v.parse().ok()),
            _ => None,
        }
    }

    /// Exemplars of `promql` between the two times (ms).
    pub fn query_exemplars(&self, promql: &str, start_ms: i64, end_ms: i64) -> Vec<Value> {
        let data = self.get(
            "/api/v1/query_exemplars",
            &[
                ("query", promql.to_string()),
                ("start", format!("{:.3}", start_ms as f64 / 1000.0)),
                ("end", format!("{:.3}", end_ms as f64 / 1000.0)),
            ],
        );
        data.as_array().cloned().unwrap_or_default()
    }

    /// Polls `check` until it returns `Some`, for at most `timeout`.
    pub fn wait_for<T>(&self, timeout: Duration, mut check: impl FnMut(&Prometheus) -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = check(self) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting; prometheus log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scrape target on a free loopback port, on its own thread: answers each
/// `GET /metrics` with the content type and body `serve` returns, one
/// connection at a time (so a scrape is served whole before the next);
/// stops when dropped.
pub struct ScrapeTarget {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ScrapeTarget {
    pub fn start(serve: impl Fn() -> (&'static str, Vec<u8>) + Send + 'static) -> ScrapeTarget {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(mut stream) = stream {
                        let _ = answer(&mut stream, &serve);
                    }
                }
            })
        };
        ScrapeTarget {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for ScrapeTarget {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept; the thread sees `stop` and returns.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers one HTTP/1.1 request (`GET /metrics`, else 404) and closes the connection.
fn answer(stream: &mut TcpStream, serve: &impl Fn() -> (&'static str, Vec<u8>)) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = Vec::new();
    let mut buffer = [0u8; 2048];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = stream.read(&mut buffer)?;
        if read == 0 || request.len() > 64 * 1024 {
            return Ok(());
        }
        request.extend_from_slice(&buffer[..read]);
    }
    let (status, content_type, body) = if request.starts_with(b"GET /metrics ") {
        let (content_type, body) = serve();
        ("200 OK", content_type, body)
    } else {
        ("404 Not Found", "text/plain", Vec::new())
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(&body)?;
    stream.flush()
}
