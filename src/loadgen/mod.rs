//! `tailfold loadgen`: realistic traffic over gRPC (latencies log-normal with a
//! slow tail, a trace ID on every observation, counters and gauges beside),
//! with progress once a second and a closing account of every point sent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use thiserror::Error;

use crate::api::v1;

mod traffic;
mod wire;

use traffic::{build_request, series_identity, Generator};
use wire::{EncodedIdentity, PrebuiltCodec, RequestWriter};

/// Why a load run could not start or finish.
#[derive(Debug, Error)]
pub enum LoadgenError {
    /// The target URL is unusable or unreachable.
    #[error("cannot connect to {target}: {message}")]
    Connect {
        /// The target.
        target: String,
        /// Why.
        message: String,
    },
    /// A bad option value.
    #[error("invalid option {option}: {problem}")]
    Option {
        /// The option.
        option: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// What to send.
#[derive(Clone, Debug)]
pub struct LoadgenOptions {
    /// gRPC endpoint, e.g. `http://127.0.0.1:4770`.
    pub target: String,
    /// Distinct series.
    pub series: usize,
    /// Points per second overall; 0 sends as fast as the service answers.
    pub rate: u64,
    /// Run length.
    pub duration: Duration,
    /// Points per request.
    pub batch: usize,
    /// Relative weights of distribution, counter and gauge series.
    pub mix: (u32, u32, u32),
    /// Concurrent connections.
    pub concurrency: usize,
    /// Tenant sent in metadata (none when empty).
    pub tenant: String,
    /// Seed of the generator.
    pub seed: u64,
    /// Print a progress line every second.
    pub progress: bool,
    /// Wire protocol to load.
    pub protocol: Protocol,
}

/// Which ingest path the load goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `Ingest.Write` over gRPC: answers carry accepted/rejected counts per reason.
    Grpc,
    /// Prometheus remote write (snappy + protobuf over HTTP). Every series is sent
    /// as Prometheus sends it (no kinds: gauges, `_total` would be counters), and a
    /// 2xx answer accepts the whole request.
    RemoteWrite,
}

/// One answer, whatever the protocol.
enum Answer {
    Counted {
        accepted: u64,
        rejections: Vec<(String, u64)>,
    },
    Failed(String),
}

/// The method path of `Ingest.Write`, as the generated client names it.
const WRITE_PATH: &str = "/tailfold.v1.Ingest/Write";

/// A connection of one worker and what it builds its requests from.
enum Sender {
    /// Requests built as bytes from identities encoded once (see `wire`).
    Grpc {
        client: tonic::client::Grpc<tonic::transport::Channel>,
        identities: Arc<Vec<EncodedIdentity>>,
        writer: RequestWriter,
    },
    RemoteWrite {
        client: reqwest::Client,
        url: String,
        identities: Arc<Vec<(Vec<v1::Label>, v1::Kind)>>,
    },
}

impl Sender {
    /// Builds the next request of `batch` points and sends it; the duration is
    /// that of the write alone.
    async fn send_next(
        &mut self,
        generator: &mut Generator,
        next_series: &mut usize,
        batch: usize,
        now_ms: i64,
        tenant: &str,
    ) -> (Answer, Duration) {
        match self {
            Sender::Grpc {
                client,
                identities,
                writer,
            } => {
                let body = writer.build(generator, identities, next_series, batch, now_ms);
                let begin = Instant::now();
                let answer = write_grpc(client, body, batch as u64, tenant).await;
                (answer, begin.elapsed())
            }
            Sender::RemoteWrite {
                client,
                url,
                identities,
            } => {
                let request = build_request(generator, identities, next_series, batch, now_ms);
                let begin = Instant::now();
                let answer = write_remote(client, url, request, tenant).await;
                (answer, begin.elapsed())
            }
        }
    }
}

/// Sends one pre-built `WriteRequest` of `points` points to `Ingest.Write`.
async fn write_grpc(
    client: &mut tonic::client::Grpc<tonic::transport::Channel>,
    body: Bytes,
    points: u64,
    tenant: &str,
) -> Answer {
    if let Err(error) = client.ready().await {
        return Answer::Failed(format!("service was not ready: {error}"));
    }
    let codec = PrebuiltCodec::new(&body);
    let mut request = tonic::Request::new(body);
    request
        .extensions_mut()
        .insert(tonic::GrpcMethod::new("tailfold.v1.Ingest", "Write"));
    if let Ok(value) = tenant.parse() {
        if !tenant.is_empty() {
            request.metadata_mut().insert("x-scope-orgid", value);
        }
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(WRITE_PATH);
    match client.unary(request, path, codec).await {
        Ok(response) => {
            let response: v1::WriteResponse = response.into_inner();
            let rejections = response
                .rejections
                .into_iter()
                .map(|r| {
                    let reason = if r.rule.is_empty() {
                        r.reason
                    } else {
                        format!("{}:{}", r.reason, r.rule)
                    };
                    (reason, r.count)
                })
                .collect();
            Answer::Counted {
                accepted: response.accepted.min(points),
                rejections,
            }
        }
        Err(status) => Answer::Failed(format!("{:?}: {}", status.code(), status.message())),
    }
}

/// Sends one request as Prometheus remote write; a 2xx answer accepts it whole.
async fn write_remote(client: &reqwest::Client, url: &str, request: v1::WriteRequest, tenant: &str) -> Answer {
    let points: u64 = request.series.iter().map(|s| s.points.len() as u64).sum();
    let body = remote_write_body(request);
    let mut post = client
        .post(url)
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .body(body);
    if !tenant.is_empty() {
        post = post.header("x-scope-orgid", tenant);
    }
    match post.send().await {
        Ok(response) if response.status().is_success() => Answer::Counted {
            accepted: points,
            rejections: Vec::new(),
        },
        Ok(response) => {
            let status = response.status();
            Answer::Failed(format!(
                "{status}: {}",
                response.text().await.unwrap_or_default().trim()
            ))
        }
        Err(error) => Answer::Failed(crate::client_error::describe(&error, "--target")),
    }
}

/// The same series as a remote-write request: labels sorted, one sample per point
/// (a millisecond apart, as distinct scrapes would be).
fn remote_write_body(request: v1::WriteRequest) -> Vec<u8> {
    use crate::api::prometheus as prompb;
    let timeseries = request
        .series
        .into_iter()
        .map(|series| {
            let mut labels: Vec<prompb::Label> = series
                .labels
                .into_iter()
                .map(|l| prompb::Label {
                    name: l.name,
                    value: l.value,
                })
                .collect();
            labels.sort_by(|a, b| a.name.cmp(&b.name));
            let samples = series
                .points
                .iter()
                .enumerate()
                .map(|(i, p)| prompb::Sample {
                    value: p.value,
                    timestamp: p.timestamp_ms.unwrap_or(0) + i as i64,
                })
                .collect();
            prompb::TimeSeries {
                labels,
                samples,
                exemplars: Vec::new(),
                histograms: Vec::new(),
            }
        })
        .collect();
    let encoded = prost::Message::encode_to_vec(&prompb::WriteRequest {
        timeseries,
        metadata: Vec::new(),
    });
    snap::raw::Encoder::new().compress_vec(&encoded).unwrap_or_default()
}

/// What the service counted for remote write, summed over tenants.
#[derive(Debug, Default, PartialEq)]
struct ServiceCounts {
    accepted: u64,
    rejected: BTreeMap<String, u64>,
}

/// Reads `tailfold_samples_accepted_total` and `tailfold_samples_dropped_total`
/// of `protocol="remote_write"` from the service's `/metrics`.
async fn remote_write_counts(http: &reqwest::Client, url: &str) -> Result<ServiceCounts, String> {
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|error| crate::client_error::describe(&error, "--target"))?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    let text = response.text().await.map_err(|error| error.to_string())?;
    Ok(parse_remote_write_counts(&text))
}

fn parse_remote_write_counts(text: &str) -> ServiceCounts {
    let mut counts = ServiceCounts::default();
    for line in text.lines().filter(|line| line.contains("protocol=\"remote_write\"")) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else { continue };
        if series.starts_with("tailfold_samples_accepted_total{") {
            counts.accepted += value as u64;
        } else if series.starts_with("tailfold_samples_dropped_total{") {
            let reason = series
                .split("reason=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("unknown");
            *counts.rejected.entry(reason.to_string()).or_default() += value as u64;
        }
    }
    counts
}

/// The account of a run.
#[derive(Clone, Debug, Default)]
pub struct LoadgenReport {
    /// Points sent in requests that got an answer.
    pub sent: u64,
    /// Points the service said it accepted (gRPC: in its answers; remote write:
    /// by its own `/metrics` counters, so run against a service no one else feeds).
    pub accepted: u64,
    /// Points the service said it rejected, by reason.
    pub rejected: Vec<(String, u64)>,
    /// Points in requests that failed as a whole (status error), and the first error.
    pub failed: u64,
    /// First request error seen.
    pub first_error: Option<String>,
    /// Requests answered.
    pub requests: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Write latency quantiles in microseconds: p50, p99, p999, max.
    pub latency_us: [u64; 4],
}

impl LoadgenReport {
    /// True when every point sent was either accepted or rejected with a reason.
    pub fn accounted(&self) -> bool {
        self.sent == self.accepted + self.rejected.iter().map(|(_, n)| n).sum::<u64>() + self.failed
    }

