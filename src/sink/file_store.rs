//! The embedded default store: JSON lines under `<data_dir>/store/<policy>/`,
//! one segment file per time span (named by its UTC start, e.g.
//! `20261122T120000Z.jsonl`), deleted once older than the policy's retention.
//! `cat`, `jq` and `grep` read it.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::engine::AggregateRecord;
use crate::model::StoragePolicy;

use super::{record_json, SinkError, SinkWriter};

/// Default segment length: an hour, but at least one window and at most half the retention.
pub fn default_segment_ms(policy: &StoragePolicy) -> u64 {
    (3_600_000u64).min(policy.retention_ms / 2).max(policy.resolution_ms)
}

/// The file store sink.
pub struct FileStore {
    root: PathBuf,
    segment_override_ms: Option<u64>,
    /// Last time retention was enforced; it runs at most once per minute.
    last_retention_ms: i64,
    /// fsync every write (and new files' directories) before it returns.
    sync: bool,
}

impl FileStore {
    /// A store writing under `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>, segment_override_ms: Option<u64>) -> Self {
        FileStore {
            root: root.into(),
            segment_override_ms,
            last_retention_ms: i64::MIN,
            sync: false,
        }
    }

    /// With `sync`, a write returns only once its records are on disk (the
    /// write-ahead log's checkpoint relies on it).
    pub fn with_sync(mut self, sync: bool) -> Self {
        self.sync = sync;
        self
    }

    /// The root folder (`<data_dir>/store`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn segment_ms(&self, policy: &StoragePolicy) -> u64 {
        self.segment_override_ms.unwrap_or_else(|| default_segment_ms(policy))
    }

    /// The segment file holding windows of `policy` that start at `window_start_ms`.
    pub fn segment_path(&self, policy: &StoragePolicy, window_start_ms: i64) -> PathBuf {
        let start = self.segment_start(policy, window_start_ms);
        self.root
            .join(policy.dir_name())
            .join(format!("{}.jsonl", utc_compact(start)))
    }

    /// Start of the segment that holds a window of `policy` starting at `window_start_ms`.
    pub fn segment_start(&self, policy: &StoragePolicy, window_start_ms: i64) -> i64 {
        let segment = self.segment_ms(policy) as i64;
        window_start_ms.div_euclid(segment) * segment
    }

    /// Deletes segments of every policy folder whose newest window is older than the retention.
    pub fn enforce_retention(&mut self, now_ms: i64) -> Result<usize, SinkError> {
        let mut removed = 0;
        let Ok(policies) = fs::read_dir(&self.root) else {
            return Ok(0);
        };
        for entry in policies.flatten() {
            let Some(policy) = entry.file_name().to_str().and_then(policy_of_dir) else {
                continue;
            };
            let segment = self.segment_ms(&policy) as i64;
            let files = fs::read_dir(entry.path()).map_err(|source| io_error(&entry.path(), source))?;
            for file in files.flatten() {
                let name = file.file_name();
                let Some(start) = name
                    .to_str()
                    .and_then(|n| n.strip_suffix(".jsonl"))
                    .and_then(parse_utc_compact)
                else {
                    continue;
                };
                if start + segment + policy.retention_ms as i64 <= now_ms {
                    fs::remove_file(file.path()).map_err(|source| io_error(&file.path(), source))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

impl SinkWriter for FileStore {
    fn write(&mut self, records: &[AggregateRecord], now_ms: i64) -> Result<(), SinkError> {
        // Grouped by (policy, segment start): the path is built once per segment, not per record.
        let mut by_segment: BTreeMap<(StoragePolicy, i64), Vec<&AggregateRecord>> = BTreeMap::new();
        for record in records {
            by_segment
                .entry((
                    record.policy,
                    self.segment_start(&record.policy, record.window_start_ms),
                ))
                .or_default()
                .push(record);
        }
        for ((policy, start), records) in by_segment {
            let path = self.segment_path(&policy, start);
            let created = self.sync && !path.exists();
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).map_err(|source| io_error(dir, source))?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|source| io_error(&path, source))?;
            let mut out = BufWriter::with_capacity(256 * 1024, file);
            for record in records {
                serde_json::to_writer(&mut out, &record_json(record)).map_err(|error| SinkError::Encode {
                    series: record.series.to_string(),
                    message: error.to_string(),
                })?;
                out.write_all(b"\n").map_err(|source| io_error(&path, source))?;
            }
            out.flush().map_err(|source| io_error(&path, source))?;
            if self.sync {
                out.get_ref().sync_data().map_err(|source| io_error(&path, source))?;
                if created {
                    for dir in [path.parent(), path.parent().and_then(Path::parent)]
                        .into_iter()
                        .flatten()
                    {
                        fs::File::open(dir)
                            .and_then(|handle| handle.sync_all())
                            .map_err(|source| io_error(dir, source))?;
                    }
                }
            }
        }
        if now_ms.saturating_sub(self.last_retention_ms) >= 60_000 {
            self.last_retention_ms = now_ms;
            let removed = self.enforce_retention(now_ms)?;
            if removed > 0 {
                tracing::info!(removed, "deleted segments past retention");
            }
        }
        Ok(())
    }
}

fn io_error(path: &Path, source: std::io::Error) -> SinkError {
    SinkError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// `10s_2d` back to the policy it names.
fn policy_of_dir(name: &str) -> Option<StoragePolicy> {
    name.replacen('_', ":", 1).parse().ok()
}

/// `20261122T120000Z` for ms since the epoch (UTC).
pub fn utc_compact(ms: i64) -> String {
    let seconds = ms.div_euclid(1000);
    let (days, second_of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

/// Inverse of [`utc_compact`].
pub fn parse_utc_compact(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() != 16 || bytes[8] != b'T' || bytes[15] != b'Z' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    let (year, month, day) = (number(0..4)?, number(4..6)?, number(6..8)?);
    let (hour, minute, second) = (number(9..11)?, number(11..13)?, number(13..15)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(((days * 86_400) + hour * 3600 + minute * 60 + second) * 1000)
}

// Howard Hinnant's civil calendar algorithms (proleptic Gregorian, UTC).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_names_round_trip() {
        assert_eq!(utc_compact(0), "19700101T000000Z");
        assert_eq!(utc_compact(1_795_435_200_000), "20261123T120000Z");
        for ms in [0, 951_782_400_000, 1_795_435_200_000, 4_102_444_799_000] {
            assert_eq!(parse_utc_compact(&utc_compact(ms)), Some(ms));
        }
        assert_eq!(parse_utc_compact("20261322T090000Z"), None);
        assert_eq!(parse_utc_compact("nonsense"), None);
    }

    #[test]
    fn segments_follow_policy_and_retention_deletes_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FileStore::new(dir.path(), None);
        let policy: StoragePolicy = "10s:2h".parse().unwrap();
        assert_eq!(default_segment_ms(&policy), 3_600_000);
        let short: StoragePolicy = "1s:10s".parse().unwrap();
        assert_eq!(default_segment_ms(&short), 5_000);
        let path = store.segment_path(&policy, 3_600_000 + 20_000);
        assert!(path.ends_with("10s_2h/19700101T010000Z.jsonl"), "{path:?}");

        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let old = store.segment_path(&policy, 0);
        fs::write(&old, "{}\n").unwrap();
        fs::write(&path, "{}\n").unwrap();
        // The first segment [0, 1h) expires once its end plus 2h retention has passed.
        assert_eq!(store.enforce_retention(3 * 3_600_000 - 1).unwrap(), 0);
        assert_eq!(store.enforce_retention(3 * 3_600_000).unwrap(), 1);
        assert!(!old.exists() && path.exists());
    }
}
