//! Two real Prometheus servers with tailfold between them, read with the
//! PromQL the README gives: Prometheus A scrapes a target that serves a
//! counter and a native histogram (protobuf exposition), keeps only the
//! target's series with `write_relabel_configs` and remote-writes them to
//! tailfold, which remote-writes its outputs (2 s windows) to Prometheus B.
//!
//! The target adds a batch of observations after each scrape it serves, so
//! what each scrape exposed is known exactly and A's stored counter says how
//! many batches each scrape held. What B must answer:
//! - the cumulative outputs (`demo_requests_total`, `demo_latency_seconds_count`
//!   and `_sum`) start with a zero 1 ms after their first window's start and
//!   then equal, at every window end, exactly what the scrapes before it held;
//! - `rate()` of each over whole windows equals what those windows received
//!   per second, which is the sent rate to within one scrape;
//! - `rate(x_sum)/rate(x_count)` over the whole run is the true mean of every
//!   observation sent, the first window's included;
//! - `histogram_quantile(0.99, increase(x[range]))` over the whole run lies in
//!   the bucket of the exact p99 of every observation sent;
//! - the per-window series (`x:count`, `x:quantile`, `x:above`, `requests:sum`)
//!   hold each window's own values, and `sum_over_time` of `x:above` counts
//!   every observation above the threshold.

mod common;
mod prometheus;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{Prometheus, ScrapeTarget};
use prost::Message;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use rand_distr::{Distribution, LogNormal};
use tailfold::model::DropReason;

const WINDOW_MS: i64 = 2_000;
const LATENESS_MS: i64 = 4_000;
/// Observations the target adds after each scrape (and its counter's step).
const BATCH: usize = 25;
/// Native histogram schema the target exposes: buckets 2^(1/8) wide.
const SCHEMA: i32 = 3;
/// A bucket boundary at every schema, so `above()` is exact.
const THRESHOLD: f64 = 0.25;

const RULES: &str = r#"
defaults:
  storage_policies: ["2s:1h"]
mapping_rules:
  - name: requests
    filter: '__name__:demo_requests_total'
    aggregations: [sum, rate, total]
  - name: latency
    filter: '__name__:demo_latency_seconds'
    aggregations: [count, sum, p99, above(0.25), total, histogram]
"#;

fn wall_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn window_start(timestamp_ms: i64) -> i64 {
    timestamp_ms.div_euclid(WINDOW_MS) * WINDOW_MS
}

/// Prometheus' native bucket index of `value` at [`SCHEMA`]: `(base^(i-1), base^i]`.
fn bucket(value: f64) -> i32 {
    (value.log2() * f64::from(1 << SCHEMA)).ceil() as i32
}

fn exact_p99(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    common::exact_quantile(&sorted, 0.99)
}

// ---------------------------------------------------------------------------
// The protobuf exposition (io.prometheus.client, metrics.proto), the parts used.

#[derive(Clone, PartialEq, Message)]
struct MetricFamily {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    help: String,
    #[prost(int32, tag = "3")]
    kind: i32,
    #[prost(message, repeated, tag = "4")]
    metric: Vec<Metric>,
}

#[derive(Clone, PartialEq, Message)]
struct Metric {
    #[prost(message, optional, tag = "3")]
    counter: Option<Counter>,
    #[prost(message, optional, tag = "7")]
    histogram: Option<Histogram>,
}

#[derive(Clone, PartialEq, Message)]
struct Counter {
    #[prost(double, tag = "1")]
    value: f64,
}

#[derive(Clone, PartialEq, Message)]
struct Histogram {
    #[prost(uint64, tag = "1")]
    sample_count: u64,
    #[prost(double, tag = "2")]
    sample_sum: f64,
    #[prost(sint32, tag = "5")]
    schema: i32,
    #[prost(double, tag = "6")]
    zero_threshold: f64,
    #[prost(uint64, tag = "7")]
    zero_count: u64,
    #[prost(message, repeated, tag = "12")]
    positive_span: Vec<BucketSpan>,
    #[prost(sint64, repeated, tag = "13")]
    positive_delta: Vec<i64>,
}

#[derive(Clone, PartialEq, Message)]
struct BucketSpan {
    #[prost(sint32, tag = "1")]
    offset: i32,
    #[prost(uint32, tag = "2")]
    length: u32,
}

const COUNTER_TYPE: i32 = 0;
const HISTOGRAM_TYPE: i32 = 4;

