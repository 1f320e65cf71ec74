//! The profile as plain data: what `GET /api/v1/profile` serves as JSON and
//! `tailfold top` renders. Counts cover the last full period and the current one.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::{Distinct, Profiler, RuleKind};

/// What to report.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct ProfileQuery {
    /// Only this tenant.
    pub tenant: Option<String>,
    /// Only this metric name (its labels are then listed in full).
    pub metric: Option<String>,
    /// Rows per table (default 20).
    pub limit: Option<usize>,
}

/// The whole profile.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProfileReport {
    /// When the report was made (service clock).
    pub now_ms: i64,
    /// Start of the span counted (the previous period's start).
    pub from_ms: i64,
    /// Length of one accounting period.
    pub period_ms: u64,
    /// The owner label, when configured.
    pub owner_label: Option<String>,
    /// Metric names by active series, largest first.
    pub top_by_series: Vec<MetricUsage>,
    /// Metric names by samples per second, largest first.
    pub top_by_samples: Vec<MetricUsage>,
    /// Usage per owner, by active series.
    pub owners: Vec<OwnerUsage>,
    /// Effect of each drop and rollup rule.
    pub rules: Vec<RuleUsage>,
}

/// Usage of one metric name of one tenant.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricUsage {
    /// Tenant.
    pub tenant: String,
    /// Metric name (`__name__`).
    pub metric: String,
    /// Distinct series seen in the span.
    pub active_series: u64,
    /// Whether `active_series` is exact (else a HyperLogLog estimate).
    #[serde(default = "exact_by_default")]
    pub active_series_exact: bool,
    /// Samples received in the span.
    pub samples: u64,
    /// `samples` over the span's length.
    pub samples_per_second: f64,
    /// Labels by distinct values, most first.
    pub labels: Vec<LabelCardinality>,
}

/// Distinct values of one label of one metric.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LabelCardinality {
    /// Label name.
    pub label: String,
    /// Distinct values (exact up to 1024, a HyperLogLog estimate past that).
    pub distinct_values: u64,
    /// Whether `distinct_values` is exact.
    pub exact: bool,
}

/// Usage attributed to one value of the owner label.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OwnerUsage {
    /// Tenant.
    pub tenant: String,
    /// Value of the owner label (`<none>` for series without it).
    pub owner: String,
    /// Distinct series.
    pub active_series: u64,
    /// Whether `active_series` is exact (else a HyperLogLog estimate).
    #[serde(default = "exact_by_default")]
    pub active_series_exact: bool,
    /// Samples received.
    pub samples: u64,
    /// `samples` over the span's length.
    pub samples_per_second: f64,
}

/// What one drop or rollup rule did to what storage receives. A drop rule
/// removes the series it matches (their own outputs); a rollup removes
/// nothing, it adds its output series. Drop a rollup's inputs to remove them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleUsage {
    /// Rule name.
    pub rule: String,
    /// `drop` or `rollup`.
    pub kind: String,
    /// Distinct input series the rule matched.
    pub input_series: u64,
    /// Samples of those series.
    #[serde(default)]
    pub input_samples: u64,
    /// Distinct series a rollup emits (0 for a drop): series storage gains.
    pub output_series: u64,
    /// Series storage no longer receives: a drop's input series; 0 for a rollup.
    pub series_removed: u64,
    /// Samples of the removed series (never more than were sent); 0 for a rollup.
    pub samples_removed: u64,
    /// Of `samples_removed`, those no rollup folds either: counted as
    /// `dropped_by_rule` in write responses and `/metrics`. The rest were
    /// accepted and folded into a rollup.
    #[serde(default)]
    pub samples_dropped: u64,
    /// Whether the series counts are exact (else HyperLogLog estimates).
    #[serde(default = "exact_by_default")]
    pub exact: bool,
}

/// One rule's accounting merged over the selected (tenant, metric) parts:
/// (rule, kind), samples, samples folded though dropped, input series, outputs.
type RuleRow = ((String, RuleKind), u64, u64, Distinct, Distinct);

fn exact_by_default() -> bool {
    true
}

