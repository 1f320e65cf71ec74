//! The process config (`config/tailfold.yaml`): listen addresses, engine and
//! flush settings, ingest limits, the embedded store and trace selections.
//! Every field has a documented default; [`ServiceSettings::load`] checks it all.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::aggregate::histogram::HistogramConfig;
use crate::engine::{default_shards, EngineSettings};
use crate::model::parse_duration_ms;
use crate::sink::remote_write::RemoteWriteSettings;
use crate::wal::WalSettings;

use super::cluster::{check_cluster, ClusterConfig, ClusterSettings};
use super::error::ConfigError;
use super::limits::{check_limits, LimitSettings, LimitsConfig};
use super::operations::{check_profile, ProfileConfig, ReloadConfig};
use super::otlp::{check_otlp, OtlpConfig, OtlpSettings};
use super::remote_write::{check_remote_write, RemoteWriteConfig};
use super::security::{
    check_admin_token, check_auth, check_tls, AdminToken, AuthConfig, AuthSettings, TlsConfig, TlsSettings,
};
use super::statsd::{check_statsd, StatsdConfig, StatsdSettings};
use crate::profile::ProfileSettings;

/// Defaults of every process setting, in one place.
pub mod defaults {
    /// gRPC listen address.
    pub const GRPC_LISTEN: &str = "127.0.0.1:4770";
    /// HTTP listen address (Prometheus remote write, health).
    pub const HTTP_LISTEN: &str = "127.0.0.1:4771";
    /// Rules file, relative to the config file.
    pub const RULES_FILE: &str = "rules.yaml";
    /// Data directory, relative to the working directory.
    pub const DATA_DIR: &str = "data";
    /// Refuse samples more than this far in the future.
    pub const FUTURE_TOLERANCE_MS: u64 = 60_000;
    /// How often the flush loop looks for due windows.
    pub const FLUSH_INTERVAL_MS: u64 = 1_000;
    /// Random delay added to each flush tick, so many instances don't flush in lockstep.
    pub const FLUSH_JITTER_MS: u64 = 100;
    /// State kept between windows per series is forgotten after this long without data.
    pub const IDLE_SERIES_MS: u64 = 3_600_000;
    /// Inputs a gauge rollup holds the last value of, per output and policy.
    pub const ROLLUP_LAST_MAX_INPUTS: usize = 10_000;
    /// A gauge rollup input's held value stops counting after this long without data.
    pub const ROLLUP_LAST_IDLE_MS: u64 = 300_000;
    /// Histogram scale: base 2^(2^-6), about 0.54 % worst-case relative error.
    pub const HISTOGRAM_SCALE: i8 = 6;
    /// Buckets per sign before the histogram downscales.
    pub const HISTOGRAM_MAX_BUCKETS: usize = 2048;
    /// One exemplar reservoir per histogram bucket: a quantile's exemplar lies in its bucket.
    pub const HISTOGRAM_EXEMPLAR_SCALE_REDUCTION: u8 = 0;
    /// Exemplar reservoirs per histogram before they coarsen: a window of 100
    /// traced samples then fits in 2 KiB (issue 5's budget).
    pub const HISTOGRAM_MAX_EXEMPLARS: u32 = 24;
    /// Header (HTTP) / metadata key (gRPC) naming the tenant.
    pub const TENANT_HEADER: &str = "x-scope-orgid";
    /// Tenant of requests without the header.
    pub const DEFAULT_TENANT: &str = "default";
    /// Labels per series.
    pub const MAX_LABELS_PER_SERIES: usize = 64;
    /// Bytes per label name.
    pub const MAX_LABEL_NAME_BYTES: usize = 256;
    /// Bytes per label value.
    pub const MAX_LABEL_VALUE_BYTES: usize = 4096;
    /// Points per request.
    pub const MAX_POINTS_PER_REQUEST: usize = 1_000_000;
    /// Series per request (Prometheus sends at most a few thousand).
    pub const MAX_SERIES_PER_REQUEST: usize = 100_000;
    /// Encoded request size.
    pub const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;
    /// Decompressed size of a compressed request body (remote write's snappy block).
    pub const MAX_DECOMPRESSED_BYTES: usize = 16 * 1024 * 1024;
    /// Selections buffered per stream subscriber before it is told it lagged.
    pub const SELECTION_STREAM_BUFFER: usize = 65_536;
    /// Remote write: series per request.
    pub const REMOTE_WRITE_MAX_SERIES_PER_REQUEST: usize = 2_000;
    /// Remote write: parallel senders per sink.
    pub const REMOTE_WRITE_SHARDS: usize = 2;
    /// Remote write: per-request timeout.
    pub const REMOTE_WRITE_TIMEOUT_MS: u64 = 10_000;
    /// Remote write: first retry delay.
    pub const REMOTE_WRITE_MIN_BACKOFF_MS: u64 = 100;
    /// Remote write: longest retry delay.
    pub const REMOTE_WRITE_MAX_BACKOFF_MS: u64 = 10_000;
    /// Remote write: series buffered per shard before the oldest are dropped.
    pub const REMOTE_WRITE_MAX_BUFFERED_SERIES: usize = 500_000;
    /// Remote write: bytes of each shard's spill file before the oldest requests are dropped.
    pub const REMOTE_WRITE_MAX_SPILL_BYTES: u64 = 1024 * 1024 * 1024;
    /// Grace period to flush and drain on shutdown.
    pub const SHUTDOWN_GRACE_MS: u64 = 10_000;
    /// Write-ahead log: size past which a new segment is started.
    pub const WAL_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
    /// Interval of the progress line in the log.
    pub const PROGRESS_INTERVAL_MS: u64 = 10_000;
    /// Tenant of statsd samples (the protocol has no way to name one).
    pub const STATSD_TENANT: &str = "default";
    /// Largest statsd datagram read whole; the most a UDP datagram can carry.
    pub const STATSD_MAX_PACKET_BYTES: usize = 65_535;
    /// statsd gauges whose last value is held for relative changes.
    pub const STATSD_MAX_GAUGES: usize = 100_000;
    /// Idle time after which a held statsd gauge value is forgotten (1 h).
    pub const STATSD_GAUGE_IDLE_MS: u64 = 3_600_000;
    /// statsd datagrams folded as one engine batch at most (read 64 per `recvmmsg` call).
    pub const STATSD_BATCH_DATAGRAMS: usize = 1024;
    /// Longest a statsd reader keeps a batch open for more datagrams (ms).
    pub const STATSD_BATCH_WAIT_MS: u64 = 25;
    /// `SO_RCVBUF` asked for each statsd socket (Linux caps it at `net.core.rmem_max`).
    pub const STATSD_RECEIVE_BUFFER_BYTES: usize = 4 * 1024 * 1024;
    /// Most statsd reader threads chosen by default (one per core up to this).
    pub const STATSD_MAX_DEFAULT_READERS: usize = 4;