// ---------------------------------------------------------------------------
// The scrape target.

struct TargetState {
    /// Every observation added so far, in order; batch `j` is `[j*BATCH, (j+1)*BATCH)`.
    values: Vec<f64>,
    /// Once set, scrapes add nothing more.
    frozen: bool,
    rng: SmallRng,
}

impl TargetState {
    /// What one scrape serves, after which the next batch is added.
    fn exposition(&mut self) -> Vec<u8> {
        let mut buckets = std::collections::BTreeMap::<i32, u64>::new();
        for value in &self.values {
            *buckets.entry(bucket(*value)).or_default() += 1;
        }
        let (mut spans, mut deltas) = (Vec::<BucketSpan>::new(), Vec::new());
        let (mut next, mut previous) = (None::<i32>, 0i64);
        for (&index, &count) in &buckets {
            match next {
                Some(expected) if expected == index => spans.last_mut().unwrap().length += 1,
                Some(expected) => spans.push(BucketSpan {
                    offset: index - expected,
                    length: 1,
                }),
                None => spans.push(BucketSpan {
                    offset: index,
                    length: 1,
                }),
            }
            deltas.push(count as i64 - previous);
            previous = count as i64;
            next = Some(index + 1);
        }
        let families = [
            MetricFamily {
                name: "demo_requests_total".into(),
                help: "Requests served.".into(),
                kind: COUNTER_TYPE,
                metric: vec![Metric {
                    counter: Some(Counter {
                        value: self.values.len() as f64,
                    }),
                    histogram: None,
                }],
            },
            MetricFamily {
                name: "demo_latency_seconds".into(),
                help: "Request latency.".into(),
                kind: HISTOGRAM_TYPE,
                metric: vec![Metric {
                    counter: None,
                    histogram: Some(Histogram {
                        sample_count: self.values.len() as u64,
                        sample_sum: self.values.iter().sum(),
                        schema: SCHEMA,
                        zero_threshold: 2f64.powi(-128),
                        zero_count: 0,
                        positive_span: spans,
                        positive_delta: deltas,
                    }),
                }],
            },
        ];
        let mut body = Vec::new();
        for family in &families {
            family.encode_length_delimited(&mut body).unwrap();
        }
        if !self.frozen {
            let latency = LogNormal::new(0.08f64.ln(), 0.9).unwrap();
            for _ in 0..BATCH {
                self.values.push(latency.sample(&mut self.rng));
            }
        }
        body
    }
}

/// Serves the protobuf exposition, which Prometheus asks for first when native histograms are on.
fn start_target(state: &Arc<Mutex<TargetState>>) -> ScrapeTarget {
    let state = Arc::clone(state);
    ScrapeTarget::start(move || {
        (
            "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited",
            state.lock().unwrap().exposition(),
        )
    })
}

// ---------------------------------------------------------------------------
// Reading Prometheus back.

/// Raw float samples `(timestamp_ms, value)` of the one series `selector` selects.
fn raw(prometheus: &Prometheus, selector: &str, at_ms: i64) -> Vec<(i64, f64)> {
    let result = prometheus.query(&format!("{selector}[10m]"), at_ms);
    assert_eq!(result.len(), 1, "{selector}: {result:?}");
    result[0]["values"]
        .as_array()
        .expect("a range vector")
        .iter()
        .map(|pair| {
            let seconds = pair[0].as_f64().unwrap();
            let value = pair[1].as_str().unwrap().parse::<f64>().unwrap();
            ((seconds * 1000.0).round() as i64, value)
        })
        .collect()
}

/// `promql` at `at_ms`, with a Prometheus range of `range_ms` substituted for `RANGE`.
fn value_at(prometheus: &Prometheus, promql: &str, range_ms: i64, at_ms: i64) -> f64 {
    let query = promql.replace("RANGE", &format!("{range_ms}ms"));
    prometheus
        .query_value(&query, at_ms)
        .unwrap_or_else(|| panic!("{query} at {at_ms}: {:?}", prometheus.query(&query, at_ms)))
}

fn close(got: f64, expected: f64, what: &str) {
    assert!(
        (got - expected).abs() <= 1e-9 * expected.abs().max(1.0),
        "{what}: {got} vs {expected}"
    );
}

