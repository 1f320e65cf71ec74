//! Self-metrics in the Prometheus text format, through the `metrics` facade.
//! Each service owns its recorder (never the process-global one), so several
//! services in one process keep separate counts. Counters kept as atomics in
//! [`super::Telemetry`] are copied into the recorder at scrape time; latency
//! histograms are recorded as they happen.

use std::collections::BTreeSet;
use std::time::Duration;

use metrics::{counter, gauge, histogram, with_local_recorder};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use parking_lot::Mutex;

use crate::model::DropReason;

use super::TelemetrySnapshot;

/// Bucket bounds of the latency histograms, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Gauges known at scrape time that are not in the counters: what the engine holds.
#[derive(Clone, Debug, Default)]
pub struct EngineGauges {
    /// Per (tenant, storage policy): outputs with an open window, and open windows.
    pub open: Vec<(String, String, u64, u64)>,
    /// Input series whose route is cached.
    pub cached_series: u64,
    /// Clock time of the scrape.
    pub now_ms: i64,
    /// When the rules in force were loaded (clock time).
    pub rules_loaded_ms: Option<i64>,
}

/// One service's Prometheus recorder and its handle.
pub struct Exporter {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Label sets of engine gauges set at the last scrape, so vanished ones are zeroed.
    open_labels: Mutex<BTreeSet<(String, String)>>,
    /// Serialises scrapes: values are set then rendered.
    scrape: Mutex<()>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Exporter").finish_non_exhaustive()
    }
}

impl Default for Exporter {
    fn default() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_string()), &LATENCY_BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        Exporter {
            recorder,
            handle,
            open_labels: Mutex::default(),
            scrape: Mutex::default(),
        }
    }
}

impl Exporter {
    /// Records one flush's duration.
    pub fn observe_flush(&self, duration: Duration) {
        with_local_recorder(&self.recorder, || {
            histogram!("tailfold_flush_duration_seconds").record(duration.as_secs_f64());
        });
    }

    /// Adds `n` to counter `name` with `labels` (the cluster's events: forwards,
    /// refusals, waits), recorded as they happen.
    pub fn count(&self, name: &'static str, labels: &[(&'static str, String)], n: u64) {
        let labels: Vec<metrics::Label> = labels
            .iter()
            .map(|(key, value)| metrics::Label::new(*key, value.clone()))
            .collect();
        with_local_recorder(&self.recorder, || counter!(name, labels).increment(n));
    }

    /// Sets gauge `name` with `labels` (the cluster's state: leadership, flush marks).
    pub fn set(&self, name: &'static str, labels: &[(&'static str, String)], value: f64) {
        let labels: Vec<metrics::Label> = labels
            .iter()
            .map(|(key, value)| metrics::Label::new(*key, value.clone()))
            .collect();
        with_local_recorder(&self.recorder, || gauge!(name, labels).set(value));
    }

    /// Records one remote-write send's duration.
    pub fn observe_sink_send(&self, sink: &str, duration: Duration) {
        let sink = sink.to_string();
        with_local_recorder(&self.recorder, || {
            histogram!("tailfold_sink_send_duration_seconds", "sink" => sink).record(duration.as_secs_f64());
        });
    }

    /// Drains recorded histogram samples into their buckets (call now and then,
    /// so memory does not grow between scrapes).
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Everything in the Prometheus text format.
    pub fn render(&self, snapshot: &TelemetrySnapshot, engine: &EngineGauges) -> String {
        let _scrape = self.scrape.lock();
        with_local_recorder(&self.recorder, || {
            set_counters(snapshot);
            self.set_engine_gauges(snapshot, engine);
        });
        self.handle.render()
    }

    fn set_engine_gauges(&self, snapshot: &TelemetrySnapshot, engine: &EngineGauges) {
        let mut known = self.open_labels.lock();
        let mut seen = BTreeSet::new();
        for (tenant, policy, series, windows) in &engine.open {
            let labels = [("tenant", tenant.clone()), ("policy", policy.clone())];
            gauge!("tailfold_active_series", &labels).set(*series as f64);
            gauge!("tailfold_open_windows", &labels).set(*windows as f64);
            seen.insert((tenant.clone(), policy.clone()));
        }
        for (tenant, policy) in known.difference(&seen) {
            let labels = [("tenant", tenant.clone()), ("policy", policy.clone())];
            gauge!("tailfold_active_series", &labels).set(0.0);
            gauge!("tailfold_open_windows", &labels).set(0.0);
        }
        known.extend(seen);
        gauge!("tailfold_cached_series").set(engine.cached_series as f64);
        let lag_s = snapshot
            .last_flush_ms
            .map_or(0.0, |flushed| (engine.now_ms - flushed).max(0) as f64 / 1000.0);
        gauge!("tailfold_flush_lag_seconds").set(lag_s);
        if let Some(loaded) = engine.rules_loaded_ms {
            gauge!("tailfold_rules_loaded_timestamp_seconds").set(loaded as f64 / 1000.0);
        }
    }
}

