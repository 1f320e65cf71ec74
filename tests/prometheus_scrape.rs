//! Real Prometheus -> tailfold, end to end on the real clock: Prometheus
//! scrapes two in-process targets and remote-writes to tailfold, a rollup
//! rule drops `instance`, and one target restarts (its counter resets) in
//! the middle of the run.
//!
//! What is proven, window by window (2 s windows):
//! - **Exact**: every per-instance and rolled-up `_sum` equals the increase
//!   computed from the very samples Prometheus stored (queried back from it),
//!   with Prometheus' reset rule (a running total that went down counts its
//!   new value); `_rate` is `_sum / 2 s`; `_total` is the running sum, so it
//!   never decreases.
//! - **No dip, no spike**: each steady window's rolled-up increase matches
//!   what the two generators really produced between the scrapes (10/s and
//!   20/s times the time between scrape timestamps), within a bound derived
//!   from Prometheus' own `scrape_duration_seconds`, including the window
//!   where target B restarted. A missed reset (the new value dropped) or a
//!   naive difference (a large negative step) would break that bound.
//! - The gauge rollup's `last` is the sum of the inputs' current values, the
//!   rollups carry no `instance` label, the inputs keep their own series, and
//!   nothing Prometheus sent was refused (`too_late` stays 0).

mod common;
mod prometheus;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use prometheus::{Prometheus, ScrapeTarget};
use tailfold::model::DropReason;
use tailfold::sink::JsonRecord;

const WINDOW_MS: i64 = 2_000;
/// Allowed lateness of 2 s windows: Prometheus batches for up to 250 ms
/// (`batch_send_deadline`), so 4 s leaves a loaded machine plenty of room.
const LATENESS_MS: i64 = 4_000;
/// Counter growth of the targets, per second.
const RATE_A: f64 = 10.0;
const RATE_B: f64 = 20.0;
/// Fixed queue depths of the targets.
const DEPTH_A: f64 = 7.0;
const DEPTH_B: f64 = 5.0;
/// Run time before and after the restart of target B.
const BEFORE_RESTART: Duration = Duration::from_secs(10);
const AFTER_RESTART: Duration = Duration::from_secs(10);

const RULES: &str = r#"
defaults:
  storage_policies: ["2s:1h"]
rollup_rules:
  - name: requests-without-instance
    filter: '__name__:demo_requests_total'
    rollup:
      name: demo_requests_total:all
      without: [instance]
      aggregations: [sum, rate, total]
  - name: queue-depth-without-instance
    filter: '__name__:demo_queue_depth'
    rollup:
      name: demo_queue_depth:all
      without: [instance]
      aggregations: [last]
"#;

fn wall_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn window_start(timestamp_ms: i64) -> i64 {
    timestamp_ms.div_euclid(WINDOW_MS) * WINDOW_MS
}

// ---------------------------------------------------------------------------
// Scrape targets: a tiny HTTP server per target, on its own thread.

/// The counter of one target: `floor(rate * seconds since start)`, computed
/// when a scrape is served.
struct CounterClock {
    started: Instant,
    restart_after_next_scrape: bool,
    restarted_at_ms: Option<i64>,
}

struct TargetState {
    per_second: f64,
    queue_depth: f64,
    counter: Mutex<CounterClock>,
}

impl TargetState {
    /// The exposition of one scrape. A pending restart happens right after
    /// the value is read: the process "serves its last scrape and restarts",
    /// so no increment falls between the last scrape before the restart and
    /// the restart, where no scraper could ever see it. Every increment the
    /// generator makes is then observable, and "no dip" can be checked
    /// against the generator itself rather than with a one-interval slack.
    fn exposition(&self) -> String {
        let mut counter = self.counter.lock().unwrap();
        let now = Instant::now();
        let value = (self.per_second * now.duration_since(counter.started).as_secs_f64()).floor();
        if counter.restart_after_next_scrape {
            counter.restart_after_next_scrape = false;
            counter.started = now;
            counter.restarted_at_ms = Some(wall_ms());
        }
        format!(
            "# HELP demo_requests_total Requests served.\n# TYPE demo_requests_total counter\n\
             demo_requests_total{{path=\"/a\"}} {value}\n\
             # HELP demo_queue_depth Requests waiting.\n# TYPE demo_queue_depth gauge\n\
             demo_queue_depth {}\n",
            self.queue_depth
        )
    }
}

