//! The Prometheus remote-write sink: batches of time series (snappy block +
//! protobuf) POSTed to Prometheus, Mimir, M3 or VictoriaMetrics. Series are
//! spread over shards by output series, so each series stays in order.
//! 5xx and 429 are retried with exponential backoff, 4xx never. A bounded
//! buffer rides out outages, and every sample finally dropped is counted by
//! reason.

mod encode;
mod spill;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;

use crate::api::prometheus as prompb;
use crate::engine::AggregateRecord;
use crate::model::StoragePolicy;
use crate::telemetry::Telemetry;

use super::{SinkError, SinkWriter};

pub use encode::{native_histogram, Encoder, Unencodable};
use spill::Spill;

/// Checked settings of one remote-write sink (see `config::RemoteWriteConfig`).
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteWriteSettings {
    /// Name in logs and counters.
    pub name: String,
    /// Endpoint, e.g. `http://127.0.0.1:9090/api/v1/write`.
    pub url: String,
    /// Policies routed to this sink.
    pub storage_policies: Vec<StoragePolicy>,
    /// Label naming the policy, when several policies share the sink.
    pub policy_label: Option<String>,
    /// Send `histogram` outputs as native histograms.
    pub native_histograms: bool,
    /// Header carrying the tenant (e.g. `X-Scope-OrgID` for Mimir); none when unset.
    pub tenant_header: Option<String>,
    /// Series per request.
    pub max_series_per_request: usize,
    /// Parallel senders; each owns a share of the series.
    pub shards: usize,
    /// Per-request timeout.
    pub timeout_ms: u64,
    /// First retry delay.
    pub min_backoff_ms: u64,
    /// Longest retry delay.
    pub max_backoff_ms: u64,
    /// Series buffered per shard before the oldest are dropped (`buffer_full`).
    pub max_buffered_series: usize,
    /// Running histograms idle this long are forgotten.
    pub idle_series_ms: u64,
    /// When set, requests past `max_buffered_series` spill to `<dir>/<name>-<shard>.spill`
    /// instead of being dropped, and what is left at shutdown is kept there for the next run.
    pub spill_dir: Option<PathBuf>,
    /// Bytes the spill of one shard may hold before its oldest requests are dropped (`buffer_full`).
    pub max_spill_bytes: u64,
    /// At shutdown, how long to keep retrying (with backoff) what is still queued.
    pub shutdown_drain_ms: u64,
}

/// A request ready to send: encoded and compressed once, when queued, so a
/// retry resends the same bytes instead of encoding again.
struct Batch {
    tenant: Arc<str>,
    body: bytes::Bytes,
    series: usize,
    samples: u64,
}

impl Batch {
    /// Seals `series` of `tenant` into one snappy-compressed `WriteRequest`.
    fn seal(tenant: Arc<str>, series: Vec<prompb::TimeSeries>) -> Result<Batch, snap::Error> {
        let samples = series
            .iter()
            .map(|s| (s.samples.len() + s.histograms.len()) as u64)
            .sum();
        let count = series.len();
        let request = prompb::WriteRequest {
            timeseries: series,
            metadata: Vec::new(),
        };
        let body = snap::raw::Encoder::new().compress_vec(&request.encode_to_vec())?;
        Ok(Batch {
            tenant,
            body: body.into(),
            series: count,
            samples,
        })
    }
}

/// How one send ended.
enum Sent {
    Ok,
    /// 4xx other than 429: the data can never be accepted.
    Refused(String),
    /// 5xx, 429 or a transport error: try again later.
    Retry(String),
}

/// One shard of a remote-write sink, run on its own sink thread.
pub struct RemoteWriteShard {
    settings: RemoteWriteSettings,
    shard: usize,
    encoder: Encoder,
    /// Built on the sink thread at first use: a blocking client must not be
    /// created or dropped inside the async runtime.
    client: Option<reqwest::blocking::Client>,
    /// The newest queued requests; older ones are in `spill` when it is on.
    pending: VecDeque<Batch>,
    pending_series: usize,
    /// The oldest queued requests, on disk (`spill_dir` set).
    spill: Option<Spill>,
    next_attempt_ms: i64,
    backoff_ms: u64,
    telemetry: Arc<Telemetry>,
}

impl RemoteWriteShard {
    /// Shard `shard` of `settings.shards`.
    pub fn new(settings: RemoteWriteSettings, shard: usize, telemetry: Arc<Telemetry>) -> Self {
        let spill = settings.spill_dir.as_ref().and_then(|dir| {
            let path = dir.join(format!("{}-{shard}.spill", settings.name));
            match Spill::open(&path) {
                Ok(spill) => {
                    if !spill.is_empty() {
                        tracing::info!(sink = %settings.name, shard, requests = spill.len(), file = %path.display(), "remote-write backlog left by the last run is sent first");
                    }
                    Some(spill)
                }
                Err(error) => {
                    tracing::error!(sink = %settings.name, %error, file = %path.display(), "cannot open the spill file; the buffer stays in memory only");
                    None
                }
            }
        });
        RemoteWriteShard {
            spill,
            encoder: Encoder::new(settings.policy_label.clone(), settings.native_histograms),
            backoff_ms: settings.min_backoff_ms,
            settings,
            shard,
            client: None,
            pending: VecDeque::new(),
            pending_series: 0,
            next_attempt_ms: i64::MIN,
            telemetry,
        }
    }