    /// statsd sockets and reader threads: one per core, at most [`STATSD_MAX_DEFAULT_READERS`].
    pub fn statsd_readers() -> usize {
        std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(STATSD_MAX_DEFAULT_READERS)
    }
    /// Metric name of OTLP span durations (seconds).
    pub const OTLP_SPAN_METRIC: &str = "span_duration_seconds";
    /// Attribute-to-label mappings allowed for spans (bounds cardinality).
    pub const OTLP_MAX_SPAN_ATTRIBUTES: usize = 16;
    /// Exemplars kept per `above(threshold)` output and window: the slowest traces beyond it.
    pub const ABOVE_MAX_TRACES: usize = 10;
    /// Distinct members a set window counts exactly before it becomes a sketch.
    pub const SET_MAX_EXACT_VALUES: usize = 1_000;
    /// Ingest requests decoded and folded at once, over gRPC, remote write and statsd.
    pub const MAX_INFLIGHT_REQUESTS: usize = 64;
    /// Profiler accounting period.
    pub const PROFILE_PERIOD_MS: u64 = 60_000;
    /// Metric names the profiler tracks.
    pub const PROFILE_MAX_METRICS: usize = 10_000;
    /// How often the rules file is checked for changes.
    pub const RELOAD_WATCH_INTERVAL_MS: u64 = 1_000;
}