    /// Points per second achieved.
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

#[derive(Default)]
struct Shared {
    report: LoadgenReport,
    latency: Option<hdrhistogram::Histogram<u64>>,
}

/// Runs a load as `options` say and returns the account.
pub async fn run(options: LoadgenOptions) -> Result<LoadgenReport, LoadgenError> {
    if options.series == 0 {
        return Err(LoadgenError::Option {
            option: "--series",
            problem: "must be at least 1".into(),
        });
    }
    if options.batch == 0 {
        return Err(LoadgenError::Option {
            option: "--batch",
            problem: "must be at least 1".into(),
        });
    }
    let concurrency = options.concurrency.max(1);
    let connect_error = |message: String| LoadgenError::Connect {
        target: options.target.clone(),
        message,
    };
    let channel = match options.protocol {
        Protocol::Grpc => Some(
            tonic::transport::Endpoint::from_shared(options.target.clone())
                .map_err(|error| connect_error(error.to_string()))?
                .connect()
                .await
                .map_err(|error| connect_error(crate::client_error::describe(&error, "--target")))?,
        ),
        Protocol::RemoteWrite => None,
    };
    let http = reqwest::Client::builder()
        .build()
        .map_err(|error| connect_error(error.to_string()))?;
    let identities: Arc<Vec<_>> = Arc::new((0..options.series).map(|i| series_identity(i, options.mix)).collect());
    // Encoded once here, so no request clones or re-encodes a label.
    let encoded: Arc<Vec<EncodedIdentity>> = Arc::new(
        identities
            .iter()
            .map(|(labels, kind)| EncodedIdentity::new(labels, *kind))
            .collect(),
    );
    let shared = Arc::new(Mutex::new(Shared {
        latency: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).ok(),
        ..Shared::default()
    }));
    // A 2xx remote-write answer does not say which samples the engine then refused
    // (a kind conflict, say): the account comes from the service's own counters.
    let metrics_url = format!("{}/metrics", options.target.trim_end_matches('/'));
    let counted_before = match options.protocol {
        Protocol::RemoteWrite => Some(
            remote_write_counts(&http, &metrics_url)
                .await
                .map_err(|message| connect_error(format!("{metrics_url}: {message}")))?,
        ),
        Protocol::Grpc => None,
    };
    let started = Instant::now();
    let deadline = started + options.duration;
    let per_worker_rate = options.rate as f64 / concurrency as f64;

    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let mut sender = match &channel {
            Some(channel) => Sender::Grpc {
                client: tonic::client::Grpc::new(channel.clone()).max_decoding_message_size(64 << 20),
                identities: Arc::clone(&encoded),
                writer: RequestWriter::new(),
            },
            None => Sender::RemoteWrite {
                client: http.clone(),
                url: format!("{}/api/v1/write", options.target.trim_end_matches('/')),
                identities: Arc::clone(&identities),
            },
        };
        let series = identities.len();
        let shared = Arc::clone(&shared);
        let options = options.clone();
        workers.push(tokio::spawn(async move {
            let mut generator = Generator::new(options.seed ^ (worker as u64 + 1).wrapping_mul(0x9e37_79b9));
            let mut next_series = worker * series / concurrency;
            let mut sent_here = 0u64;
            while Instant::now() < deadline {
                if per_worker_rate > 0.0 {
                    let due = started + batch_due(sent_here, options.batch, per_worker_rate);
                    if due > deadline {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                }
                let now_ms = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
                let (answer, took) = sender
                    .send_next(&mut generator, &mut next_series, options.batch, now_ms, &options.tenant)
                    .await;
                let points = options.batch as u64;
                let micros = took.as_micros() as u64;
                sent_here += points;
                let mut shared = shared.lock();
                if let Some(latency) = shared.latency.as_mut() {
                    let _ = latency.record(micros.max(1));
                }
                let report = &mut shared.report;
                report.sent += points;
                report.requests += 1;
                match answer {
                    Answer::Counted { accepted, rejections } => {
                        report.accepted += accepted;
                        for (reason, count) in rejections {
                            match report.rejected.iter_mut().find(|(r, _)| *r == reason) {
                                Some((_, n)) => *n += count,
                                None => report.rejected.push((reason, count)),
                            }
                        }
                    }
                    Answer::Failed(message) => {
                        report.failed += points;
                        report.first_error.get_or_insert(message);
                    }
                }
            }
        }));
    }

