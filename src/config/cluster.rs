//! The `cluster` section: the etcd endpoints, which cluster and instance this
//! process is, its internal forwarding listener, and the lease and forwarding
//! bounds. No `cluster:` section means a single node, exactly as before.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::error::ConfigError;

/// Defaults of the cluster settings, in one place.
pub mod defaults {
    /// Lease of an instance's registration and election key: a killed leader is replaced within this.
    pub const LEASE_TTL_S: u64 = 10;
    /// How long an etcd call may take before it counts as failed.
    pub const ETCD_TIMEOUT_MS: u64 = 2_000;
    /// How long a forward to a replica etcd still lists as live is retried.
    pub const FORWARD_TIMEOUT_MS: u64 = 15_000;
    /// Assembled rollup windows wait this long after their lateness for every input owner's share.
    pub const FORWARD_LATENESS_MS: u64 = 15_000;
    /// A published rule set takes effect at the first common window boundary at least this far ahead, so every instance has it staged first.
    pub const RULES_MARGIN_MS: u64 = 5_000;
    /// A placement change's cutover is the first boundary of every policy in force at least this far ahead, so every instance routes by the change first.
    pub const HANDOFF_MARGIN_MS: u64 = 5_000;
}

/// Which rules a cluster instance folds with.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RulesSource {
    /// The cluster's rules in etcd (its local file is only published by a reload).
    #[default]
    Etcd,
    /// Its own rules file: when that differs from the cluster's, it neither leads nor forwards.
    File,
}

/// Membership in a cluster of tailfold instances coordinated through etcd.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// etcd client endpoints, e.g. `["http://127.0.0.1:2379"]`. Required.
    pub etcd_endpoints: Vec<String>,
    /// Cluster id, as given to `tailfold cluster init --cluster`. Required.
    pub cluster: String,
    /// This instance's id in the placement (`tailfold cluster init --instance ID=...`). Required.
    pub instance: String,
    /// Listen address of the internal forwarding API, `host:port`; the placement names the address others reach it on. Required.
    pub listen: String,
    /// TTL of the instance's lease in seconds: a lost instance stops being a replica, and a lost leader is replaced, within it. Default 10.
    #[serde(default)]
    pub lease_ttl_s: Option<u64>,
    /// Timeout of each etcd call in ms. Default 2000.
    #[serde(default)]
    pub etcd_timeout_ms: Option<u64>,
    /// How long a forward to a replica still registered in etcd is retried, in ms; past it the write is acknowledged by the replicas that took it and the miss is counted. Default 15000 (more than the lease TTL, so a killed replica is known dead first).
    #[serde(default)]
    pub forward_timeout_ms: Option<u64>,
    /// How long after its lateness a rollup window waits for the shares of every input owner, in ms; must exceed the lease TTL plus a flush interval, so a new input leader's share still arrives. Default 15000.
    #[serde(default)]
    pub forward_lateness_ms: Option<u64>,
    /// Which rules this instance folds with: `etcd` (the cluster's, as published by any instance's reload; default) or `file` (its own file; when that differs from the cluster's the instance says so and neither leads nor forwards).
    #[serde(default)]
    pub rules_source: Option<RulesSource>,
    /// How far ahead of the publish a new rule set takes effect, in ms: the first window boundary common to both sets' policies at least this far ahead. Must cover the time etcd takes to tell every instance. Default 5000.
    #[serde(default)]
    pub rules_margin_ms: Option<u64>,
    /// How far ahead a placement change staged through this instance's admin API (`POST /api/v1/cluster/add`, `remove`, `replace`) cuts over, in ms: the first window boundary of every policy in force at least this far ahead. Must cover the time every instance takes to read the new placement (polled every 250 ms). Default 5000.
    #[serde(default)]
    pub handoff_margin_ms: Option<u64>,
}