/// The whole process config.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessConfig {
    /// gRPC server (ingest `Write` and the `Selections` stream).
    pub grpc: GrpcConfig,
    /// HTTP server (Prometheus remote write `POST /api/v1/write`, `/-/healthy`, `/-/ready`).
    pub http: HttpConfig,
    /// Rules file (mapping, drop and rollup rules), relative to this config file. Default `rules.yaml`.
    pub rules_file: Option<PathBuf>,
    /// Directory of the embedded store, selection files and write-ahead log, relative to the working
    /// directory. Default `data`.
    pub data_dir: Option<PathBuf>,
    /// Window engine.
    pub engine: EngineConfig,
    /// Flush loop.
    pub flush: FlushConfig,
    /// Limits on what ingest accepts.
    pub ingest: IngestConfig,
    /// Embedded file store (the default sink).
    pub store: StoreConfig,
    /// Trace selections (exemplars picked per quantile).
    pub selections: SelectionsConfig,
    /// Prometheus remote-write sinks (Prometheus, Mimir, M3, VictoriaMetrics); each takes the storage policies it lists.
    pub remote_write: Vec<RemoteWriteConfig>,
    /// statsd / DogStatsD ingest over UDP; off unless `statsd.listen` is set.
    pub statsd: StatsdConfig,
    /// Write-ahead log: acknowledge a write only once it is on disk, replay it after a crash. Off by default.
    pub wal: WalConfig,
    /// OpenTelemetry (OTLP/gRPC and OTLP/HTTP) ingest of spans and metrics; off unless a listen address is set.
    pub otlp: OtlpConfig,
    /// Logs.
    pub log: LogConfig,
    /// Per-tenant rate and active-series limits, drop priority, requests in flight.
    pub limits: LimitsConfig,
    /// The metrics profiler (`GET /api/v1/profile`, `tailfold top`).
    pub profile: ProfileConfig,
    /// Rules hot reload.
    pub reload: ReloadConfig,
    /// Per-tenant bearer tokens on ingest and the selection stream; off unless tokens are listed.
    pub auth: AuthConfig,
    /// Membership in a cluster coordinated through etcd; absent means a single node.
    pub cluster: Option<ClusterConfig>,
}

/// Write-ahead log settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WalConfig {
    /// Log every accepted batch (fsynced, group commit) before acknowledging it; replay it on start. Default false.
    pub enabled: Option<bool>,
    /// Directory of the log segments and the flush checkpoint. Default `<data_dir>/wal`.
    pub dir: Option<PathBuf>,
    /// A new segment is started past this many bytes. Default 67108864.
    pub segment_bytes: Option<u64>,
}

/// gRPC server settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Listen address, `host:port`. Default `127.0.0.1:4770`; port 0 picks a free port.
    pub listen: Option<String>,
    /// Serve gRPC over TLS (rustls) with this certificate; plaintext is then refused. Default: plaintext.
    pub tls: Option<TlsConfig>,
}

/// HTTP server settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address, `host:port`. Default `127.0.0.1:4771`; port 0 picks a free port.
    pub listen: Option<String>,
    /// Serve HTTP over TLS (rustls) with this certificate; plaintext is then refused. Default: plaintext.
    pub tls: Option<TlsConfig>,
}

