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
use crate::model::StoragePolicy;
use crate::sink::remote_write::RemoteWriteSettings;

use super::error::ConfigError;

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
    /// Histogram scale: base 2^(2^-6), about 0.54 % worst-case relative error.
    pub const HISTOGRAM_SCALE: i8 = 6;
    /// Buckets per sign before the histogram downscales.
    pub const HISTOGRAM_MAX_BUCKETS: usize = 2048;
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
    /// Encoded request size.
    pub const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;
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
    /// Grace period to flush and drain on shutdown.
    pub const SHUTDOWN_GRACE_MS: u64 = 10_000;
    /// Interval of the progress line in the log.
    pub const PROGRESS_INTERVAL_MS: u64 = 10_000;
    /// Tenant of statsd samples (the protocol has no way to name one).
    pub const STATSD_TENANT: &str = "default";
    /// Largest statsd datagram read whole; the most a UDP datagram can carry.
    pub const STATSD_MAX_PACKET_BYTES: usize = 65_535;
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
    /// Directory of the embedded store and selection files, relative to the working directory. Default `data`.
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
    /// Logs.
    pub log: LogConfig,
}

/// gRPC server settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Listen address, `host:port`. Default `127.0.0.1:4770`; port 0 picks a free port.
    pub listen: Option<String>,
}

/// HTTP server settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address, `host:port`. Default `127.0.0.1:4771`; port 0 picks a free port.
    pub listen: Option<String>,
}

/// Engine settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Number of shards. Default four per core.
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
}

/// Histogram layout.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HistogramSettings {
    /// Initial scale (-10..=8). Default 6: relative error at most 0.54 %.
    pub scale: Option<i8>,
    /// Buckets per sign before downscaling. Default 2048.
    pub max_buckets: Option<usize>,
}

/// Flush loop settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FlushConfig {
    /// How often due windows are looked for. Default 1000.
    pub interval_ms: Option<u64>,
    /// Random delay up to this much added to each tick. Default 100.
    pub jitter_ms: Option<u64>,
    /// On shutdown, time allowed to flush every open window and drain sinks. Default 10000.
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
    /// Encoded request size in bytes. Default 67108864.
    pub max_request_bytes: Option<usize>,
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

/// One remote-write sink.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteWriteConfig {
    /// Name in logs and counters. Required, unique.
    pub name: String,
    /// Endpoint, e.g. `http://prometheus:9090/api/v1/write`. Required.
    pub url: String,
    /// Storage policies sent here, e.g. `["1m:40d"]`: this is how retention reaches storage. Required.
    pub storage_policies: Vec<String>,
    /// Label naming the policy (e.g. `tailfold_policy`); required when more than one policy is
    /// listed, so two resolutions never interleave in one series.
    pub policy_label: Option<String>,
    /// Send `histogram` outputs as native histograms (cumulative, for `increase()`). Default true.
    pub native_histograms: Option<bool>,
    /// Header carrying the tenant, e.g. `X-Scope-OrgID` for Mimir. Default: none sent.
    pub tenant_header: Option<String>,
    /// Series per request. Default 2000.
    pub max_series_per_request: Option<usize>,
    /// Parallel senders; each owns a share of the series, so each series stays in order. Default 2.
    pub shards: Option<usize>,
    /// Per-request timeout. Default 10000.
    pub timeout_ms: Option<u64>,
    /// First retry delay after a 5xx, 429 or connection error; doubles up to `max_backoff_ms`. Default 100.
    pub min_backoff_ms: Option<u64>,
    /// Longest retry delay. Default 10000.
    pub max_backoff_ms: Option<u64>,
    /// Series buffered per shard during an outage before the oldest are dropped (counted as `buffer_full`). Default 500000.
    pub max_buffered_series: Option<usize>,
}