/// Checked cluster settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSettings {
    /// etcd endpoints.
    pub etcd_endpoints: Vec<String>,
    /// Cluster id.
    pub cluster: String,
    /// This instance's id.
    pub instance: String,
    /// Internal listener.
    pub listen: SocketAddr,
    /// Lease TTL in seconds.
    pub lease_ttl_s: u64,
    /// etcd call timeout in ms.
    pub etcd_timeout_ms: u64,
    /// Forward retry bound in ms.
    pub forward_timeout_ms: u64,
    /// Rollup assembly wait in ms.
    pub forward_lateness_ms: u64,
    /// Which rules the instance folds with.
    pub rules_source: RulesSource,
    /// Publish-to-effect margin of a new rule set, in ms.
    pub rules_margin_ms: u64,
    /// Stage-to-cutover margin of a placement change, in ms.
    pub handoff_margin_ms: u64,
}

/// Checks the `cluster` section.
pub(super) fn check_cluster(
    config: &ClusterConfig,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<ClusterSettings, ConfigError> {
    if config.etcd_endpoints.is_empty() {
        return Err(invalid(
            "cluster.etcd_endpoints",
            "at least one etcd endpoint is required".into(),
        ));
    }
    for endpoint in &config.etcd_endpoints {
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(invalid(
                "cluster.etcd_endpoints",
                format!("{endpoint:?} is not a URL such as http://127.0.0.1:2379"),
            ));
        }
    }
    let id_ok = |text: &str| {
        !text.is_empty() && text.len() <= 128 && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    if !id_ok(&config.cluster) {
        return Err(invalid(
            "cluster.cluster",
            format!("{:?} is not 1 to 128 of [A-Za-z0-9._-]", config.cluster),
        ));
    }
    if !id_ok(&config.instance) {
        return Err(invalid(
            "cluster.instance",
            format!("{:?} is not 1 to 128 of [A-Za-z0-9._-]", config.instance),
        ));
    }
    let listen: SocketAddr = config.listen.parse().map_err(|_| {
        invalid(
            "cluster.listen",
            format!("{:?} is not a host:port address such as 127.0.0.1:4772", config.listen),
        )
    })?;
    let lease_ttl_s = config.lease_ttl_s.unwrap_or(defaults::LEASE_TTL_S);
    if !(1..=3_600).contains(&lease_ttl_s) {
        return Err(invalid(
            "cluster.lease_ttl_s",
            format!("{lease_ttl_s} is outside 1..=3600"),
        ));
    }
    let etcd_timeout_ms = config.etcd_timeout_ms.unwrap_or(defaults::ETCD_TIMEOUT_MS);
    if etcd_timeout_ms == 0 {
        return Err(invalid("cluster.etcd_timeout_ms", "must be above 0".into()));
    }
    let forward_timeout_ms = config.forward_timeout_ms.unwrap_or(defaults::FORWARD_TIMEOUT_MS);
    if forward_timeout_ms == 0 {
        return Err(invalid("cluster.forward_timeout_ms", "must be above 0".into()));
    }
    let forward_lateness_ms = config.forward_lateness_ms.unwrap_or(defaults::FORWARD_LATENESS_MS);
    if forward_lateness_ms <= lease_ttl_s * 1_000 {
        return Err(invalid(
            "cluster.forward_lateness_ms",
            format!(
                "{forward_lateness_ms} ms must exceed the lease TTL ({lease_ttl_s} s), or a new input leader's rollup share arrives after the rollup was flushed"
            ),
        ));
    }
    let rules_margin_ms = config.rules_margin_ms.unwrap_or(defaults::RULES_MARGIN_MS);
    if !(100..=3_600_000).contains(&rules_margin_ms) {
        return Err(invalid(
            "cluster.rules_margin_ms",
            format!("{rules_margin_ms} is outside 100..=3600000"),
        ));
    }
    let handoff_margin_ms = config.handoff_margin_ms.unwrap_or(defaults::HANDOFF_MARGIN_MS);
    if !(500..=3_600_000).contains(&handoff_margin_ms) {
        return Err(invalid(
            "cluster.handoff_margin_ms",
            format!("{handoff_margin_ms} is outside 500..=3600000 (every instance reads the placement every 250 ms)"),
        ));
    }
    Ok(ClusterSettings {
        etcd_endpoints: config.etcd_endpoints.clone(),
        cluster: config.cluster.clone(),
        instance: config.instance.clone(),
        listen,
        lease_ttl_s,
        etcd_timeout_ms,
        forward_timeout_ms,
        forward_lateness_ms,
        rules_source: config.rules_source.unwrap_or_default(),
        rules_margin_ms,
        handoff_margin_ms,
    })
}
