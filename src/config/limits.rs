//! The `limits` section: per-tenant sample rate (with burst) and active-series
//! caps, the drop-priority list naming nice-to-have metrics, and the bound on
//! ingest requests in flight. Checked into [`LimitSettings`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::rules::Filter;

use super::error::ConfigError;
use super::process::defaults;

/// Tenant limits, priority drops and ingest backpressure.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Limits of every tenant not listed under `tenants`. Default: no limit.
    pub default: TenantLimitsConfig,
    /// Per-tenant limits; a field left out is taken from `default`.
    pub tenants: BTreeMap<String, TenantLimitsConfig>,
    /// Nice-to-have metrics, first to drop first: when a tenant is over a
    /// limit, series matching an earlier entry are dropped before later ones,
    /// and all of them before any series no entry matches.
    pub drop_priority: Vec<DropPriorityConfig>,
    /// Ingest requests (gRPC `Write`, remote write, one statsd batch of datagrams) decoded
    /// and folded at once; past it gRPC answers RESOURCE_EXHAUSTED, remote write
    /// 429 and statsd drops the batch (counted `overloaded`). Default 64.
    pub max_inflight_requests: Option<usize>,
}

/// One tenant's limits; a limit left out (in `default` too) does not apply.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TenantLimitsConfig {
    /// Sustained samples per second (a native histogram counts as one sample).
    pub samples_per_second: Option<u64>,
    /// Samples that may arrive at once above the rate (the token bucket's size). Default: one second's worth.
    pub burst_samples: Option<u64>,
    /// Input series seen within `engine.idle_series_ms`; a new series past it is
    /// refused (after evicting nice-to-have series), existing ones keep flowing.
    pub max_active_series: Option<u64>,
}

/// One entry of the drop-priority list.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DropPriorityConfig {
    /// Name counted as `rule` with every sample this entry drops.
    pub name: String,
    /// Series filter (`label:glob` terms, as in rules), e.g. `__name__:debug_*`.
    pub filter: String,
}

/// Checked limits of one tenant.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TenantLimit {
    /// Token bucket refill rate; `None` = no rate limit.
    pub samples_per_second: Option<u64>,
    /// Token bucket size (at least 1 when a rate is set).
    pub burst_samples: u64,
    /// Active input series cap; `None` = no cap.
    pub max_active_series: Option<u64>,
}

impl TenantLimit {
    /// Whether any limit applies.
    pub fn is_limited(&self) -> bool {
        self.samples_per_second.is_some() || self.max_active_series.is_some()
    }
}

/// One checked drop-priority entry.
#[derive(Clone, Debug)]
pub struct DropPriority {
    /// Its name, the `rule` of what it drops.
    pub name: Arc<str>,
    /// Which series it names.
    pub filter: Filter,
}

/// Checked `limits` section.
#[derive(Clone, Debug)]
pub struct LimitSettings {
    /// Limits of unlisted tenants.
    pub default: TenantLimit,
    /// Limits of listed tenants (already merged with `default`).
    pub tenants: BTreeMap<String, TenantLimit>,
    /// Nice-to-have series, first to drop first.
    pub drop_priority: Vec<DropPriority>,
    /// A series not seen for this long stops counting as active (`engine.idle_series_ms`).
    pub idle_series_ms: u64,
    /// Ingest requests in flight at once.
    pub max_inflight_requests: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            default: TenantLimit::default(),
            tenants: BTreeMap::new(),
            drop_priority: Vec::new(),
            idle_series_ms: defaults::IDLE_SERIES_MS,
            max_inflight_requests: defaults::MAX_INFLIGHT_REQUESTS,
        }
    }
}

impl LimitSettings {
    /// The limits of `tenant`.
    pub fn for_tenant(&self, tenant: &str) -> TenantLimit {
        self.tenants.get(tenant).copied().unwrap_or(self.default)
    }

    /// Whether any tenant has any limit (else the limits stage is skipped).
    pub fn any_limit(&self) -> bool {
        self.default.is_limited() || self.tenants.values().any(TenantLimit::is_limited)
    }
}

fn check_tenant(
    field: &str,
    config: &TenantLimitsConfig,
    fallback: &TenantLimitsConfig,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<TenantLimit, ConfigError> {
    let positive = |name: &str, value: Option<u64>| match value {
        Some(0) => Err(invalid(
            &format!("{field}.{name}"),
            "must be greater than zero (leave it out for no limit)".to_string(),
        )),
        other => Ok(other),
    };
    let samples_per_second = positive(
        "samples_per_second",
        config.samples_per_second.or(fallback.samples_per_second),
    )?;
    let burst = positive("burst_samples", config.burst_samples.or(fallback.burst_samples))?;
    let max_active_series = positive(
        "max_active_series",
        config.max_active_series.or(fallback.max_active_series),
    )?;
    if burst.is_some() && samples_per_second.is_none() {
        return Err(invalid(
            &format!("{field}.burst_samples"),
            "is set but samples_per_second is not: a burst needs a rate".to_string(),
        ));
    }
    Ok(TenantLimit {
        samples_per_second,
        burst_samples: burst.or(samples_per_second).unwrap_or(0),
        max_active_series,
    })
}

/// Checks the `limits` section; `idle_series_ms` is the engine's idle horizon.
pub(super) fn check_limits(
    config: &LimitsConfig,
    idle_series_ms: u64,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<LimitSettings, ConfigError> {
    let none = TenantLimitsConfig::default();
    let default = check_tenant("limits.default", &config.default, &none, invalid)?;
    let mut tenants = BTreeMap::new();
    for (tenant, limits) in &config.tenants {
        if tenant.is_empty() || !tenant.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                &format!("limits.tenants.{tenant}"),
                format!("{tenant:?} is not a tenant name (printable characters without spaces)"),
            ));
        }
        let field = format!("limits.tenants.{tenant}");
        tenants.insert(tenant.clone(), check_tenant(&field, limits, &config.default, invalid)?);
    }
    let mut drop_priority: Vec<DropPriority> = Vec::new();
    for (index, entry) in config.drop_priority.iter().enumerate() {
        let field = format!("limits.drop_priority[{index}]");
        if entry.name.trim().is_empty() {
            return Err(invalid(&format!("{field}.name"), "must not be empty".to_string()));
        }
        if drop_priority.iter().any(|other| *other.name == *entry.name) {
            return Err(invalid(
                &format!("{field}.name"),
                format!("{:?} is used by an earlier entry", entry.name),
            ));
        }
        let filter = Filter::parse(&entry.filter).map_err(|error| {
            invalid(
                &format!("{field}.filter"),
                format!("{:?} (entry {:?}): {error}", entry.filter, entry.name),
            )
        })?;
        drop_priority.push(DropPriority {
            name: Arc::from(entry.name.as_str()),
            filter,
        });
    }
    if drop_priority.len() > u16::MAX as usize - 1 {
        return Err(invalid(
            "limits.drop_priority",
            format!("{} entries, at most 65534", drop_priority.len()),
        ));
    }
    let max_inflight_requests = config.max_inflight_requests.unwrap_or(defaults::MAX_INFLIGHT_REQUESTS);
    if max_inflight_requests == 0 {
        return Err(invalid(
            "limits.max_inflight_requests",
            "must be greater than zero".to_string(),
        ));
    }
    Ok(LimitSettings {
        default,
        tenants,
        drop_priority,
        idle_series_ms,
        max_inflight_requests,
    })
}
