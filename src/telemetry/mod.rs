//! Self-accounting of the running service: what ingest received, accepted and
//! refused (by reason and rule), and what flushes and sinks did. Logged as a
//! progress line and served on `GET /metrics` (see [`export`]); nothing is
//! dropped without being counted here.

pub mod export;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::model::{DropReason, Outcome};

/// Counters shared by ingest, the flush loop and sinks.
#[derive(Debug)]
pub struct Telemetry {
    sinks: Mutex<SinkCounters>,
    received_points: AtomicU64,
    stale_markers: AtomicU64,
    ingest: Mutex<Outcome>,
    windows_flushed: AtomicU64,
    records_emitted: AtomicU64,
    records_written: AtomicU64,
    sink_errors: AtomicU64,
    selections_emitted: AtomicU64,
    selections_lagged: AtomicU64,
    statsd_malformed_lines: AtomicU64,
    statsd_name_collisions: AtomicU64,
    statsd_receive_dropped: AtomicU64,
    limit_drops: Mutex<BTreeMap<LimitDropKey, u64>>,
    overloaded_requests: Mutex<BTreeMap<String, u64>>,
    /// Received and ingested points per (protocol, tenant).
    sources: Mutex<BTreeMap<&'static str, BTreeMap<Arc<str>, SourceCounts>>>,
    /// Clock time of the last completed flush (`i64::MIN` before the first).
    last_flush_ms: AtomicI64,
    reloads_succeeded: AtomicU64,
    reloads_failed: AtomicU64,
    /// Whether the last reload attempt succeeded (1) or was refused (0).
    last_reload_ok: AtomicU64,
    /// Size of the write-ahead log, once a log reports it (see [`Telemetry::wal_size`]).
    wal_bytes: Mutex<Option<u64>>,
    /// Decompressed bytes of the ingest requests being decoded and folded now.
    bytes_in_flight: AtomicU64,
    /// Histograms (flush and sink latency) and the Prometheus rendering.
    exporter: export::Exporter,
}

/// Who lost samples to a tenant limit, why, and under which drop-priority entry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LimitDropKey {
    /// The tenant over its limit.
    pub tenant: String,
    /// `RateLimited`, `SeriesLimited`, or `Overloaded` (statsd samples dropped while ingest was saturated).
    pub reason: DropReason,
    /// The `limits.drop_priority` entry naming the series; empty for series no entry names.
    pub rule: String,
}

/// A request body counted in `tailfold_ingest_bytes_in_flight` while it lives.
#[derive(Debug)]
pub struct BytesInFlight<'a> {
    telemetry: &'a Telemetry,
    bytes: u64,
}

impl Drop for BytesInFlight<'_> {
    fn drop(&mut self) {
        self.telemetry.bytes_in_flight.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Tenants counted apart per protocol; more are counted under [`OTHER_TENANTS`].
pub const MAX_TENANTS: usize = 1_000;
/// Tenant name of points past [`MAX_TENANTS`], and of callers that name none.
pub const OTHER_TENANTS: &str = "<other>";

/// Points one protocol received for one tenant, and what became of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceCounts {
    /// Points received (valid or not).
    pub received: u64,
    /// Accepted and rejected points by reason and rule.
    pub outcome: Outcome,
}

/// Per remote sink: samples sent, dropped by reason, retries, backlog per shard.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkCounters {
    /// Samples delivered, by sink.
    pub sent: BTreeMap<String, u64>,
    /// Samples finally dropped, by (sink, reason).
    pub dropped: BTreeMap<(String, String), u64>,
    /// Failed attempts that will be retried, by sink.
    pub retries: BTreeMap<String, u64>,
    /// Series waiting to be sent, by (sink, shard).
    pub backlog: BTreeMap<(String, usize), u64>,
}