/// Engine settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Number of shards. Default 32 per core (a flush locks one shard at a time, so more shards mean shorter ingest stalls).
    pub shards: Option<usize>,
    /// Samples whose timestamp is further ahead of the clock are refused (`too_far_in_future`). Default 60000.
    pub future_tolerance_ms: Option<u64>,
    /// Allowed lateness per resolution, e.g. `{"10s": 5000, "1m": 30000}`. Unlisted
    /// resolutions get half a window, clamped to [1 s, 60 s].
    pub lateness_ms: BTreeMap<String, u64>,
    /// Histogram layout of distributions.
    pub histogram: HistogramSettings,
    /// Per-series state kept between windows (last running total of a cumulative
    /// counter, running `total` outputs) is forgotten after this long without
    /// data; the series then starts afresh, as after a counter reset. Default 3600000.
    pub idle_series_ms: Option<u64>,
    /// Distinct members a set window (statsd `|s`) counts exactly (1..=1000000); past it, a HyperLogLog sketch of 16 KiB estimates the count with a standard error of 0.81 %. Default 1000.
    pub set_max_exact_values: Option<usize>,
    /// A gauge rollup's `last` counts each input's latest value, held across
    /// windows the input misses: at most this many inputs per rollup output
    /// and policy (those heard from longest ago go first). Default 10000.
    pub rollup_last_max_inputs: Option<usize>,
    /// A held input value stops counting in a gauge rollup's `last` once the
    /// input has sent nothing for this long. Default 300000.
    pub rollup_last_idle_ms: Option<u64>,
}

/// Histogram layout.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HistogramSettings {
    /// Initial scale (-10..=8). Default 6: relative error at most 0.54 %.
    pub scale: Option<i8>,
    /// Buckets per sign before downscaling. Default 2048.
    pub max_buckets: Option<usize>,
    /// Exemplar reservoirs per `2^n` adjacent buckets (0..=18). Default 0: one
    /// per bucket, so a quantile's exemplar lies in the quantile's bucket; n > 0
    /// keeps fewer exemplars (less memory per window) and the exemplar lies in
    /// the bucket at scale `scale - n` holding the quantile's.
    pub exemplar_scale_reduction: Option<u8>,
    /// Exemplar reservoirs one histogram (one window of one output) keeps, at
    /// least 8; 0 for no limit. Default 24. While a window's traced samples fall
    /// in at most this many buckets (or `2^n`-bucket groups), each keeps its own
    /// exemplar; past it, reservoirs are re-keyed one scale coarser and merged
    /// uniformly, as often as needed, so a quantile's exemplar lies in the
    /// coarser bucket holding the quantile's.
    pub max_exemplars: Option<u32>,
}

/// Flush loop settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FlushConfig {
    /// How often due windows are looked for. Default 1000.
    pub interval_ms: Option<u64>,
    /// Random delay up to this much added to each tick. Default 100.
    pub jitter_ms: Option<u64>,
    /// On shutdown, time allowed to flush every open window and drain sinks; remote-write sinks keep
    /// retrying for up to half of it before what is left is spilled (with `spill_dir`) or counted as dropped. Default 10000.
    pub shutdown_grace_ms: Option<u64>,
    /// Interval of the progress line (received, accepted, rejected, flushed) in the log; 0 turns it off. Default 10000.
    pub progress_interval_ms: Option<u64>,
}

/// Ingest limits and tenancy.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// HTTP header / gRPC metadata key naming the tenant. Default `x-scope-orgid`.
    pub tenant_header: Option<String>,
    /// Tenant of requests that do not name one. Default `default`.
    pub default_tenant: Option<String>,
    /// Labels per series (more: the series is rejected). Default 64.
    pub max_labels_per_series: Option<usize>,
    /// Bytes per label name. Default 256.
    pub max_label_name_bytes: Option<usize>,
    /// Bytes per label value. Default 4096.
    pub max_label_value_bytes: Option<usize>,
    /// Points per request (more: the request is refused). Default 1000000.
    pub max_points_per_request: Option<usize>,
    /// Series per request (more: the request is refused before any is decoded). Default 100000.
    pub max_series_per_request: Option<usize>,
    /// Encoded request size in bytes. Default 16777216.
    pub max_request_bytes: Option<usize>,
    /// Decompressed size in bytes of a compressed body (remote write snappy), checked before decompressing. Default 16777216.
    pub max_decompressed_bytes: Option<usize>,
}

