//! Storage policies, `resolution:retention` as M3 writes them (`10s:2d`): the
//! window length aggregates are folded over, and how long storage keeps them.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use super::duration::{format_duration_ms, parse_duration_ms, DurationError};

/// A storage policy string that could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PolicyError {
    /// Not of the form `resolution:retention`.
    #[error("invalid storage policy {0:?}: expected \"resolution:retention\", e.g. \"10s:2d\"")]
    Shape(String),
    /// One of the two durations is broken.
    #[error("invalid storage policy {policy:?}: {source}")]
    Duration {
        /// The whole policy string.
        policy: String,
        /// What is wrong with the duration.
        source: DurationError,
    },
    /// Retention shorter than one window.
    #[error("invalid storage policy {0:?}: retention must be at least the resolution")]
    RetentionTooShort(String),
}

/// Window length and retention, both in milliseconds.
///
/// ```
/// use tailfold::model::StoragePolicy;
/// let policy: StoragePolicy = "10s:2d".parse().unwrap();
/// assert_eq!(policy.resolution_ms, 10_000);
/// assert_eq!(policy.to_string(), "10s:2d");
/// assert_eq!(policy.window_start(25_000), 20_000);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct StoragePolicy {
    /// Window length; windows are `[k*resolution, (k+1)*resolution)` from the epoch.
    pub resolution_ms: u64,
    /// How long storage keeps what this policy emits.
    pub retention_ms: u64,
}

impl StoragePolicy {
    /// Start of the window that holds `timestamp_ms` (event time may be negative only in tests).
    pub fn window_start(&self, timestamp_ms: i64) -> i64 {
        let resolution = self.resolution_ms as i64;
        timestamp_ms.div_euclid(resolution) * resolution
    }

    /// A name safe as a directory name: `10s_2d`.
    pub fn dir_name(&self) -> String {
        format!(
            "{}_{}",
            format_duration_ms(self.resolution_ms),
            format_duration_ms(self.retention_ms)
        )
    }
}

impl FromStr for StoragePolicy {
    type Err = PolicyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (resolution, retention) = text
            .split_once(':')
            .ok_or_else(|| PolicyError::Shape(text.to_string()))?;
        let read = |part: &str| {
            parse_duration_ms(part).map_err(|source| PolicyError::Duration {
                policy: text.to_string(),
                source,
            })
        };
        let policy = StoragePolicy {
            resolution_ms: read(resolution)?,
            retention_ms: read(retention)?,
        };
        if policy.retention_ms < policy.resolution_ms {
            return Err(PolicyError::RetentionTooShort(text.to_string()));
        }
        Ok(policy)
    }
}

impl fmt::Display for StoragePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}",
            format_duration_ms(self.resolution_ms),
            format_duration_ms(self.retention_ms)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_aligns_windows() {
        let policy: StoragePolicy = "1m:40d".parse().unwrap();
        assert_eq!(policy.resolution_ms, 60_000);
        assert_eq!(policy.retention_ms, 40 * 86_400_000);
        assert_eq!(policy.dir_name(), "1m_40d");
        assert_eq!(policy.window_start(119_999), 60_000);
        assert_eq!(policy.window_start(120_000), 120_000);
        assert_eq!(policy.window_start(-1), -60_000);
    }

    #[test]
    fn refuses_broken_policies() {
        for text in ["10s", "10s:", ":2d", "10q:2d", "1d:1h", "0s:1d", "10s:2d:3d"] {
            assert!(text.parse::<StoragePolicy>().is_err(), "{text:?}");
        }
        assert_eq!(
            "1d:1h".parse::<StoragePolicy>().unwrap_err().to_string(),
            "invalid storage policy \"1d:1h\": retention must be at least the resolution"
        );
    }
}