    if options.progress {
        let shared = Arc::clone(&shared);
        let mut last_sent = 0u64;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(1).min(deadline.saturating_duration_since(Instant::now()))).await;
            let shared = shared.lock();
            let report = &shared.report;
            let p99 = shared.latency.as_ref().map(|h| h.value_at_quantile(0.99)).unwrap_or(0);
            eprintln!(
                "loadgen: t={:>3}s sent={} accepted={} rate={}/s write p99={:.2}ms",
                started.elapsed().as_secs(),
                report.sent,
                report.accepted,
                report.sent - last_sent,
                p99 as f64 / 1000.0
            );
            last_sent = report.sent;
        }
    }
    for worker in workers {
        let _ = worker.await;
    }
    let mut shared = Arc::try_unwrap(shared).map(Mutex::into_inner).unwrap_or_default();
    shared.report.elapsed = started.elapsed();
    if let Some(before) = counted_before {
        let after = remote_write_counts(&http, &metrics_url)
            .await
            .map_err(|message| connect_error(format!("{metrics_url}: {message}")))?;
        shared.report.accepted = after.accepted.saturating_sub(before.accepted);
        shared.report.rejected = after
            .rejected
            .iter()
            .map(|(reason, count)| {
                (
                    reason.clone(),
                    count.saturating_sub(before.rejected.get(reason).copied().unwrap_or(0)),
                )
            })
            .filter(|(_, count)| *count > 0)
            .collect();
    }
    if let Some(latency) = &shared.latency {
        shared.report.latency_us = [
            latency.value_at_quantile(0.5),
            latency.value_at_quantile(0.99),
            latency.value_at_quantile(0.999),
            latency.max(),
        ];
    }
    Ok(shared.report)
}

