//! The `profile` and `reload` sections: the metrics profiler (period, owner
//! label, how many metric names it tracks) and how the rules file is watched.

use serde::{Deserialize, Serialize};

use crate::profile::ProfileSettings;

use super::error::ConfigError;
use super::process::defaults;

/// The metrics profiler (`GET /api/v1/profile`, `tailfold top`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProfileConfig {
    /// Account usage per metric, label, owner and rule. Default true.
    pub enabled: Option<bool>,
    /// Length of one accounting period; a profile covers the last full period and the current one. Default 60000.
    pub period_ms: Option<u64>,
    /// Label whose value owns a series for cost accounting, e.g. `team`. Default: none (no owner table).
    pub owner_label: Option<String>,
    /// Distinct (tenant, metric name) pairs tracked; later ones are counted together as `<other>`. Default 10000.
    pub max_metrics: Option<usize>,
}

/// Rules hot reload (also on SIGHUP and `POST /-/reload`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadConfig {
    /// How often the rules file's modification time and content hash are checked; 0 turns watching off. Default 1000.
    pub watch_interval_ms: Option<u64>,
}

/// Checks the `profile` section; `None` when the profiler is off.
pub(super) fn check_profile(
    config: &ProfileConfig,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Option<ProfileSettings>, ConfigError> {
    let period_ms = config.period_ms.unwrap_or(defaults::PROFILE_PERIOD_MS);
    if period_ms < 1_000 {
        return Err(invalid("profile.period_ms", format!("{period_ms} is below 1000")));
    }
    let max_metrics = config.max_metrics.unwrap_or(defaults::PROFILE_MAX_METRICS);
    if max_metrics == 0 {
        return Err(invalid("profile.max_metrics", "must be greater than zero".to_string()));
    }
    if config.owner_label.as_deref() == Some("") {
        return Err(invalid("profile.owner_label", "must not be empty".to_string()));
    }
    Ok(config.enabled.unwrap_or(true).then(|| ProfileSettings {
        period_ms,
        owner_label: config.owner_label.clone(),
        max_metrics,
    }))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::ServiceSettings;

    fn parse(text: &str) -> Result<ServiceSettings, String> {
        ServiceSettings::parse(text, Path::new("conf/tailfold.yaml")).map_err(|error| error.to_string())
    }

    #[test]
    fn profile_and_reload_defaults_and_values() {
        let settings = parse("").unwrap();
        let profile = settings.profile.unwrap();
        assert_eq!(
            (profile.period_ms, profile.max_metrics, profile.owner_label),
            (60_000, 10_000, None)
        );
        assert_eq!(settings.reload_watch_interval_ms, 1_000);
        let settings = parse("profile: {owner_label: team, period_ms: 5000}\nreload: {watch_interval_ms: 0}").unwrap();
        assert_eq!(settings.profile.unwrap().owner_label.as_deref(), Some("team"));
        assert_eq!(settings.reload_watch_interval_ms, 0);
        assert!(parse("profile: {enabled: false}").unwrap().profile.is_none());
    }

    #[test]
    fn bad_profile_and_reload_values_name_file_and_field() {
        let error = parse("profile: {period_ms: 10}").unwrap_err();
        assert_eq!(error, "conf/tailfold.yaml: field profile.period_ms: 10 is below 1000");
        let error = parse("profile: {max_metrics: 0}").unwrap_err();
        assert!(error.contains("profile.max_metrics"), "{error}");
        let error = parse("profile: {owner_label: \"\"}").unwrap_err();
        assert!(error.contains("profile.owner_label"), "{error}");
        let error = parse("profile: {owner: team}").unwrap_err();
        assert!(
            error.contains("unknown field `owner`") && error.contains("line 1"),
            "{error}"
        );
        let error = parse("reload: {watch_interval_ms: soon}").unwrap_err();
        assert!(error.contains("watch_interval_ms"), "{error}");
    }
}