/// Embedded file store settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Write aggregates under `<data_dir>/store`. Default true.
    pub enabled: Option<bool>,
    /// Length of a segment file. Default: one hour, at least one window, at most half the retention.
    pub segment_duration: Option<String>,
}

/// Trace selection settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SelectionsConfig {
    /// Also write selections as JSON lines under `<data_dir>/selections`. Default true.
    pub file: Option<bool>,
    /// Selections buffered per stream subscriber. Default 65536.
    pub stream_buffer: Option<usize>,
    /// Traces selected per `above(threshold)` (`below(threshold)`) output and window: exactly the slowest (fastest) traced samples beyond the threshold, most extreme first. Default 10.
    pub above_max_traces: Option<usize>,
}

/// Log settings (the level comes from `RUST_LOG`, default `info`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (default) or `json`.
    pub format: Option<String>,
}

/// Checked settings of the whole service, built from a [`ProcessConfig`].
#[derive(Clone, Debug)]
pub struct ServiceSettings {
    /// Where the config was read from (for messages).
    pub source: PathBuf,
    /// gRPC listen address.
    pub grpc_listen: SocketAddr,
    /// HTTP listen address.
    pub http_listen: SocketAddr,
    /// Rules file to load.
    pub rules_file: PathBuf,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Engine settings.
    pub engine: EngineSettings,
    /// Flush tick.
    pub flush_interval_ms: u64,
    /// Flush jitter.
    pub flush_jitter_ms: u64,
    /// Shutdown grace.
    pub shutdown_grace_ms: u64,
    /// Progress log interval (0 = off).
    pub progress_interval_ms: u64,
    /// Ingest limits.
    pub ingest: IngestLimits,
    /// Store on/off.
    pub store_enabled: bool,
    /// Segment length override.
    pub segment_duration_ms: Option<u64>,
    /// Selection file on/off.
    pub selections_file: bool,
    /// Selection stream buffer.
    pub selection_stream_buffer: usize,
    /// Remote-write sinks.
    pub remote_write: Vec<RemoteWriteSettings>,
    /// statsd ingest; `None` when `statsd.listen` is not set.
    pub statsd: Option<StatsdSettings>,
    /// Write-ahead log; `None` when `wal.enabled` is not true.
    pub wal: Option<WalSettings>,
    /// OTLP ingest (listeners off unless set).
    pub otlp: OtlpSettings,
    /// JSON logs.
    pub log_json: bool,
    /// Tenant limits, drop priority and ingest backpressure.
    pub limits: LimitSettings,
    /// The profiler; `None` when `profile.enabled` is false.
    pub profile: Option<ProfileSettings>,
    /// Rules file check interval (0 = not watched).
    pub reload_watch_interval_ms: u64,
    /// Bearer tokens; `None` when auth is off.
    pub auth: Option<AuthSettings>,
    /// Cluster membership; `None` for a single node.
    pub cluster: Option<ClusterSettings>,
    /// The admin token; `None`: admin endpoints answer loopback listeners only.
    pub admin_token: Option<AdminToken>,
    /// TLS of the gRPC listener; `None` for plaintext.
    pub grpc_tls: Option<TlsSettings>,
    /// TLS of the HTTP listener; `None` for plaintext.
    pub http_tls: Option<TlsSettings>,
}

/// Checked ingest limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestLimits {
    /// Metadata key of the tenant (lowercase).
    pub tenant_header: String,
    /// Tenant when none is named.
    pub default_tenant: String,
    /// Labels per series.
    pub max_labels_per_series: usize,
    /// Bytes per label name.
    pub max_label_name_bytes: usize,
    /// Bytes per label value.
    pub max_label_value_bytes: usize,
    /// Points per request.
    pub max_points_per_request: usize,
    /// Series per request.
    pub max_series_per_request: usize,
    /// Encoded request bytes.
    pub max_request_bytes: usize,
    /// Decompressed request bytes.
    pub max_decompressed_bytes: usize,
}