    fn client(&mut self) -> Result<&reqwest::blocking::Client, String> {
        if self.client.is_none() {
            let client = reqwest::blocking::Client::builder()
                .timeout(Duration::from_millis(self.settings.timeout_ms))
                .user_agent(concat!("tailfold/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|error| error.to_string())?;
            self.client = Some(client);
        }
        Ok(self.client.as_ref().expect("just built"))
    }

    fn drop_samples(&self, reason: &'static str, samples: u64) {
        if samples > 0 {
            self.telemetry.sink_dropped(&self.settings.name, reason, samples);
        }
    }

    fn enqueue(&mut self, records: &[AggregateRecord]) {
        let mut open: Vec<(Arc<str>, Vec<prompb::TimeSeries>)> = Vec::new();
        let mut sealed: Vec<(Arc<str>, Vec<prompb::TimeSeries>)> = Vec::new();
        for record in records {
            if !self.settings.storage_policies.contains(&record.policy)
                || !encode::belongs_to_shard(record, self.shard, self.settings.shards)
            {
                continue;
            }
            let series = match self.encoder.encode(record) {
                None => continue,
                Some(Ok(series)) => series,
                Some(Err(Unencodable::Schema)) => {
                    self.drop_samples("unsupported_schema", 1);
                    continue;
                }
            };
            let index = match open.iter().position(|(tenant, _)| *tenant == record.tenant) {
                Some(index) => index,
                None => {
                    open.push((Arc::clone(&record.tenant), Vec::new()));
                    open.len() - 1
                }
            };
            open[index].1.push(series);
            if open[index].1.len() >= self.settings.max_series_per_request {
                sealed.push(open.swap_remove(index));
            }
        }
        for (tenant, series) in sealed.into_iter().chain(open) {
            let count = series.len();
            match Batch::seal(tenant, series) {
                Ok(batch) => {
                    self.pending_series += batch.series;
                    self.pending.push_back(batch);
                }
                Err(error) => {
                    tracing::error!(sink = %self.settings.name, %error, series = count, "cannot compress a batch; dropped");
                    self.drop_samples("encode", count as u64);
                }
            }
        }
        // Bounded buffer: the oldest data spills to disk when configured, else
        // goes first; what is finally dropped is counted.
        while self.pending_series > self.settings.max_buffered_series {
            let Some(oldest) = self.pending.pop_front() else { break };
            self.pending_series -= oldest.series;
            self.spill_or_drop(oldest);
        }
        self.report_backlog();
    }

    /// Moves `batch` (older than anything in memory) to the back of the spill;
    /// drops it, counted, without one. Keeps the spill within its bound.
    fn spill_or_drop(&mut self, batch: Batch) {
        let Some(spill) = &mut self.spill else {
            self.drop_samples("buffer_full", batch.samples);
            tracing::warn!(sink = %self.settings.name, series = batch.series, "remote write buffer full: oldest batch dropped");
            return;
        };
        if let Err(error) = spill.push(&batch) {
            tracing::error!(sink = %self.settings.name, %error, file = %spill.path().display(), "cannot spill a batch; dropped");
            self.drop_samples("spill_failed", batch.samples);
            return;
        }
        let mut dropped = 0;
        while spill.queued_bytes() > self.settings.max_spill_bytes {
            match spill.pop_front() {
                Ok(Some((_, samples))) => dropped += samples,
                Ok(None) => break,
                Err(error) => {
                    tracing::error!(sink = %self.settings.name, %error, "cannot trim the spill file");
                    break;
                }
            }
        }
        if dropped > 0 {
            tracing::warn!(sink = %self.settings.name, samples = dropped, "remote write spill full: oldest batches dropped");
            self.drop_samples("buffer_full", dropped);
        }
    }

    fn report_backlog(&self) {
        let spilled = self.spill.as_ref().map_or(0, Spill::series);
        self.telemetry
            .sink_backlog(&self.settings.name, self.shard, (self.pending_series + spilled) as u64);
    }

    /// The oldest queued request: the spill's front when it has any, else memory's.
    fn front(&mut self) -> Option<(Batch, bool)> {
        if let Some(spill) = &mut self.spill {
            match spill.front() {
                Ok(Some(batch)) => return Some((batch, true)),
                Ok(None) => {}
                Err(error) => {
                    // Unreadable: counted as dropped, so the queue moves on.
                    tracing::error!(sink = %self.settings.name, %error, "cannot read the spill file; front batch dropped");
                    if let Ok(Some((_, samples))) = spill.pop_front() {
                        self.drop_samples("spill_failed", samples);
                    }
                    return self.front();
                }
            }
        }
        self.pending.pop_front().map(|batch| (batch, false))
    }

    /// Removes the front request after it was sent or refused.
    fn pop_sent(&mut self, batch: &Batch, from_spill: bool) {
        if from_spill {
            if let Some(spill) = &mut self.spill {
                if let Err(error) = spill.pop_front() {
                    tracing::error!(sink = %self.settings.name, %error, "cannot advance the spill file");
                }
            }
        } else {
            self.pending_series -= batch.series;
        }
    }

    fn send(&mut self, batch: &Batch) -> Sent {
        let url = self.settings.url.clone();
        let tenant_header = self.settings.tenant_header.clone();
        let client = match self.client() {
            Ok(client) => client,
            Err(message) => return Sent::Retry(message),
        };
        let mut post = client
            .post(&url)
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(batch.body.clone());
        if let Some(header) = &tenant_header {
            post = post.header(header.as_str(), batch.tenant.as_ref());
        }
        match post.send() {
            Ok(response) if response.status().is_success() => Sent::Ok,
            Ok(response) => {
                let status = response.status();
                let text: String = response.text().unwrap_or_default().chars().take(300).collect();
                let message = format!("{status}: {}", text.trim());
                if status.as_u16() == 429 || status.is_server_error() {
                    Sent::Retry(message)
                } else {
                    Sent::Refused(message)
                }
            }
            Err(error) => Sent::Retry(error.to_string()),
        }
    }

    /// Sends what is pending, oldest first, until done or a retryable failure
    /// (then waits out the backoff; the next write or tick tries again).
    fn drain(&mut self, now_ms: i64) {
        while now_ms >= self.next_attempt_ms {
            let Some((batch, from_spill)) = self.front() else { break };
            let started = std::time::Instant::now();
            let sent = self.send(&batch);
            self.telemetry.sink_send_latency(&self.settings.name, started.elapsed());
            match sent {
                Sent::Ok => {
                    self.telemetry.sink_sent(&self.settings.name, batch.samples);
                    self.backoff_ms = self.settings.min_backoff_ms;
                }
                Sent::Refused(message) => {
                    self.drop_samples("refused", batch.samples);
                    tracing::error!(sink = %self.settings.name, %message, series = batch.series, "remote write refused a batch; dropped");
                }
                Sent::Retry(message) => {
                    self.telemetry.sink_retry(&self.settings.name);
                    tracing::warn!(sink = %self.settings.name, %message, backoff_ms = self.backoff_ms, "remote write failed; will retry");
                    self.next_attempt_ms = now_ms + self.backoff_ms as i64;
                    self.backoff_ms = (self.backoff_ms * 2).min(self.settings.max_backoff_ms);
                    if !from_spill {
                        self.pending.push_front(batch);
                    }
                    break;
                }
            }
            self.pop_sent(&batch, from_spill);
        }
        self.report_backlog();
    }
}

impl SinkWriter for RemoteWriteShard {
    fn write(&mut self, records: &[AggregateRecord], now_ms: i64) -> Result<(), SinkError> {
        self.enqueue(records);
        self.encoder.evict_idle(now_ms, self.settings.idle_series_ms as i64);
        self.drain(now_ms);
        Ok(())
    }

    fn tick(&mut self, now_ms: i64) {
        self.drain(now_ms);
    }

    fn close(&mut self, now_ms: i64) {
        // Retry with backoff for the drain period; what cannot be sent is kept
        // in the spill for the next run when there is one, else counted as dropped.
        self.next_attempt_ms = i64::MIN;
        let started = std::time::Instant::now();
        let budget = Duration::from_millis(self.settings.shutdown_drain_ms);
        loop {
            let elapsed = started.elapsed();
            let clock_ms = now_ms.saturating_add(elapsed.as_millis() as i64);
            self.drain(clock_ms);
            let queued = !self.pending.is_empty() || self.spill.as_ref().is_some_and(|spill| !spill.is_empty());
            let wait_ms = self.next_attempt_ms.saturating_sub(clock_ms).max(1) as u64;
            if !queued || elapsed + Duration::from_millis(wait_ms) > budget {
                break;
            }
            std::thread::sleep(Duration::from_millis(wait_ms));
        }
        if self.spill.is_some() {
            while let Some(batch) = self.pending.pop_front() {
                self.pending_series -= batch.series;
                self.spill_or_drop(batch);
            }
            if let Some(spill) = &mut self.spill {
                match spill.persist() {
                    Ok(()) if !spill.is_empty() => {
                        tracing::info!(sink = %self.settings.name, shard = self.shard, samples = spill.samples(), "remote-write backlog kept on disk for the next run");
                    }
                    Ok(()) => {}
                    Err(error) => tracing::error!(sink = %self.settings.name, %error, "cannot persist the spill file"),
                }
            }
            self.report_backlog();
            return;
        }
        let left: u64 = self.pending.iter().map(|batch| batch.samples).sum();
        self.drop_samples("shutdown", left);
    }
}
