//! The `remote_write` section: one entry per sink, checked into the sink's
//! runtime settings (policies parsed, several policies need a policy label).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::{PolicyError, StoragePolicy};
use crate::sink::remote_write::RemoteWriteSettings;

use super::error::ConfigError;
use super::process::defaults;

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
    /// Directory to spill requests to once `max_buffered_series` is reached (instead of dropping the
    /// oldest); what is left at shutdown stays there and is sent first by the next run. Default: none (memory only).
    pub spill_dir: Option<PathBuf>,
    /// Bytes of requests each shard may keep spilled before its oldest are dropped (`buffer_full`); the file itself
    /// may reach twice this between compactions. Default 1073741824.
    pub max_spill_bytes: Option<u64>,
}

/// Checks one remote-write sink.
pub(super) fn check_remote_write(
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
        let policy: StoragePolicy = text.parse().map_err(|error: PolicyError| {
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
        spill_dir: config.spill_dir.clone(),
        shutdown_drain_ms: defaults::SHUTDOWN_GRACE_MS / 2,
        max_spill_bytes: positive(
            "max_spill_bytes",
            config.max_spill_bytes.unwrap_or(defaults::REMOTE_WRITE_MAX_SPILL_BYTES) as usize,
        )? as u64,
    })
}
