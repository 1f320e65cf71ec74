//! `tailfold top`: the profile as terminal tables. Rendering is a pure
//! function of a [`ProfileReport`], so the command's `--once` mode and the
//! refreshing screen print the same thing.

use std::fmt::Write;

use super::{ProfileQuery, ProfileReport};

/// Fetches the profile from a running service's HTTP endpoint (`http://host:port`).
pub fn fetch(target: &str, query: &ProfileQuery) -> Result<ProfileReport, String> {
    let url = format!("{}/api/v1/profile", target.trim_end_matches('/'));
    let mut params: Vec<(&str, String)> = Vec::new();
    if let Some(tenant) = &query.tenant {
        params.push(("tenant", tenant.clone()));
    }
    if let Some(metric) = &query.metric {
        params.push(("metric", metric.clone()));
    }
    if let Some(limit) = query.limit {
        params.push(("limit", limit.to_string()));
    }
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|error| format!("http client: {error}"))?;
    let response = client
        .get(&url)
        .query(&params)
        .send()
        .map_err(|error| format!("GET {url}: {}", crate::client_error::describe(&error, "--target")))?;
    let status = response.status();
    let body = response.text().map_err(|error| format!("GET {url}: {error}"))?;
    if !status.is_success() {
        return Err(format!("GET {url}: {status}: {}", body.trim()));
    }
    serde_json::from_str(&body).map_err(|error| format!("GET {url}: not a profile: {error}"))
}

/// Labels shown per metric in the series table.
const LABELS_SHOWN: usize = 3;

/// A series count, `~`-marked when it is a HyperLogLog estimate.
fn count(value: u64, exact: bool) -> String {
    if exact {
        value.to_string()
    } else {
        format!("~{value}")
    }
}

/// The report as text tables, lines cut at `width` characters.
pub fn render(report: &ProfileReport, width: usize) -> String {
    let mut out = String::new();
    let span_s = (report.now_ms - report.from_ms) as f64 / 1000.0;
    let _ = writeln!(
        out,
        "tailfold top: usage over the last {span_s:.0} s (period {} ms)",
        report.period_ms
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "TOP METRICS BY ACTIVE SERIES");
    let _ = writeln!(
        out,
        "{:<12} {:<40} {:>12} {:>12}  LABELS (distinct values)",
        "TENANT", "METRIC", "SERIES", "SAMPLES/S"
    );
    for usage in &report.top_by_series {
        let labels = usage
            .labels
            .iter()
            .take(LABELS_SHOWN)
            .map(|label| {
                format!(
                    "{}={}{}",
                    label.label,
                    if label.exact { "" } else { "~" },
                    label.distinct_values
                )
            })
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(
            out,
            "{:<12} {:<40} {:>12} {:>12.1}  {labels}",
            usage.tenant,
            usage.metric,
            count(usage.active_series, usage.active_series_exact),
            usage.samples_per_second
        );
    }
    if let [only] = &report.top_by_series[..] {
        // One metric (`--metric`): every label, most distinct values first.
        let _ = writeln!(out);
        let _ = writeln!(out, "LABELS OF {}", only.metric);
        let _ = writeln!(out, "{:<40} {:>15}  EXACT", "LABEL", "DISTINCT VALUES");
        for label in &only.labels {
            let exact = if label.exact { "yes" } else { "estimate" };
            let _ = writeln!(out, "{:<40} {:>15}  {exact}", label.label, label.distinct_values);
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "TOP METRICS BY SAMPLES/S");
    let _ = writeln!(
        out,
        "{:<12} {:<40} {:>12} {:>12}",
        "TENANT", "METRIC", "SAMPLES/S", "SERIES"
    );
    for usage in &report.top_by_samples {
        let _ = writeln!(
            out,
            "{:<12} {:<40} {:>12.1} {:>12}",
            usage.tenant,
            usage.metric,
            usage.samples_per_second,
            count(usage.active_series, usage.active_series_exact)
        );
    }
    if let Some(owner_label) = &report.owner_label {
        let _ = writeln!(out);
        let _ = writeln!(out, "USAGE BY {}", owner_label.to_uppercase());
        let _ = writeln!(
            out,
            "{:<12} {:<40} {:>12} {:>12}",
            "TENANT", "OWNER", "SERIES", "SAMPLES/S"
        );
        for usage in &report.owners {
            let _ = writeln!(
                out,
                "{:<12} {:<40} {:>12} {:>12.1}",
                usage.tenant,
                usage.owner,
                count(usage.active_series, usage.active_series_exact),
                usage.samples_per_second
            );
        }
    }
    if !report.rules.is_empty() {
        // What storage stops receiving (drop rules) and gains (rollups); a
        // rollup alone removes nothing: drop its inputs to remove them.
        let _ = writeln!(out);
        let _ = writeln!(out, "RULE EFFECT ON STORAGE");
        let _ = writeln!(
            out,
            "{:<32} {:<7} {:>12} {:>12} {:>12} {:>14} {:>14}",
            "RULE", "KIND", "SERIES IN", "ADDED", "REMOVED", "SAMPLES REMOVED", "DROPPED"
        );
        for rule in &report.rules {
            let _ = writeln!(
                out,
                "{:<32} {:<7} {:>12} {:>12} {:>12} {:>14} {:>14}",
                rule.rule,
                rule.kind,
                count(rule.input_series, rule.exact),
                count(rule.output_series, rule.exact),
                count(rule.series_removed, rule.exact),
                rule.samples_removed,
                rule.samples_dropped
            );
        }
    }
    out.lines()
        .map(|line| line.chars().take(width).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}