#[test]
fn prometheus_to_tailfold_to_prometheus_reads_right_with_the_documented_promql() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let b = Prometheus::start("global: {scrape_interval: 1m}\n");
    let mut service = runtime.block_on(common::start_service_real_clock(
        RULES,
        200,
        &format!(
            "engine: {{lateness_ms: {{\"2s\": {LATENESS_MS}}}}}\nremote_write: [{{name: b, url: \"{}\", storage_policies: [\"2s:1h\"], shards: 1, min_backoff_ms: 50}}]\n",
            b.remote_write_url()
        ),
    ));
    let state = Arc::new(Mutex::new(TargetState {
        values: Vec::new(),
        frozen: false,
        rng: SmallRng::seed_from_u64(16),
    }));
    let target = start_target(&state);
    let a = Prometheus::start(&format!(
        r#"
global:
  scrape_interval: 1s
  scrape_timeout: 900ms
scrape_configs:
  - job_name: demo
    static_configs:
      - targets: ["{}"]
remote_write:
  - url: http://{}/api/v1/write
    send_native_histograms: true
    write_relabel_configs:
      - {{source_labels: [__name__], regex: "demo_.*", action: keep}}
    queue_config:
      batch_send_deadline: 250ms
      min_backoff: 50ms
      max_backoff: 1s
"#,
        target.addr,
        service.handle().http_addr()
    ));
    a.wait_for(Duration::from_secs(60), |p| {
        (p.query("up{job=\"demo\"} == 1", wall_ms()).len() == 1).then_some(())
    });
    std::thread::sleep(Duration::from_secs(18));
    state.lock().unwrap().frozen = true;
    let frozen_ms = wall_ms();
    // Two more scrapes serve the frozen state, so every batch reached A.
    std::thread::sleep(Duration::from_millis(2_500));
    let end_ms = wall_ms();
    while wall_ms() < end_ms + LATENESS_MS + 1_000 {
        std::thread::sleep(Duration::from_millis(100));
    }
    runtime.block_on(service.handle().flush_now());

    // What A stored: the counter at each scrape says how many batches it held.
    let scrapes: Vec<(i64, usize)> = raw(&a, "demo_requests_total", end_ms)
        .into_iter()
        .map(|(t, v)| (t, v as usize))
        .collect();
    let values = state.lock().unwrap().values.clone();
    let telemetry = service.handle().telemetry().snapshot();
    let context = format!(
        "tailfold: {}\nA log:\n{}\nB log:\n{}",
        telemetry.progress_line(),
        a.log(),
        b.log()
    );
    assert_eq!(scrapes[0].1, 0, "the first scrape is the empty baseline\n{context}");
    assert_eq!(
        scrapes.last().unwrap().1,
        values.len(),
        "the last scrape held every batch\n{context}"
    );
    assert_eq!(telemetry.ingest.rejected_for(DropReason::TooLate), 0, "{context}");
    assert_eq!(telemetry.ingest.rejected_total(), 0, "{context}");

    // The windows tailfold closed, and what each held: the batches new in
    // its scrapes. Only windows ending by `end_ms` are due and checked.
    let first_start = window_start(scrapes[0].0);
    let last_end = window_start(end_ms);
    let mut windows: Vec<(i64, usize, usize)> = Vec::new(); // (start, held before, held at end)
    let mut held = 0;
    for start in (first_start..last_end).step_by(WINDOW_MS as usize) {
        let at_end = scrapes
            .iter()
            .rev()
            .find(|(t, _)| *t < start + WINDOW_MS)
            .map_or(0, |(_, n)| *n);
        windows.push((start, held, at_end));
        held = at_end;
    }
    let total_sent = held;
    assert!(total_sent >= 10 * BATCH, "{total_sent} observations\n{context}");
    let final_end = last_end;

    // B holds the last window once the sink has delivered it.
    b.wait_for(Duration::from_secs(30), |p| {
        p.query_value("demo_latency_seconds_count", final_end)
            .filter(|v| *v == total_sent as f64)
    });

    // 1. Cumulative outputs: a zero 1 ms after the first window's start, then
    //    exactly what the scrapes before each window end held.
    let sum_of = |count: usize| values[..count].iter().sum::<f64>();
    let expected_count: Vec<(i64, f64)> = std::iter::once((first_start + 1, 0.0))
        .chain(
            windows
                .iter()
                .map(|&(start, _, at_end)| (start + WINDOW_MS, at_end as f64)),
        )
        .collect();
    assert_eq!(
        raw(&b, "demo_latency_seconds_count", final_end),
        expected_count,
        "{context}"
    );
    assert_eq!(raw(&b, "demo_requests_total", final_end), expected_count, "{context}");
    let sums = raw(&b, "demo_latency_seconds_sum", final_end);
    assert_eq!(sums.len(), expected_count.len());
    for ((t, got), (t_expected, count)) in sums.iter().zip(&expected_count) {
        assert_eq!(t, t_expected);
        close(*got, sum_of(*count as usize), &format!("_sum at {t}"));
    }

    // 2. rate() over whole windows (4 of them, 8 s, no extrapolation) is what
    //    those windows received per second, which is the sent rate (a batch a
    //    second) to within one scrape either way.
    let mut rates_checked = 0;
    for &(start, _, at_end) in windows.iter().skip(4) {
        let end = start + WINDOW_MS;
        if end > frozen_ms - 1_000 {
            break; // from here on the target sends nothing new
        }
        let (_, _, before) = windows
            .iter()
            .find(|(s, _, _)| *s == end - 5 * WINDOW_MS)
            .copied()
            .unwrap();
        let per_second = (at_end - before) as f64 / 8.0;
        for series in ["demo_latency_seconds_count", "demo_requests_total"] {
            let rate = value_at(&b, &format!("rate({series}[RANGE])"), 4 * WINDOW_MS, end);
            close(rate, per_second, &format!("rate({series}) at {end}"));
            let sent = BATCH as f64;
            assert!(
                (rate - sent).abs() <= sent / 8.0 + 1e-9,
                "rate({series}) at {end}: {rate} vs sent {sent}/s"
            );
        }
        rates_checked += 1;
    }
    assert!(rates_checked >= 2, "{rates_checked} steady windows\n{context}");

    // 3. The mean over the whole run, first window included.
    let whole_ms = final_end - first_start + WINDOW_MS;
    let mean = value_at(
        &b,
        "rate(demo_latency_seconds_sum[RANGE]) / rate(demo_latency_seconds_count[RANGE])",
        whole_ms,
        final_end,
    );
    close(mean, sum_of(total_sent) / total_sent as f64, "rate(_sum)/rate(_count)");
    eprintln!(
        "{} windows, {total_sent} observations, {rates_checked} steady rates checked, mean {mean}",
        windows.len()
    );

    // 4. The p99 of every observation sent, from the cumulative native histogram.
    let p99 = value_at(
        &b,
        "histogram_quantile(0.99, increase(demo_latency_seconds[RANGE]))",
        whole_ms,
        final_end,
    );
    let exact = exact_p99(&values[..total_sent]);
    assert!(
        (bucket(p99) - bucket(exact)).abs() <= 1,
        "histogram_quantile {p99} vs exact p99 {exact}"
    );
    let above_all = values[..total_sent].iter().filter(|v| **v > THRESHOLD).count() as f64;
    assert_eq!(
        value_at(
            &b,
            "sum_over_time(demo_latency_seconds:above{threshold=\"0.25\"}[RANGE])",
            whole_ms,
            final_end
        ),
        above_all,
        "people beyond the threshold over the run"
    );

    // 5. Per-window series: each window's own values, stamped at its end.
    let per_window = |name: &str| {
        raw(&b, name, final_end)
            .into_iter()
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let counts = per_window("demo_latency_seconds:count");
    let requests = per_window("demo_requests_total:sum");
    let rates = per_window("demo_requests_total:rate");
    let above = per_window("demo_latency_seconds:above{threshold=\"0.25\"}");
    let quantiles = per_window("demo_latency_seconds:quantile{quantile=\"0.99\"}");
    for &(start, before, at_end) in &windows {
        let end = start + WINDOW_MS;
        let own = &values[before..at_end];
        assert_eq!(counts.get(&end).copied(), Some(own.len() as f64), "x:count at {end}");
        assert_eq!(
            requests.get(&end).copied(),
            Some(own.len() as f64),
            "requests:sum at {end}"
        );
        assert_eq!(
            rates.get(&end).copied(),
            Some(own.len() as f64 / 2.0),
            "requests:rate at {end}"
        );
        let beyond = own.iter().filter(|v| **v > THRESHOLD).count() as f64;
        assert_eq!(above.get(&end).copied(), Some(beyond), "x:above at {end}");
        if !own.is_empty() {
            let got = quantiles[&end];
            let exact = exact_p99(own);
            assert!(
                (bucket(got) - bucket(exact)).abs() <= 1,
                "x:quantile p99 at {end}: {got} vs exact {exact}"
            );
        }
    }
    drop(a);
    runtime.block_on(service.shutdown());
}