impl Default for IngestLimits {
    fn default() -> Self {
        IngestLimits {
            tenant_header: defaults::TENANT_HEADER.to_string(),
            default_tenant: defaults::DEFAULT_TENANT.to_string(),
            max_labels_per_series: defaults::MAX_LABELS_PER_SERIES,
            max_label_name_bytes: defaults::MAX_LABEL_NAME_BYTES,
            max_label_value_bytes: defaults::MAX_LABEL_VALUE_BYTES,
            max_points_per_request: defaults::MAX_POINTS_PER_REQUEST,
            max_series_per_request: defaults::MAX_SERIES_PER_REQUEST,
            max_request_bytes: defaults::MAX_REQUEST_BYTES,
            max_decompressed_bytes: defaults::MAX_DECOMPRESSED_BYTES,
        }
    }
}

impl ServiceSettings {
    /// Reads and checks the config file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Checks config text as if read from `path` (relative paths resolve against its folder).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let config: ProcessConfig = if text.trim().is_empty() {
            ProcessConfig::default()
        } else {
            serde_yaml::from_str(text).map_err(|error| ConfigError::Yaml {
                file: file.clone(),
                message: error.to_string(),
            })?
        };
        let invalid = |field: &str, problem: String| ConfigError::Field {
            file: file.clone(),
            field: field.to_string(),
            problem,
        };

        let listen = config.grpc.listen.as_deref().unwrap_or(defaults::GRPC_LISTEN);
        let grpc_listen: SocketAddr = listen.parse().map_err(|_| {
            invalid(
                "grpc.listen",
                format!("{listen:?} is not a host:port address such as 127.0.0.1:4770"),
            )
        })?;

        let listen = config.http.listen.as_deref().unwrap_or(defaults::HTTP_LISTEN);
        let http_listen: SocketAddr = listen.parse().map_err(|_| {
            invalid(
                "http.listen",
                format!("{listen:?} is not a host:port address such as 127.0.0.1:4771"),
            )
        })?;

        let base = path.parent().unwrap_or(Path::new("."));
        let rules_file = base.join(config.rules_file.as_deref().unwrap_or(Path::new(defaults::RULES_FILE)));
        let data_dir = config
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(defaults::DATA_DIR));

        let mut lateness_overrides = Vec::new();
        for (resolution, lateness) in &config.engine.lateness_ms {
            let resolution_ms = parse_duration_ms(resolution)
                .map_err(|error| invalid(&format!("engine.lateness_ms.{resolution}"), error.to_string()))?;
            lateness_overrides.push((resolution_ms, *lateness));
        }
        let histogram = HistogramConfig {
            scale: config.engine.histogram.scale.unwrap_or(defaults::HISTOGRAM_SCALE),
            max_buckets: config
                .engine
                .histogram
                .max_buckets
                .unwrap_or(defaults::HISTOGRAM_MAX_BUCKETS),
            exemplar_scale_reduction: config
                .engine
                .histogram
                .exemplar_scale_reduction
                .unwrap_or(defaults::HISTOGRAM_EXEMPLAR_SCALE_REDUCTION),
            max_exemplars: config
                .engine
                .histogram
                .max_exemplars
                .unwrap_or(defaults::HISTOGRAM_MAX_EXEMPLARS),
            ..HistogramConfig::default()
        };
        histogram
            .validate()
            .map_err(|error| invalid("engine.histogram", error.to_string()))?;
        let shards = config.engine.shards.unwrap_or_else(default_shards);
        if shards == 0 || shards > 4096 {
            return Err(invalid("engine.shards", format!("{shards} is outside 1..=4096")));
        }

        let ingest = &config.ingest;
        let limits = IngestLimits {
            tenant_header: ingest
                .tenant_header
                .clone()
                .unwrap_or_else(|| defaults::TENANT_HEADER.to_string())
                .to_ascii_lowercase(),
            default_tenant: ingest
                .default_tenant
                .clone()
                .unwrap_or_else(|| defaults::DEFAULT_TENANT.to_string()),
            max_labels_per_series: ingest.max_labels_per_series.unwrap_or(defaults::MAX_LABELS_PER_SERIES),
            max_label_name_bytes: ingest.max_label_name_bytes.unwrap_or(defaults::MAX_LABEL_NAME_BYTES),
            max_label_value_bytes: ingest.max_label_value_bytes.unwrap_or(defaults::MAX_LABEL_VALUE_BYTES),
            max_points_per_request: ingest
                .max_points_per_request
                .unwrap_or(defaults::MAX_POINTS_PER_REQUEST),
            max_series_per_request: ingest
                .max_series_per_request
                .unwrap_or(defaults::MAX_SERIES_PER_REQUEST),
            max_request_bytes: ingest.max_request_bytes.unwrap_or(defaults::MAX_REQUEST_BYTES),
            max_decompressed_bytes: ingest
                .max_decompressed_bytes
                .unwrap_or(defaults::MAX_DECOMPRESSED_BYTES),
        };
        if axum::http::HeaderName::from_bytes(limits.tenant_header.as_bytes()).is_err() {
            return Err(invalid(
                "ingest.tenant_header",
                format!("{:?} is not an HTTP header name", limits.tenant_header),
            ));
        }
        if limits.default_tenant.is_empty() {
            return Err(invalid("ingest.default_tenant", "must not be empty".to_string()));
        }
        for (field, value) in [
            ("ingest.max_labels_per_series", limits.max_labels_per_series),
            ("ingest.max_label_name_bytes", limits.max_label_name_bytes),
            ("ingest.max_label_value_bytes", limits.max_label_value_bytes),
            ("ingest.max_points_per_request", limits.max_points_per_request),
            ("ingest.max_series_per_request", limits.max_series_per_request),
            ("ingest.max_request_bytes", limits.max_request_bytes),
            ("ingest.max_decompressed_bytes", limits.max_decompressed_bytes),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be greater than zero".to_string()));
            }
        }
        let segment_duration_ms = match &config.store.segment_duration {
            Some(text) => {
                Some(parse_duration_ms(text).map_err(|error| invalid("store.segment_duration", error.to_string()))?)
            }
            None => None,
        };
        let mut remote_write = Vec::new();
        for (index, sink) in config.remote_write.iter().enumerate() {
            let mut checked = check_remote_write(index, sink, config.engine.idle_series_ms, &invalid)?;
            // Half the grace period for retrying at shutdown; the flush and the rest need the other half.
            checked.shutdown_drain_ms = config.flush.shutdown_grace_ms.unwrap_or(defaults::SHUTDOWN_GRACE_MS) / 2;
            if remote_write
                .iter()
                .any(|other: &RemoteWriteSettings| other.name == checked.name)
            {
                return Err(invalid(
                    &format!("remote_write[{index}].name"),
                    format!("{:?} is used by another sink", checked.name),
                ));
            }
            remote_write.push(checked);
        }
        let statsd = check_statsd(&config.statsd, &limits, &invalid)?;
        let mut otlp = check_otlp(&config.otlp, &invalid)?;
        otlp.tls = check_tls(config.otlp.tls.as_ref(), "otlp", base, &invalid)?;
        let above_max_traces = config.selections.above_max_traces.unwrap_or(defaults::ABOVE_MAX_TRACES);
        if above_max_traces == 0 || above_max_traces > 1000 {
            return Err(invalid(
                "selections.above_max_traces",
                format!("{above_max_traces} is outside 1..=1000"),
            ));
        }
        let auth = check_auth(&config.auth, base, &invalid)?;
        let admin_token = check_admin_token(&config.auth, auth.as_ref(), base, &invalid)?;
        let grpc_tls = check_tls(config.grpc.tls.as_ref(), "grpc", base, &invalid)?;
        let cluster = config
            .cluster
            .as_ref()
            .map(|cluster| check_cluster(cluster, &invalid))
            .transpose()?;
        let http_tls = check_tls(config.http.tls.as_ref(), "http", base, &invalid)?;
        let log_json = match config.log.format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                return Err(invalid(
                    "log.format",
                    format!("{other:?} is neither \"text\" nor \"json\""),
                ))
            }
        };
        let flush_interval_ms = config.flush.interval_ms.unwrap_or(defaults::FLUSH_INTERVAL_MS);
        if flush_interval_ms == 0 {
            return Err(invalid("flush.interval_ms", "must be greater than zero".to_string()));
        }
        let selection_stream_buffer = config
            .selections
            .stream_buffer
            .unwrap_or(defaults::SELECTION_STREAM_BUFFER);
        if selection_stream_buffer == 0 {
            return Err(invalid(
                "selections.stream_buffer",
                "must be greater than zero".to_string(),
            ));
        }

        let wal = match config.wal.enabled {
            Some(true) => {
                let segment_bytes = config.wal.segment_bytes.unwrap_or(defaults::WAL_SEGMENT_BYTES);
                if segment_bytes == 0 {
                    return Err(invalid("wal.segment_bytes", "must be greater than zero".to_string()));
                }
                Some(WalSettings {
                    dir: config.wal.dir.clone().unwrap_or_else(|| data_dir.join("wal")),
                    segment_bytes,
                })
            }
            _ => None,
        };
        let set_max_exact_values = config
            .engine
            .set_max_exact_values
            .unwrap_or(defaults::SET_MAX_EXACT_VALUES);
        if !(1..=1_000_000).contains(&set_max_exact_values) {
            return Err(invalid(
                "engine.set_max_exact_values",
                format!("{set_max_exact_values} is outside 1..=1000000"),
            ));
        }
        let idle_series_ms = config.engine.idle_series_ms.unwrap_or(defaults::IDLE_SERIES_MS);
        let limit_settings = check_limits(&config.limits, idle_series_ms, &invalid)?;
        let profile = check_profile(&config.profile, &invalid)?;
        let reload_watch_interval_ms = config
            .reload
            .watch_interval_ms
            .unwrap_or(defaults::RELOAD_WATCH_INTERVAL_MS);

        Ok(ServiceSettings {
            source: path.to_path_buf(),
            grpc_listen,
            http_listen,
            rules_file,
            data_dir,
            engine: EngineSettings {
                shards,
                future_tolerance_ms: config
                    .engine
                    .future_tolerance_ms
                    .unwrap_or(defaults::FUTURE_TOLERANCE_MS),
                lateness_overrides,
                histogram,
                idle_series_ms: config.engine.idle_series_ms.unwrap_or(defaults::IDLE_SERIES_MS),
                above_max_traces,
                set_max_exact_values,
                rollup_last_max_inputs: config
                    .engine
                    .rollup_last_max_inputs
                    .unwrap_or(defaults::ROLLUP_LAST_MAX_INPUTS),
                rollup_last_idle_ms: config
                    .engine
                    .rollup_last_idle_ms
                    .unwrap_or(defaults::ROLLUP_LAST_IDLE_MS),
            },
            flush_interval_ms,
            flush_jitter_ms: config.flush.jitter_ms.unwrap_or(defaults::FLUSH_JITTER_MS),
            shutdown_grace_ms: config.flush.shutdown_grace_ms.unwrap_or(defaults::SHUTDOWN_GRACE_MS),
            progress_interval_ms: config
                .flush
                .progress_interval_ms
                .unwrap_or(defaults::PROGRESS_INTERVAL_MS),
            ingest: limits,
            store_enabled: config.store.enabled.unwrap_or(true),
            segment_duration_ms,
            selections_file: config.selections.file.unwrap_or(true),
            selection_stream_buffer,
            remote_write,
            statsd,
            wal,
            otlp,
            log_json,
            limits: limit_settings,
            profile,
            reload_watch_interval_ms,
            auth,
            cluster,
            admin_token,
            grpc_tls,
            http_tls,
        })
    }
}

#[cfg(test)]
#[path = "process_tests.rs"]
mod tests;