impl Profiler {
    /// The profile at `now_ms`.
    pub fn report(&self, now_ms: i64, query: &ProfileQuery) -> ProfileReport {
        let limit = query.limit.unwrap_or(20).max(1);
        // Rates are over the time the process has seen, not a period that began before it.
        let from_ms = self.previous_start_ms.load(Ordering::Relaxed).max(self.started_ms);
        let seconds = ((now_ms - from_ms) as f64 / 1000.0).max(1.0);
        let wanted_tenant = |tenant: &str| query.tenant.as_deref().is_none_or(|wanted| wanted == tenant);
        let mut metrics: Vec<MetricUsage> = self
            .metrics
            .lock()
            .iter()
            .filter(|((tenant, name), _)| {
                wanted_tenant(tenant) && query.metric.as_deref().is_none_or(|wanted| wanted == &**name)
            })
            .map(|((tenant, name), usage)| (tenant.clone(), name.clone(), usage.clone()))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|(tenant, name, usage)| {
                let (samples, series, _, labels) = usage.totals();
                let mut labels: Vec<LabelCardinality> = labels
                    .into_iter()
                    .map(|(label, values)| LabelCardinality {
                        label: label.into(),
                        distinct_values: values.count(),
                        exact: values.is_exact(),
                    })
                    .filter(|label| label.distinct_values > 0)
                    .collect();
                labels.sort_by(|a, b| b.distinct_values.cmp(&a.distinct_values).then(a.label.cmp(&b.label)));
                MetricUsage {
                    tenant: tenant.to_string(),
                    metric: name.into(),
                    active_series: series.count(),
                    active_series_exact: series.is_exact(),
                    samples,
                    samples_per_second: samples as f64 / seconds,
                    labels,
                }
            })
            .filter(|usage| usage.samples > 0 || usage.active_series > 0)
            .collect();
        metrics.sort_by(|a, b| b.active_series.cmp(&a.active_series).then(a.metric.cmp(&b.metric)));
        let mut top_by_samples = metrics.clone();
        top_by_samples.sort_by(|a, b| b.samples.cmp(&a.samples).then(a.metric.cmp(&b.metric)));
        top_by_samples.truncate(limit);
        metrics.truncate(limit);

        let mut owners: Vec<OwnerUsage> = self
            .owners
            .lock()
            .iter()
            .filter(|((tenant, _), _)| wanted_tenant(tenant))
            .map(|((tenant, owner), usage)| {
                let (samples, series, _, _) = usage.totals();
                OwnerUsage {
                    tenant: tenant.to_string(),
                    owner: owner.to_string(),
                    active_series: series.count(),
                    active_series_exact: series.is_exact(),
                    samples,
                    samples_per_second: samples as f64 / seconds,
                }
            })
            .filter(|usage| usage.samples > 0)
            .collect();
        owners.sort_by(|a, b| b.active_series.cmp(&a.active_series).then(a.owner.cmp(&b.owner)));
        owners.truncate(limit);

        // One row per rule: the (tenant, metric) parts the query selects, merged.
        let mut merged: Vec<RuleRow> = Vec::new();
        for ((tenant, metric, rule, kind), usage) in self.rules.lock().iter() {
            if !wanted_tenant(tenant) || query.metric.as_deref().is_some_and(|wanted| wanted != &**metric) {
                continue;
            }
            let (samples, series, outputs, _) = usage.totals();
            let folded = usage.folded();
            let key = (rule.to_string(), *kind);
            match merged.iter_mut().find(|row| row.0 == key) {
                Some(row) => {
                    row.1 += samples;
                    row.2 += folded;
                    row.3.merge(&series);
                    row.4.merge(&outputs);
                }
                None => merged.push((key, samples, folded, series, outputs)),
            }
        }
        let mut rules: Vec<RuleUsage> = merged
            .into_iter()
            .filter(|(_, samples, ..)| *samples > 0)
            .map(|((rule, kind), samples, folded, series, outputs)| {
                let input_series = series.count();
                let (kind, output_series, series_removed, samples_removed, samples_dropped) = match kind {
                    RuleKind::Drop => ("drop", 0, input_series, samples, samples - folded.min(samples)),
                    RuleKind::Rollup => ("rollup", outputs.count(), 0, 0, 0),
                };
                RuleUsage {
                    rule,
                    kind: kind.to_string(),
                    input_series,
                    input_samples: samples,
                    output_series,
                    series_removed,
                    samples_removed,
                    samples_dropped,
                    exact: series.is_exact() && outputs.is_exact(),
                }
            })
            .collect();
        rules.sort_by(|a, b| {
            b.series_removed
                .cmp(&a.series_removed)
                .then(b.input_series.cmp(&a.input_series))
                .then(a.rule.cmp(&b.rule))
        });
        ProfileReport {
            now_ms,
            from_ms,
            period_ms: self.settings.period_ms,
            owner_label: self.settings.owner_label.clone(),
            top_by_series: metrics,
            top_by_samples,
            owners,
            rules,
        }
    }
}