/// When a worker sending `rate` points/s may send its next batch of `batch`
/// points, `sent` points into the run: at the end of the time the batch
/// stands for, not its start. Sending at the start would put one extra batch
/// per worker into the run (batches at 0, 2, ... 28 s of a 30 s run at one
/// batch per 2 s: 15 batches in 28 s, 7 % over the rate asked for).
fn batch_due(sent: u64, batch: usize, rate: f64) -> Duration {
    Duration::from_secs_f64((sent + batch as u64) as f64 / rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_due_so_a_run_sends_the_rate_asked_for() {
        // --rate 2000 over 4 workers, 1000-point batches, 30 s.
        let (rate, batch, run) = (500.0, 1000, Duration::from_secs(30));
        let mut sent = 0u64;
        while batch_due(sent, batch, rate) <= run {
            sent += batch as u64;
        }
        assert_eq!(sent as f64 / run.as_secs_f64(), rate);
        assert_eq!(batch_due(0, batch, rate), Duration::from_secs(2));
    }

    #[test]
    fn remote_write_counts_sum_tenants_and_reasons_of_remote_write_only() {
        let text = r#"# TYPE tailfold_samples_accepted_total counter
tailfold_samples_accepted_total{protocol="remote_write",tenant="default"} 1200
tailfold_samples_accepted_total{protocol="remote_write",tenant="b"} 34
tailfold_samples_accepted_total{protocol="grpc",tenant="default"} 999
tailfold_samples_dropped_total{protocol="remote_write",tenant="default",reason="kind_conflict"} 7
tailfold_samples_dropped_total{protocol="remote_write",tenant="b",reason="kind_conflict",rule=""} 3
tailfold_samples_dropped_total{protocol="remote_write",tenant="b",reason="too_late"} 2
tailfold_samples_dropped_total{protocol="grpc",tenant="b",reason="too_late"} 50
"#;
        let counts = parse_remote_write_counts(text);
        assert_eq!(counts.accepted, 1234);
        assert_eq!(
            counts.rejected,
            BTreeMap::from([("kind_conflict".to_string(), 10), ("too_late".to_string(), 2)])
        );
    }

    #[test]
    fn requests_hold_the_batch_and_trace_every_observation() {
        let identities: Vec<_> = (0..20).map(|i| series_identity(i, (8, 1, 1))).collect();
        let mut generator = Generator::new(7);
        let mut next = 0;
        let request = build_request(&mut generator, &identities, &mut next, 1000, 1_000);
        let points: usize = request.series.iter().map(|s| s.points.len()).sum();
        assert_eq!(points, 1000);
        for series in &request.series {
            for point in &series.points {
                let traced = point.trace_id.len() == 16 && point.span_id.len() == 8;
                assert_eq!(traced, series.kind == v1::Kind::Distribution as i32);
                assert!(point.value.is_finite() && point.value > 0.0);
            }
        }
        let kinds: Vec<i32> = identities.iter().map(|(_, kind)| *kind as i32).collect();
        assert_eq!(
            kinds.iter().filter(|k| **k == v1::Kind::Distribution as i32).count(),
            16
        );
    }
}