/// A copy of the counters at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TelemetrySnapshot {
    /// Remote sinks.
    pub sinks: SinkCounters,
    /// Points received over any protocol (valid or not).
    pub received_points: u64,
    /// Prometheus stale markers received: skipped on purpose, neither accepted nor rejected.
    pub stale_markers: u64,
    /// Accepted and rejected points by reason and rule.
    pub ingest: Outcome,
    /// Windows closed by flushes.
    pub windows_flushed: u64,
    /// Aggregate records built by flushes.
    pub records_emitted: u64,
    /// Records written by the embedded store.
    pub records_written: u64,
    /// Failed sink writes (records lost with them are counted in the log line).
    pub sink_errors: u64,
    /// Trace selections published.
    pub selections_emitted: u64,
    /// Selections a slow stream subscriber missed.
    pub selections_lagged: u64,
    /// statsd lines refused as malformed or unsupported (also in `ingest` as `invalid_series`).
    pub statsd_malformed_lines: u64,
    /// statsd metric names that sanitise like another one sent before (`a.b`, `a_b`),
    /// whose samples fold into that one's series; each name counted once.
    pub statsd_name_collisions: u64,
    /// statsd datagrams the kernel dropped because a socket's receive buffer
    /// was full (readers behind); their lines are unknown, so never in `received`.
    pub statsd_receive_dropped: u64,
    /// Samples dropped or refused by tenant limits, by tenant, reason and drop-priority rule
    /// (also in `ingest` as `rate_limited` / `series_limited`), and statsd samples
    /// dropped while ingest was saturated (`overloaded`).
    pub limit_drops: BTreeMap<LimitDropKey, u64>,
    /// Requests refused because ingest was saturated (RESOURCE_EXHAUSTED / 429 / statsd
    /// datagram dropped), by protocol (`grpc`, `remote_write`, `statsd`).
    pub overloaded_requests: BTreeMap<String, u64>,
    /// Received points and their outcome by (protocol, tenant).
    pub sources: BTreeMap<(&'static str, Arc<str>), SourceCounts>,
    /// Clock time of the last completed flush, if any.
    pub last_flush_ms: Option<i64>,
    /// Rule reloads that swapped in a new rule set.
    pub reloads_succeeded: u64,
    /// Rule reloads refused (invalid file); the old rules stayed.
    pub reloads_failed: u64,
    /// Whether the last reload attempt succeeded (true before any).
    pub last_reload_ok: bool,
    /// Write-ahead log size, when a log reports it.
    pub wal_bytes: Option<u64>,
    /// Decompressed bytes of ingest requests in flight.
    pub bytes_in_flight: u64,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            sinks: Mutex::default(),
            received_points: AtomicU64::default(),
            stale_markers: AtomicU64::default(),
            ingest: Mutex::default(),
            windows_flushed: AtomicU64::default(),
            records_emitted: AtomicU64::default(),
            records_written: AtomicU64::default(),
            sink_errors: AtomicU64::default(),
            selections_emitted: AtomicU64::default(),
            selections_lagged: AtomicU64::default(),
            statsd_malformed_lines: AtomicU64::default(),
            statsd_name_collisions: AtomicU64::default(),
            statsd_receive_dropped: AtomicU64::default(),
            limit_drops: Mutex::default(),
            overloaded_requests: Mutex::default(),
            sources: Mutex::default(),
            last_flush_ms: AtomicI64::new(i64::MIN),
            reloads_succeeded: AtomicU64::default(),
            reloads_failed: AtomicU64::default(),
            last_reload_ok: AtomicU64::new(1),
            wal_bytes: Mutex::default(),
            bytes_in_flight: AtomicU64::default(),
            exporter: export::Exporter::default(),
        }
    }
}

impl Telemetry {
    /// Counts points received over `protocol` for `tenant` in one request.
    pub fn received_by(&self, protocol: &'static str, tenant: &str, points: u64) {
        self.received_points.fetch_add(points, Ordering::Relaxed);
        self.with_source(protocol, tenant, |counts| counts.received += points);
    }

    /// Adds one request's tally for `protocol` and `tenant`.
    pub fn ingested_by(&self, protocol: &'static str, tenant: &str, outcome: &Outcome) {
        self.ingest.lock().merge(outcome);
        self.with_source(protocol, tenant, |counts| counts.outcome.merge(outcome));
    }

    fn with_source(&self, protocol: &'static str, tenant: &str, update: impl FnOnce(&mut SourceCounts)) {
        let mut sources = self.sources.lock();
        let tenants = sources.entry(protocol).or_default();
        if let Some(counts) = tenants.get_mut(tenant) {
            return update(counts);
        }
        let key = if tenants.len() < MAX_TENANTS {
            tenant
        } else {
            OTHER_TENANTS
        };
        update(tenants.entry(Arc::from(key)).or_default());
    }

    /// Notes a completed flush at clock time `now_ms` that took `duration`.
    pub fn flush_completed(&self, now_ms: i64, duration: std::time::Duration) {
        self.last_flush_ms.store(now_ms, Ordering::Relaxed);
        self.exporter.observe_flush(duration);
    }

    /// Notes how long one send to a remote sink took (successful or not).
    pub fn sink_send_latency(&self, sink: &str, duration: std::time::Duration) {
        self.exporter.observe_sink_send(sink, duration);
    }

