//! The checkpoint: per shard and policy, the window end up to which flushed
//! records are durably in the store (the flush watermarks), plus the intent of
//! a flush in progress, so a crash mid-flush is undone instead of duplicated.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::Watermarks;
use crate::model::StoragePolicy;

use super::WalError;

/// The file form of watermarks: `[[["10s:2d", 1700000000000], ...], ...]`, one list per shard.
pub(super) type WatermarkLists = Vec<Vec<(String, i64)>>;

/// What `checkpoint.json` holds.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct CheckpointFile {
    /// Watermarks of the last flush whose records are durable.
    committed: WatermarkLists,
    /// A flush that started and has not been committed: store files it may
    /// have appended to, with their length before the flush.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pending_store_files: Vec<(PathBuf, u64)>,
}

/// The checkpoint in `<wal dir>/checkpoint.json`, written by replace-and-rename.
pub struct Checkpoint {
    path: PathBuf,
    committed: Watermarks,
    pending: Vec<(PathBuf, u64)>,
}

impl Checkpoint {
    /// Reads the checkpoint of `dir` and undoes an uncommitted flush: every store
    /// file it names is cut back to its length before that flush (its windows
    /// are above the committed watermark, so replay emits them again).
    pub fn recover(dir: &Path) -> Result<Checkpoint, WalError> {
        let path = dir.join("checkpoint.json");
        let file: CheckpointFile = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| WalError::Checkpoint {
                path: path.display().to_string(),
                problem: error.to_string(),
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => CheckpointFile::default(),
            Err(source) => return Err(WalError::io(&path, source)),
        };
        let committed = from_lists(&file.committed, &path)?;
        let checkpoint = Checkpoint {
            path,
            committed,
            pending: Vec::new(),
        };
        if !file.pending_store_files.is_empty() {
            for (store_file, length) in &file.pending_store_files {
                match OpenOptions::new().write(true).open(store_file) {
                    Ok(handle) => {
                        let current = handle
                            .metadata()
                            .map_err(|source| WalError::io(store_file, source))?
                            .len();
                        if current > *length {
                            handle
                                .set_len(*length)
                                .map_err(|source| WalError::io(store_file, source))?;
                            handle.sync_all().map_err(|source| WalError::io(store_file, source))?;
                            tracing::warn!(file = %store_file.display(), cut_bytes = current - length, "undid a flush interrupted before its checkpoint");
                        }
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => return Err(WalError::io(store_file, source)),
                }
            }
            checkpoint.write()?;
        }
        Ok(checkpoint)
    }

    /// Watermarks of the last committed flush.
    pub fn committed(&self) -> &Watermarks {
        &self.committed
    }

    /// Records, before a flush hands records to the store, the files it may
    /// append to and their current lengths. Files of an earlier flush that was
    /// never committed keep their older length.
    pub fn begin(&mut self, store_files: Vec<(PathBuf, u64)>) -> Result<(), WalError> {
        let before = self.pending.len();
        for (file, length) in store_files {
            if !self.pending.iter().any(|(known, _)| *known == file) {
                self.pending.push((file, length));
            }
        }
        if self.pending.len() == before {
            return Ok(());
        }
        self.write()
    }

    /// Records that every flushed record up to `watermarks` is durable in the store.
    pub fn commit(&mut self, watermarks: Watermarks) -> Result<(), WalError> {
        if watermarks == self.committed && self.pending.is_empty() {
            return Ok(());
        }
        self.committed = watermarks;
        self.pending.clear();
        self.write()
    }

    fn write(&self) -> Result<(), WalError> {
        let file = CheckpointFile {
            committed: to_lists(&self.committed),
            pending_store_files: self.pending.clone(),
        };
        let bytes = serde_json::to_vec(&file).map_err(|error| WalError::Checkpoint {
            path: self.path.display().to_string(),
            problem: error.to_string(),
        })?;
        write_atomically(&self.path, &bytes)
    }
}

/// The file form of `watermarks`.
pub(super) fn to_lists(watermarks: &Watermarks) -> WatermarkLists {
    watermarks
        .iter()
        .map(|marks| {
            marks
                .iter()
                .map(|(policy, until)| (policy.to_string(), *until))
                .collect()
        })
        .collect()
}

/// Watermarks from their file form, read from `path` (named in errors).
pub(super) fn from_lists(lists: &WatermarkLists, path: &Path) -> Result<Watermarks, WalError> {
    let mut watermarks = Vec::with_capacity(lists.len());
    for shard in lists {
        let mut marks = Vec::with_capacity(shard.len());
        for (policy, until) in shard {
            let policy: StoragePolicy =
                policy
                    .parse()
                    .map_err(|error: crate::model::PolicyError| WalError::Checkpoint {
                        path: path.display().to_string(),
                        problem: error.to_string(),
                    })?;
            marks.push((policy, *until));
        }
        watermarks.push(marks);
    }
    Ok(watermarks)
}

/// Replaces `path` with `bytes` durably: a fsynced temporary renamed over it.
pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), WalError> {
    let temporary = path.with_extension("json.tmp");
    let mut out = File::create(&temporary).map_err(|source| WalError::io(&temporary, source))?;
    out.write_all(bytes)
        .map_err(|source| WalError::io(&temporary, source))?;
    out.sync_all().map_err(|source| WalError::io(&temporary, source))?;
    fs::rename(&temporary, path).map_err(|source| WalError::io(path, source))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Makes a directory's entries (new, renamed, removed files) durable.
pub fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|source| WalError::io(dir, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_uncommitted_flush_is_cut_back_and_a_committed_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store_file = dir.path().join("segment.jsonl");
        fs::write(&store_file, "old\n").unwrap();
        let policy: StoragePolicy = "10s:2d".parse().unwrap();

        let mut checkpoint = Checkpoint::recover(dir.path()).unwrap();
        assert!(checkpoint.committed().is_empty());
        checkpoint
            .begin(vec![(store_file.clone(), 4), (dir.path().join("new.jsonl"), 0)])
            .unwrap();
        fs::write(&store_file, "old\nflushed\n").unwrap();
        checkpoint.commit(vec![vec![(policy, 20_000)], vec![]]).unwrap();

        // The next flush writes but the process dies before its commit.
        checkpoint.begin(vec![(store_file.clone(), 12)]).unwrap();
        fs::write(&store_file, "old\nflushed\nhalf-writ").unwrap();
        drop(checkpoint);

        let recovered = Checkpoint::recover(dir.path()).unwrap();
        assert_eq!(fs::read_to_string(&store_file).unwrap(), "old\nflushed\n");
        assert_eq!(recovered.committed(), &vec![vec![(policy, 20_000)], vec![]]);
        // Recovery is itself committed: a second recovery cuts nothing more.
        fs::write(&store_file, "old\nflushed\nlater\n").unwrap();
        Checkpoint::recover(dir.path()).unwrap();
        assert_eq!(fs::read_to_string(&store_file).unwrap(), "old\nflushed\nlater\n");
    }

    #[test]
    fn a_broken_checkpoint_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("checkpoint.json"),
            "{\"committed\": [[[\"ten:2d\", 5]]]}",
        )
        .unwrap();
        let error = Checkpoint::recover(dir.path()).err().unwrap().to_string();
        assert!(error.contains("checkpoint.json") && error.contains("ten:2d"), "{error}");
        fs::write(dir.path().join("checkpoint.json"), "not json").unwrap();
        let error = Checkpoint::recover(dir.path()).err().unwrap().to_string();
        assert!(error.contains("checkpoint.json"), "{error}");
    }
}