/// Trace selection settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SelectionsConfig {
    /// Also write selections as JSON lines under `<data_dir>/selections`. Default true.
    pub file: Option<bool>,
    /// Selections buffered per stream subscriber. Default 65536.
    pub stream_buffer: Option<usize>,
}

/// statsd / DogStatsD ingest over UDP.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StatsdConfig {
    /// UDP listen address, `host:port`, e.g. `127.0.0.1:8125` (the statsd convention). Default: none, statsd is off.
    pub listen: Option<String>,
    /// Tenant every statsd sample belongs to. Default `default`.
    pub tenant: Option<String>,
    /// Largest datagram read whole (1..=65535); a longer one loses its tail, counted as one malformed line. Default 65535.
    pub max_packet_bytes: Option<usize>,
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
    /// JSON logs.
    pub log_json: bool,
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
    /// Encoded request bytes.
    pub max_request_bytes: usize,
}

/// Checked statsd settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsdSettings {
    /// UDP listen address.
    pub listen: SocketAddr,
    /// Tenant of every sample.
    pub tenant: String,
    /// Largest datagram read whole.
    pub max_packet_bytes: usize,
    /// Label limits, shared with the other protocols (`ingest.*`).
    pub limits: IngestLimits,
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
            max_request_bytes: defaults::MAX_REQUEST_BYTES,
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
            max_request_bytes: ingest.max_request_bytes.unwrap_or(defaults::MAX_REQUEST_BYTES),
        };
        if limits.default_tenant.is_empty() {
            return Err(invalid("ingest.default_tenant", "must not be empty".to_string()));
        }
        for (field, value) in [
            ("ingest.max_labels_per_series", limits.max_labels_per_series),
            ("ingest.max_label_name_bytes", limits.max_label_name_bytes),
            ("ingest.max_label_value_bytes", limits.max_label_value_bytes),
            ("ingest.max_points_per_request", limits.max_points_per_request),
            ("ingest.max_request_bytes", limits.max_request_bytes),
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
            let checked = check_remote_write(index, sink, config.engine.idle_series_ms, &invalid)?;
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
            log_json,
        })
    }
}