    /// Counts a rules reload: `ok` when a new rule set was swapped in, else refused.
    pub fn rules_reloaded(&self, ok: bool) {
        let counter = if ok {
            &self.reloads_succeeded
        } else {
            &self.reloads_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.last_reload_ok.store(u64::from(ok), Ordering::Relaxed);
    }

    /// Notes that the rules file holds the rules in force (a reload found it
    /// unchanged), so an earlier refused reload no longer stands.
    pub fn rules_in_sync(&self) {
        self.last_reload_ok.store(1, Ordering::Relaxed);
    }

    /// The hook for a write-ahead log: reports its size on disk, exported as
    /// `tailfold_wal_size_bytes` from the first call on (absent without a log).
    pub fn wal_size(&self, bytes: u64) {
        *self.wal_bytes.lock() = Some(bytes);
    }

    /// The Prometheus exporter of these counters.
    pub fn exporter(&self) -> &export::Exporter {
        &self.exporter
    }

    /// Counts points received in one request (protocol and tenant unknown;
    /// prefer [`Telemetry::received_by`]).
    pub fn received(&self, points: u64) {
        self.received_by("unknown", OTHER_TENANTS, points);
    }

    /// Counts stale markers skipped in one request.
    pub fn stale_markers(&self, count: u64) {
        self.stale_markers.fetch_add(count, Ordering::Relaxed);
    }

    /// Adds one request's tally (protocol and tenant unknown; prefer [`Telemetry::ingested_by`]).
    pub fn ingested(&self, outcome: &Outcome) {
        self.ingested_by("unknown", OTHER_TENANTS, outcome);
    }

    /// Counts samples a remote sink delivered.
    pub fn sink_sent(&self, sink: &str, samples: u64) {
        *self.sinks.lock().sent.entry(sink.to_string()).or_default() += samples;
    }

    /// Counts samples a remote sink finally dropped, by reason.
    pub fn sink_dropped(&self, sink: &str, reason: &str, samples: u64) {
        *self
            .sinks
            .lock()
            .dropped
            .entry((sink.to_string(), reason.to_string()))
            .or_default() += samples;
    }

    /// Counts a failed send that will be retried.
    pub fn sink_retry(&self, sink: &str) {
        *self.sinks.lock().retries.entry(sink.to_string()).or_default() += 1;
    }

    /// Records the series waiting in one shard of a sink.
    pub fn sink_backlog(&self, sink: &str, shard: usize, series: u64) {
        self.sinks.lock().backlog.insert((sink.to_string(), shard), series);
    }

    /// Counts one flush.
    pub fn flushed(&self, windows: u64, records: u64) {
        self.windows_flushed.fetch_add(windows, Ordering::Relaxed);
        self.records_emitted.fetch_add(records, Ordering::Relaxed);
    }

    /// Counts records the store wrote.
    pub fn written(&self, records: u64) {
        self.records_written.fetch_add(records, Ordering::Relaxed);
    }

    /// Counts a failed sink write.
    pub fn sink_error(&self) {
        self.sink_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts selections published.
    pub fn selections(&self, count: u64) {
        self.selections_emitted.fetch_add(count, Ordering::Relaxed);
    }

    /// Counts selections a subscriber missed.
    pub fn selections_lagged(&self, count: u64) {
        self.selections_lagged.fetch_add(count, Ordering::Relaxed);
    }

    /// Counts statsd lines refused as malformed or unsupported.
    pub fn statsd_malformed(&self, lines: u64) {
        self.statsd_malformed_lines.fetch_add(lines, Ordering::Relaxed);
    }

    /// Counts statsd metric names found to sanitise like another one.
    pub fn statsd_name_collisions(&self, names: u64) {
        self.statsd_name_collisions.fetch_add(names, Ordering::Relaxed);
    }

    /// Counts statsd datagrams the kernel dropped on a full receive buffer.
    pub fn statsd_receive_dropped(&self, datagrams: u64) {
        if datagrams > 0 {
            self.statsd_receive_dropped.fetch_add(datagrams, Ordering::Relaxed);
        }
    }

    /// Counts samples of `tenant` a limit dropped (`reason`), under drop-priority entry `rule` ("" for none).
    pub fn limit_dropped(&self, tenant: &str, reason: DropReason, rule: &str, samples: u64) {
        if samples == 0 {
            return;
        }
        let key = LimitDropKey {
            tenant: tenant.to_string(),
            reason,
            rule: rule.to_string(),
        };
        *self.limit_drops.lock().entry(key).or_default() += samples;
    }

    /// Counts one request refused because ingest was saturated.
    pub fn overloaded(&self, protocol: &str) {
        *self.overloaded_requests.lock().entry(protocol.to_string()).or_default() += 1;
    }

    /// Counts `bytes` of a request body as in flight until the guard is dropped.
    pub fn bytes_in_flight(&self, bytes: usize) -> BytesInFlight<'_> {
        self.bytes_in_flight.fetch_add(bytes as u64, Ordering::Relaxed);
        BytesInFlight {
            telemetry: self,
            bytes: bytes as u64,
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> TelemetrySnapshot {
        TelemetrySnapshot {
            sinks: self.sinks.lock().clone(),
            received_points: self.received_points.load(Ordering::Relaxed),
            stale_markers: self.stale_markers.load(Ordering::Relaxed),
            ingest: self.ingest.lock().clone(),
            windows_flushed: self.windows_flushed.load(Ordering::Relaxed),
            records_emitted: self.records_emitted.load(Ordering::Relaxed),
            records_written: self.records_written.load(Ordering::Relaxed),
            sink_errors: self.sink_errors.load(Ordering::Relaxed),
            selections_emitted: self.selections_emitted.load(Ordering::Relaxed),
            selections_lagged: self.selections_lagged.load(Ordering::Relaxed),
            statsd_malformed_lines: self.statsd_malformed_lines.load(Ordering::Relaxed),
            statsd_name_collisions: self.statsd_name_collisions.load(Ordering::Relaxed),
            statsd_receive_dropped: self.statsd_receive_dropped.load(Ordering::Relaxed),
            limit_drops: self.limit_drops.lock().clone(),
            overloaded_requests: self.overloaded_requests.lock().clone(),
            bytes_in_flight: self.bytes_in_flight.load(Ordering::Relaxed),
            sources: self
                .sources
                .lock()
                .iter()
                .flat_map(|(protocol, tenants)| {
                    tenants
                        .iter()
                        .map(|(tenant, counts)| ((*protocol, Arc::clone(tenant)), counts.clone()))
                })
                .collect(),
            last_flush_ms: Some(self.last_flush_ms.load(Ordering::Relaxed)).filter(|&ms| ms != i64::MIN),
            reloads_succeeded: self.reloads_succeeded.load(Ordering::Relaxed),
            reloads_failed: self.reloads_failed.load(Ordering::Relaxed),
            last_reload_ok: self.last_reload_ok.load(Ordering::Relaxed) == 1,
            wal_bytes: *self.wal_bytes.lock(),
        }
    }
}

impl TelemetrySnapshot {
    /// One log line: totals and each non-zero drop reason.
    pub fn progress_line(&self) -> String {
        let mut line = format!(
            "received={} accepted={} rejected={} windows_flushed={} records={} written={} selections={} sink_errors={}",
            self.received_points,
            self.ingest.accepted,
            self.ingest.rejected_total(),
            self.windows_flushed,
            self.records_emitted,
            self.records_written,
            self.selections_emitted,
            self.sink_errors,
        );
        if self.stale_markers > 0 {
            line.push_str(&format!(" stale_markers={}", self.stale_markers));
        }
        for reason in DropReason::ALL {
            let count = self.ingest.rejected_for(reason);
            if count > 0 {
                line.push_str(&format!(" {}={count}", reason.as_str()));
            }
        }
        if self.statsd_malformed_lines > 0 {
            line.push_str(&format!(" statsd_malformed_lines={}", self.statsd_malformed_lines));
        }
        if self.statsd_name_collisions > 0 {
            line.push_str(&format!(" statsd_name_collisions={}", self.statsd_name_collisions));
        }
        if self.statsd_receive_dropped > 0 {
            line.push_str(&format!(" statsd_receive_dropped={}", self.statsd_receive_dropped));
        }
        for (protocol, requests) in &self.overloaded_requests {
            line.push_str(&format!(" overloaded_requests[{protocol}]={requests}"));
        }
        for (key, samples) in &self.limit_drops {
            line.push_str(&format!(
                " {}[{},{}]={samples}",
                key.reason.as_str(),
                key.tenant,
                if key.rule.is_empty() { "-" } else { &key.rule }
            ));
        }
        for (sink, sent) in &self.sinks.sent {
            line.push_str(&format!(" sent[{sink}]={sent}"));
        }
        for ((sink, reason), dropped) in &self.sinks.dropped {
            line.push_str(&format!(" dropped[{sink},{reason}]={dropped}"));
        }
        let backlog: u64 = self.sinks.backlog.values().sum();
        if backlog > 0 {
            line.push_str(&format!(" sink_backlog_series={backlog}"));
        }
        line
    }
}