/// A scrape target serving the text exposition of its state.
struct Target {
    server: ScrapeTarget,
    state: Arc<TargetState>,
}

impl Target {
    fn start(per_second: f64, queue_depth: f64) -> Target {
        let state = Arc::new(TargetState {
            per_second,
            queue_depth,
            counter: Mutex::new(CounterClock {
                started: Instant::now(),
                restart_after_next_scrape: false,
                restarted_at_ms: None,
            }),
        });
        let serving = Arc::clone(&state);
        let server = ScrapeTarget::start(move || ("text/plain; version=0.0.4", serving.exposition().into_bytes()));
        Target { server, state }
    }

    fn instance(&self) -> String {
        self.server.addr.to_string()
    }

    /// Asks for a restart right after the next scrape and returns its wall-clock time.
    fn restart(&self, timeout: Duration) -> i64 {
        self.state.counter.lock().unwrap().restart_after_next_scrape = true;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = self.state.counter.lock().unwrap().restarted_at_ms {
                return at;
            }
            assert!(Instant::now() < deadline, "target {} was not scraped", self.server.addr);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

// ---------------------------------------------------------------------------
// Reading back what Prometheus stored and what tailfold emitted.

/// Raw samples `(timestamp_ms, value)` of `selector` per `instance`, at or before `at_ms`.
fn raw_samples(prometheus: &Prometheus, selector: &str, at_ms: i64) -> BTreeMap<String, Vec<(i64, f64)>> {
    let result = prometheus.query(&format!("{selector}[10m]"), at_ms);
    let mut out = BTreeMap::new();
    for series in &result {
        let instance = series["metric"]["instance"]
            .as_str()
            .expect("instance label")
            .to_string();
        let samples: Vec<(i64, f64)> = series["values"]
            .as_array()
            .expect("a range vector")
            .iter()
            .map(|pair| {
                let seconds = pair[0].as_f64().expect("timestamp");
                let value = pair[1].as_str().expect("value").parse::<f64>().expect("number");
                ((seconds * 1000.0).round() as i64, value)
            })
            .collect();
        assert!(
            out.insert(instance, samples).is_none(),
            "{selector}: two series per instance"
        );
    }
    out
}

/// Per-point increases of a running total, Prometheus' way: the first point
/// is a baseline (0), a value lower than the one before is a reset and
/// counts whole. This is what tailfold's `cumulative` stage promises.
fn increases(samples: &[(i64, f64)]) -> Vec<(i64, f64)> {
    let mut out = Vec::with_capacity(samples.len());
    for (index, &(timestamp_ms, value)) in samples.iter().enumerate() {
        let increase = match index.checked_sub(1).map(|before| samples[before].1) {
            None => 0.0,
            Some(previous) if value < previous => value,
            Some(previous) => value - previous,
        };
        out.push((timestamp_ms, increase));
    }
    out
}

/// Increases summed per window, for windows ending at or before `end_ms`.
fn per_window(increases: &[(i64, f64)], end_ms: i64) -> BTreeMap<i64, f64> {
    let mut out = BTreeMap::new();
    for &(timestamp_ms, increase) in increases {
        let start = window_start(timestamp_ms);
        if start + WINDOW_MS <= end_ms {
            *out.entry(start).or_insert(0.0) += increase;
        }
    }
    out
}

/// Values of the records named `name` (and matching `extra` labels) per
/// window start, for windows ending at or before `end_ms`; one record per window.
fn series_values(records: &[JsonRecord], name: &str, extra: &[(&str, &str)], end_ms: i64) -> BTreeMap<i64, f64> {
    let mut out = BTreeMap::new();
    for record in records.iter().filter(|r| r.name == name && r.window_end_ms <= end_ms) {
        if !extra
            .iter()
            .all(|(n, v)| record.labels.get(*n).map(String::as_str) == Some(*v))
        {
            continue;
        }
        assert!(!record.partial, "partial record before shutdown: {record:?}");
        assert_eq!(record.window_end_ms - record.window_start_ms, WINDOW_MS, "{record:?}");
        let previous = out.insert(record.window_start_ms, value(record));
        assert!(
            previous.is_none(),
            "two records of {name} {extra:?} at {}",
            record.window_start_ms
        );
    }
    out
}

// ---------------------------------------------------------------------------

#[test]
fn prometheus_scrapes_and_remote_writes_rollups_without_dips_across_a_counter_reset() {
    let began = Instant::now();
    // A plain test with its own runtime: the Prometheus harness uses blocking
    // reqwest, which must not run inside an async context.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let target_a = Target::start(RATE_A, DEPTH_A);
    let target_b = Target::start(RATE_B, DEPTH_B);
    let (a, b) = (target_a.instance(), target_b.instance());
    let rates: BTreeMap<String, f64> = [(a.clone(), RATE_A), (b.clone(), RATE_B)].into();

    let mut service = runtime.block_on(start_service_real_clock(
        RULES,
        200,
        &format!("engine: {{lateness_ms: {{\"2s\": {LATENESS_MS}}}}}"),
    ));
    let config = format!(
        r#"
global:
  scrape_interval: 1s
  scrape_timeout: 900ms
scrape_configs:
  - job_name: demo
    static_configs:
      - targets: ["{a}", "{b}"]
remote_write:
  - url: http://{}/api/v1/write
    queue_config:
      batch_send_deadline: 250ms
      min_backoff: 50ms
      max_backoff: 1s
"#,
        service.handle().http_addr()
    );
    let prometheus = Prometheus::start(&config);
    prometheus.wait_for(Duration::from_secs(60), |p| {
        (p.query("up{job=\"demo\"} == 1", wall_ms()).len() == 2).then_some(())
    });

    std::thread::sleep(BEFORE_RESTART);
    let restarted_at_ms = target_b.restart(Duration::from_secs(30));
    std::thread::sleep(AFTER_RESTART);
    let end_ms = wall_ms();

    // Every window ending by `end_ms` is due once its lateness has passed;
    // the flush loop closes it by itself, `flush_now` makes sure.
    while wall_ms() < end_ms + LATENESS_MS + 1_000 {
        std::thread::sleep(Duration::from_millis(100));
    }
    runtime.block_on(service.handle().flush_now());
    let records = service.records();
    let counters = raw_samples(&prometheus, "demo_requests_total{job=\"demo\"}", end_ms);
    let depths = raw_samples(&prometheus, "demo_queue_depth{job=\"demo\"}", end_ms);
    let durations: BTreeMap<String, BTreeMap<i64, f64>> =
        raw_samples(&prometheus, "scrape_duration_seconds{job=\"demo\"}", end_ms)
            .into_iter()
            .map(|(instance, samples)| (instance, samples.into_iter().collect()))
            .collect();
    let telemetry = service.handle().telemetry().snapshot();
    let progress = telemetry.progress_line();
    let context = format!("tailfold: {progress}\nprometheus log:\n{}", prometheus.log());

    // Nothing Prometheus sent was refused; in particular nothing came too late.
    assert_eq!(telemetry.ingest.rejected_for(DropReason::TooLate), 0, "{context}");
    assert_eq!(telemetry.ingest.rejected_total(), 0, "{context}");
    assert!(telemetry.ingest.accepted > 0, "{context}");
    let expected_instances: BTreeSet<&String> = [&a, &b].into();
    assert_eq!(
        counters.keys().collect::<BTreeSet<_>>(),
        expected_instances,
        "{context}"
    );
    assert_eq!(depths.keys().collect::<BTreeSet<_>>(), expected_instances, "{context}");

    // Exactly one reset, in B, seen by Prometheus after the restart.
    for (instance, samples) in &counters {
        let resets: Vec<_> = samples.windows(2).filter(|pair| pair[1].1 < pair[0].1).collect();
        let expected = if *instance == b { 1 } else { 0 };
        assert_eq!(resets.len(), expected, "{instance}: resets {resets:?}\n{context}");
    }
    let reset_ms = counters[&b]
        .windows(2)
        .find(|pair| pair[1].1 < pair[0].1)
        .map(|pair| pair[1].0)
        .unwrap();
    assert!(
        reset_ms > restarted_at_ms - 1_000,
        "reset at {reset_ms}, restart at {restarted_at_ms}"
    );

    // 1. Exact, per instance: the input series keep their own outputs (defaults: sum, rate).
    let mut expected_all: BTreeMap<i64, f64> = BTreeMap::new();
    for (instance, samples) in &counters {
        let expected = per_window(&increases(samples), end_ms);
        let got = series_values(&records, "demo_requests_total:sum", &[("instance", instance)], end_ms);
        assert_eq!(got, expected, "per-instance sums of {instance}\n{context}");
        let rates = series_values(&records, "demo_requests_total:rate", &[("instance", instance)], end_ms);
        assert_eq!(
            rates.keys().collect::<Vec<_>>(),
            got.keys().collect::<Vec<_>>(),
            "{instance}"
        );
        assert!(
            got.iter().all(|(start, sum)| rates[start] == sum / 2.0),
            "{instance}: {rates:?}"
        );
        for (start, sum) in &expected {
            *expected_all.entry(*start).or_insert(0.0) += sum;
        }
    }

    // 1. Exact, rolled up: `_sum`, `_rate = _sum / 2 s`, `_total` the running sum.
    let sums = series_values(&records, "demo_requests_total:all:sum", &[], end_ms);
    let rate_records = series_values(&records, "demo_requests_total:all:rate", &[], end_ms);
    let totals = series_values(&records, "demo_requests_total:all_total", &[], end_ms);
    assert_eq!(sums, expected_all, "rolled-up sums\n{context}");
    assert_eq!(rate_records.keys().collect::<Vec<_>>(), sums.keys().collect::<Vec<_>>());
    assert_eq!(totals.keys().collect::<Vec<_>>(), sums.keys().collect::<Vec<_>>());
    let mut running = 0.0;
    let mut last_total = f64::NEG_INFINITY;
    for (start, sum) in &sums {
        assert_eq!(
            rate_records[start],
            sum / (WINDOW_MS as f64 / 1000.0),
            "rate at {start}"
        );
        running += sum;
        assert_eq!(totals[start], running, "total at {start}");
        assert!(totals[start] >= last_total, "total went down at {start}: {totals:?}");
        last_total = totals[start];
    }

    // 2. No dip, no spike: compare with the generators. A target's increase
    // over a window is `v(last scrape in it) - v(last scrape before it)`, and
    // its value is `floor(rate * t)` at the moment the scrape is served, so
    // the increase is `rate * (span between the two scrape timestamps)` up to:
    // - the flooring: under 1 per stretch of uninterrupted counting, 2 when the
    //   restart splits the span in two (the restart follows a scrape exactly);
    // - serve time vs. timestamp: Prometheus stamps a scrape with its start
    //   (snapped to the interval grid when within 2 ms), and the target serves
    //   within `scrape_duration_seconds` of that start, so each end of the span
    //   moves by at most that duration plus 2 ms (10 ms allowed, for clock slew).
    // That is a few percent of the 60 per window (30/s) on a quiet machine and
    // grows only with scrape durations Prometheus measured, never with
    // remote-write or flush delays. A missed reset would lose ~20 (B's first
    // second after the restart) and a naive difference would go ~-200 negative,
    // both far outside it. Windows without a scrape of each target before them
    // (the start) are skipped; the end is cut at `end_ms` above.
    let mut steady = Vec::new();
    let mut table = String::from("window_start  sum  expected  slack  rate/s\n");
    for (&start, &sum) in &sums {
        let mut expected = 0.0;
        let mut slack = 0.0;
        let mut complete = true;
        for (instance, samples) in &counters {
            let last = samples.iter().rev().find(|(t, _)| window_start(*t) == start);
            let before = samples.iter().rev().find(|(t, _)| *t < start);
            let (Some(&(last_ms, _)), Some(&(before_ms, _))) = (last, before) else {
                complete = false;
                continue;
            };
            let rate = rates[instance];
            let duration = |t: i64| durations[instance].get(&t).copied().unwrap_or(0.5);
            let floor_slack = if before_ms < reset_ms && reset_ms <= last_ms {
                2.0
            } else {
                1.0
            };
            expected += rate * (last_ms - before_ms) as f64 / 1000.0;
            slack += floor_slack + rate * (duration(last_ms) + duration(before_ms) + 0.010);
        }
        table.push_str(&format!(
            "{start}  {sum}  {expected:.1}  {slack:.2}  {:.1}{}\n",
            rate_records[&start],
            if window_start(reset_ms) == start {
                "  <- reset"
            } else {
                ""
            }
        ));
        if complete {
            steady.push((start, sum, expected, slack));
        }
    }
    eprintln!("restart of B at {restarted_at_ms}, first scrape after it at {reset_ms}\n{table}");
    assert!(steady.len() >= 6, "too few steady windows\n{table}\n{context}");
    assert!(
        steady.iter().any(|(start, ..)| *start == window_start(reset_ms)),
        "the reset window is not among the steady ones\n{table}"
    );
    assert!(
        steady.iter().any(|(start, ..)| *start > window_start(reset_ms)),
        "no window after the reset\n{table}"
    );
    for (start, sum, expected, slack) in &steady {
        assert!(
            (sum - expected).abs() <= *slack,
            "window {start}: increase {sum}, generators made {expected:.1} +- {slack:.2}\n{table}\n{context}"
        );
    }
    // The test has teeth: in the reset window, dropping B's first increase
    // after the restart (a dip) or taking the naive difference (a negative
    // step) would both have left the bound.
    let (before, after) = counters[&b]
        .windows(2)
        .find(|pair| pair[1].1 < pair[0].1)
        .map(|pair| (pair[0].1, pair[1].1))
        .unwrap();
    let &(_, sum, expected, slack) = steady
        .iter()
        .find(|(start, ..)| *start == window_start(reset_ms))
        .unwrap();
    assert!(
        sum - after < expected - slack,
        "a dropped reset would go unnoticed\n{table}"
    );
    assert!(
        sum - before < expected - slack,
        "a naive difference would go unnoticed\n{table}"
    );

    // The gauge rollup: `last` sums each instance's latest value in the window.
    let depth_of: BTreeMap<&String, f64> = [(&a, DEPTH_A), (&b, DEPTH_B)].into();
    let mut expected_depth: BTreeMap<i64, f64> = BTreeMap::new();
    for (instance, samples) in &depths {
        let windows: BTreeSet<i64> = samples
            .iter()
            .inspect(|(_, v)| assert_eq!(*v, depth_of[instance]))
            .map(|(t, _)| window_start(*t))
            .filter(|start| start + WINDOW_MS <= end_ms)
            .collect();
        for start in windows {
            *expected_depth.entry(start).or_insert(0.0) += depth_of[instance];
        }
    }
    let got_depth = series_values(&records, "demo_queue_depth:all", &[], end_ms);
    assert_eq!(got_depth, expected_depth, "queue depth rollup\n{context}");
    assert!(
        got_depth.values().filter(|v| **v == DEPTH_A + DEPTH_B).count() >= steady.len(),
        "{got_depth:?}"
    );
    for instance in [&a, &b] {
        let own = series_values(&records, "demo_queue_depth", &[("instance", instance)], end_ms);
        assert!(
            own.values().all(|v| *v == depth_of[instance]) && !own.is_empty(),
            "{instance}: {own:?}"
        );
    }

    // The rollups dropped `instance` and kept the rest; the inputs kept theirs.
    for record in records.iter().filter(|r| r.name.contains(":all")) {
        let names: Vec<&str> = record.labels.keys().map(String::as_str).collect();
        let expected: &[&str] = if record.name.starts_with("demo_requests_total") {
            &["__name__", "job", "path"]
        } else {
            &["__name__", "job"]
        };
        assert_eq!(names, expected, "{record:?}");
        assert_eq!(record.labels["job"], "demo");
    }
    let instances: BTreeSet<&str> = records
        .iter()
        .filter(|r| r.name == "demo_requests_total:sum")
        .map(|r| r.labels["instance"].as_str())
        .collect();
    assert_eq!(instances, [a.as_str(), b.as_str()].into());

    drop(prometheus);
    runtime.block_on(service.shutdown());
    eprintln!("prometheus_scrape: {:.1} s", began.elapsed().as_secs_f64());
}