/// Checks one remote-write sink.
fn check_remote_write(
    index: usize,
    config: &RemoteWriteConfig,
    idle_series_ms: Option<u64>,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<RemoteWriteSettings, ConfigError> {
    let field = |name: &str| format!("remote_write[{index}].{name}");
    if config.name.is_empty() {
        return Err(invalid(&field("name"), "missing: every sink needs a name".to_string()));
    }
    if !(config.url.starts_with("http://") || config.url.starts_with("https://")) {
        return Err(invalid(
            &field("url"),
            format!("{:?} is not an http:// or https:// URL", config.url),
        ));
    }
    if config.storage_policies.is_empty() {
        return Err(invalid(
            &field("storage_policies"),
            "missing: list the policies this sink stores, e.g. [\"1m:40d\"]".to_string(),
        ));
    }
    let mut storage_policies = Vec::new();
    for (position, text) in config.storage_policies.iter().enumerate() {
        let policy: StoragePolicy = text.parse().map_err(|error: crate::model::PolicyError| {
            invalid(&field(&format!("storage_policies[{position}]")), error.to_string())
        })?;
        storage_policies.push(policy);
    }
    if storage_policies.len() > 1 && config.policy_label.is_none() {
        return Err(invalid(
            &field("policy_label"),
            "missing: with several storage policies, name a label that keeps their series apart".to_string(),
        ));
    }
    let positive = |name: &str, value: usize| {
        if value == 0 {
            Err(invalid(&field(name), "must be greater than zero".to_string()))
        } else {
            Ok(value)
        }
    };
    let min_backoff_ms = config.min_backoff_ms.unwrap_or(defaults::REMOTE_WRITE_MIN_BACKOFF_MS);
    let max_backoff_ms = config.max_backoff_ms.unwrap_or(defaults::REMOTE_WRITE_MAX_BACKOFF_MS);
    if min_backoff_ms == 0 || max_backoff_ms < min_backoff_ms {
        return Err(invalid(
            &field("max_backoff_ms"),
            format!("backoff {min_backoff_ms}..{max_backoff_ms} ms: need 0 < min_backoff_ms <= max_backoff_ms"),
        ));
    }
    Ok(RemoteWriteSettings {
        name: config.name.clone(),
        url: config.url.clone(),
        storage_policies,
        policy_label: config.policy_label.clone(),
        native_histograms: config.native_histograms.unwrap_or(true),
        tenant_header: config.tenant_header.clone(),
        max_series_per_request: positive(
            "max_series_per_request",
            config
                .max_series_per_request
                .unwrap_or(defaults::REMOTE_WRITE_MAX_SERIES_PER_REQUEST),
        )?,
        shards: positive("shards", config.shards.unwrap_or(defaults::REMOTE_WRITE_SHARDS))?,
        timeout_ms: positive(
            "timeout_ms",
            config.timeout_ms.unwrap_or(defaults::REMOTE_WRITE_TIMEOUT_MS) as usize,
        )? as u64,
        min_backoff_ms,
        max_backoff_ms,
        max_buffered_series: positive(
            "max_buffered_series",
            config
                .max_buffered_series
                .unwrap_or(defaults::REMOTE_WRITE_MAX_BUFFERED_SERIES),
        )?,
        idle_series_ms: idle_series_ms.unwrap_or(defaults::IDLE_SERIES_MS),
    })
}

/// Checks the `statsd` section even when it is off, so a typo never hides until it is turned on.
fn check_statsd(
    config: &StatsdConfig,
    limits: &IngestLimits,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Option<StatsdSettings>, ConfigError> {
    let tenant = config
        .tenant
        .clone()
        .unwrap_or_else(|| defaults::STATSD_TENANT.to_string());
    if tenant.is_empty() || tenant.len() > 256 || !tenant.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "statsd.tenant",
            format!("{tenant:?} is not 1 to 256 printable characters without spaces"),
        ));
    }
    let max_packet_bytes = config.max_packet_bytes.unwrap_or(defaults::STATSD_MAX_PACKET_BYTES);
    if !(1..=defaults::STATSD_MAX_PACKET_BYTES).contains(&max_packet_bytes) {
        return Err(invalid(
            "statsd.max_packet_bytes",
            format!("{max_packet_bytes} is outside 1..=65535"),
        ));
    }
    let Some(listen) = config.listen.as_deref() else {
        return Ok(None);
    };
    let listen: SocketAddr = listen.parse().map_err(|_| {
        invalid(
            "statsd.listen",
            format!("{listen:?} is not a host:port address such as 127.0.0.1:8125"),
        )
    })?;
    Ok(Some(StatsdSettings {
        listen,
        tenant,
        max_packet_bytes,
        limits: limits.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_gives_documented_defaults() {
        let settings = ServiceSettings::parse("", Path::new("config/tailfold.yaml")).unwrap();
        assert_eq!(settings.grpc_listen.to_string(), defaults::GRPC_LISTEN);
        assert_eq!(settings.http_listen.to_string(), defaults::HTTP_LISTEN);
        assert_eq!(settings.rules_file, Path::new("config/rules.yaml"));
        assert_eq!(settings.data_dir, Path::new("data"));
        assert_eq!(settings.ingest, IngestLimits::default());
        assert_eq!(settings.engine.histogram.scale, 6);
        assert!(settings.store_enabled && settings.selections_file);
        assert_eq!(settings.statsd, None);
    }

    #[test]
    fn statsd_section_is_checked_and_off_without_listen() {
        let path = Path::new("conf/t.yaml");
        let on = ServiceSettings::parse(
            "statsd: {listen: \"127.0.0.1:8125\", tenant: team-a}\ningest: {max_label_value_bytes: 100}",
            path,
        )
        .unwrap()
        .statsd
        .expect("statsd on");
        assert_eq!(on.listen.to_string(), "127.0.0.1:8125");
        assert_eq!(on.tenant, "team-a");
        assert_eq!(on.max_packet_bytes, defaults::STATSD_MAX_PACKET_BYTES);
        assert_eq!(on.limits.max_label_value_bytes, 100);
        let off = ServiceSettings::parse("statsd: {tenant: team-a}", path).unwrap();
        assert_eq!(off.statsd, None);
    }

    #[test]
    fn broken_configs_name_the_file_and_field() {
        let path = Path::new("conf/t.yaml");
        for (text, needle) in [
            (
                "grpc: {listen: nowhere}",
                "conf/t.yaml: field grpc.listen: \"nowhere\" is not a host:port",
            ),
            (
                "http: {listen: \"localhost\"}",
                "conf/t.yaml: field http.listen: \"localhost\" is not a host:port",
            ),
            (
                "engine: {lateness_ms: {10x: 5}}",
                "field engine.lateness_ms.10x: invalid duration \"10x\"",
            ),
            ("engine: {histogram: {scale: 12}}", "field engine.histogram:"),
            ("engine: {shards: 0}", "field engine.shards: 0 is outside"),
            ("log: {format: xml}", "field log.format: \"xml\""),
            (
                "ingest: {max_labels_per_series: 0}",
                "field ingest.max_labels_per_series: must be greater",
            ),
            (
                "store: {segment_duration: soon}",
                "field store.segment_duration: invalid duration",
            ),
            (
                "grpc: {listen: 1, port: 2}",
                "conf/t.yaml: invalid yaml: grpc: unknown field `port`",
            ),
            ("flush: [1, 2]", "conf/t.yaml: invalid yaml"),
            ("remote_write: [{url: \"http://x\", storage_policies: [\"1m:1d\"]}]", "field remote_write[0].name: missing"),
            ("remote_write: [{name: p, url: \"x\", storage_policies: [\"1m:1d\"]}]", "field remote_write[0].url: \"x\" is not"),
            ("remote_write: [{name: p, url: \"http://x\"}]", "field remote_write[0].storage_policies: missing"),
            ("remote_write: [{name: p, url: \"http://x\", storage_policies: [\"1q:1d\"]}]", "field remote_write[0].storage_policies[0]: invalid storage policy"),
            ("remote_write: [{name: p, url: \"http://x\", storage_policies: [\"1m:1d\", \"1h:1y\"]}]", "field remote_write[0].policy_label: missing"),
            ("remote_write: [{name: p, url: \"http://x\", storage_policies: [\"1m:1d\"], shards: 0}]", "field remote_write[0].shards: must be greater"),
            ("remote_write: [{name: p, url: \"http://x\", storage_policies: [\"1m:1d\"]}, {name: p, url: \"http://y\", storage_policies: [\"1m:1d\"]}]", "field remote_write[1].name: \"p\" is used"),
            (
                "statsd: {listen: \"localhost\"}",
                "field statsd.listen: \"localhost\" is not a host:port",
            ),
            ("statsd: {tenant: \"\"}", "field statsd.tenant: \"\" is not 1 to 256"),
            (
                "statsd: {tenant: \"a b\", listen: \"127.0.0.1:8125\"}",
                "field statsd.tenant: \"a b\"",
            ),
            (
                "statsd: {max_packet_bytes: 0}",
                "field statsd.max_packet_bytes: 0 is outside 1..=65535",
            ),
            (
                "statsd: {max_packet_bytes: 70000}",
                "field statsd.max_packet_bytes: 70000 is outside",
            ),
            ("statsd: {port: 8125}", "invalid yaml: statsd: unknown field `port`"),
        ] {
            let error = ServiceSettings::parse(text, path).unwrap_err().to_string();
            assert!(error.contains(needle), "{text:?} gave {error:?}, wanted {needle:?}");
        }
    }
}