fn set_counters(snapshot: &TelemetrySnapshot) {
    for ((protocol, tenant), counts) in &snapshot.sources {
        let labels = [("protocol", protocol.to_string()), ("tenant", tenant.to_string())];
        counter!("tailfold_samples_received_total", &labels).absolute(counts.received);
        counter!("tailfold_samples_accepted_total", &labels).absolute(counts.outcome.accepted);
        if counts.outcome.partial > 0 {
            counter!("tailfold_samples_partially_accepted_total", &labels).absolute(counts.outcome.partial);
        }
        for reason in [DropReason::TooLate, DropReason::KindConflict] {
            let count = counts.outcome.output_refusals_for(reason);
            if count > 0 {
                let labels = [
                    ("protocol", protocol.to_string()),
                    ("tenant", tenant.to_string()),
                    ("reason", reason.as_str().to_string()),
                ];
                counter!("tailfold_output_refusals_total", &labels).absolute(count);
            }
        }
        for reason in DropReason::ALL {
            // Limit drops are counted per drop-priority entry below; here only what no entry names.
            let named: u64 = counts
                .outcome
                .by_limit
                .iter()
                .filter(|(why, rule, _)| *why == reason && !rule.is_empty())
                .map(|(_, _, count)| count)
                .sum();
            let count = counts.outcome.rejected_for(reason).saturating_sub(named);
            if count == 0 || reason == DropReason::DroppedByRule {
                continue;
            }
            let labels = [
                ("protocol", protocol.to_string()),
                ("tenant", tenant.to_string()),
                ("reason", reason.as_str().to_string()),
            ];
            counter!("tailfold_samples_dropped_total", &labels).absolute(count);
        }
        for (rule, count) in &counts.outcome.by_rule {
            let labels = [
                ("protocol", protocol.to_string()),
                ("tenant", tenant.to_string()),
                ("reason", DropReason::DroppedByRule.as_str().to_string()),
                ("rule", rule.to_string()),
            ];
            counter!("tailfold_samples_dropped_total", &labels).absolute(*count);
        }
        for (reason, rule, count) in counts.outcome.by_limit.iter().filter(|(_, rule, _)| !rule.is_empty()) {
            let labels = [
                ("protocol", protocol.to_string()),
                ("tenant", tenant.to_string()),
                ("reason", reason.as_str().to_string()),
                ("rule", rule.to_string()),
            ];
            counter!("tailfold_samples_dropped_total", &labels).absolute(*count);
        }
    }
    counter!("tailfold_stale_markers_total").absolute(snapshot.stale_markers);
    counter!("tailfold_statsd_malformed_lines_total").absolute(snapshot.statsd_malformed_lines);
    counter!("tailfold_statsd_name_collisions_total").absolute(snapshot.statsd_name_collisions);
    counter!("tailfold_statsd_receive_dropped_datagrams_total").absolute(snapshot.statsd_receive_dropped);
    counter!("tailfold_windows_flushed_total").absolute(snapshot.windows_flushed);
    counter!("tailfold_records_emitted_total").absolute(snapshot.records_emitted);
    counter!("tailfold_records_written_total").absolute(snapshot.records_written);
    counter!("tailfold_sink_errors_total").absolute(snapshot.sink_errors);
    counter!("tailfold_selections_emitted_total").absolute(snapshot.selections_emitted);
    counter!("tailfold_selections_lagged_total").absolute(snapshot.selections_lagged);
    for (sink, sent) in &snapshot.sinks.sent {
        counter!("tailfold_sink_samples_sent_total", "sink" => sink.clone()).absolute(*sent);
    }
    for ((sink, reason), dropped) in &snapshot.sinks.dropped {
        counter!("tailfold_sink_samples_dropped_total", "sink" => sink.clone(), "reason" => reason.clone())
            .absolute(*dropped);
    }
    for (sink, retries) in &snapshot.sinks.retries {
        counter!("tailfold_sink_retries_total", "sink" => sink.clone()).absolute(*retries);
    }
    let mut backlog: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    for ((sink, _), series) in &snapshot.sinks.backlog {
        *backlog.entry(sink).or_default() += series;
    }
    for (sink, series) in backlog {
        gauge!("tailfold_sink_backlog_series", "sink" => sink.to_string()).set(series as f64);
    }
    counter!("tailfold_rules_reloads_total", "result" => "success").absolute(snapshot.reloads_succeeded);
    counter!("tailfold_rules_reloads_total", "result" => "failure").absolute(snapshot.reloads_failed);
    gauge!("tailfold_rules_last_reload_success").set(if snapshot.last_reload_ok { 1.0 } else { 0.0 });
    if let Some(bytes) = snapshot.wal_bytes {
        gauge!("tailfold_wal_size_bytes").set(bytes as f64);
    }
    gauge!("tailfold_ingest_bytes_in_flight").set(snapshot.bytes_in_flight as f64);
}
