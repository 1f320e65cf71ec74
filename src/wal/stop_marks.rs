//! Without the write-ahead log, a stop flushes every open window (partial
//! ones too) and leaves their watermarks in `<data_dir>/flushed.json`; the
//! next start restores them, so those windows refuse later points (counted
//! per output) instead of being emitted a second time.

use std::fs;
use std::path::{Path, PathBuf};

use crate::engine::Watermarks;

use super::checkpoint::{from_lists, to_lists, write_atomically, WatermarkLists};
use super::WalError;

/// Where the watermarks of the last stop are kept under `data_dir`.
pub fn stop_marks_path(data_dir: &Path) -> PathBuf {
    data_dir.join("flushed.json")
}

/// Writes the watermarks of a stop's flush to `path`.
pub fn write_stop_marks(path: &Path, watermarks: &Watermarks) -> Result<(), WalError> {
    let bytes = serde_json::to_vec(&to_lists(watermarks)).map_err(|error| WalError::Checkpoint {
        path: path.display().to_string(),
        problem: error.to_string(),
    })?;
    write_atomically(path, &bytes)
}

/// The watermarks of the last stop, if one left them.
pub fn read_stop_marks(path: &Path) -> Result<Option<Watermarks>, WalError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(WalError::Io {
                path: path.display().to_string(),
                source,
            })
        }
    };
    let lists: WatermarkLists = serde_json::from_slice(&bytes).map_err(|error| WalError::Checkpoint {
        path: path.display().to_string(),
        problem: error.to_string(),
    })?;
    from_lists(&lists, path).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::StoragePolicy;

    #[test]
    fn stop_marks_round_trip_and_a_broken_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = stop_marks_path(dir.path());
        assert_eq!(read_stop_marks(&path).unwrap(), None);
        let policy: StoragePolicy = "10s:2d".parse().unwrap();
        let marks = vec![vec![(policy, 20_000)], vec![]];
        write_stop_marks(&path, &marks).unwrap();
        assert_eq!(read_stop_marks(&path).unwrap(), Some(marks));
        fs::write(&path, "[[[\"10x\", 1]]]").unwrap();
        let error = read_stop_marks(&path).unwrap_err().to_string();
        assert!(error.contains("flushed.json") && error.contains("10x"), "{error}");
    }
}
