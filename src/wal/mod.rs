//! The write-ahead log: sits between ingest and the engine. A validated batch
//! is appended and fsynced (group commit: one writer thread batches the
//! appends waiting and fsyncs once) before the engine folds it and the writer
//! is acknowledged. On start the log is replayed into the engine above the
//! persisted flush watermarks; segments go once every window they feed has
//! flushed.
//!
//! Exactly once in the file store, the argument: a flush (1) records in the
//! checkpoint the store files it may append to with their lengths, (2) hands
//! the records to the store, which fsyncs them, (3) commits the new
//! watermarks in the checkpoint (atomic rename). A crash before (3) leaves
//! the intent of (1): recovery cuts those files back to those lengths and
//! keeps the old watermarks, so replay emits the windows again, once. A crash
//! after (3) keeps the records and replay refuses their windows as already
//! flushed (the watermarks are restored per shard, as the engine tracks them).
//! Remote-write sinks get at-least-once across a crash: their sends are not
//! part of the checkpoint.
//!
//! A clean stop (SIGTERM) flushes only the windows that are due and keeps
//! the segments of the rest: the next start replays them into open windows,
//! so no window is written partial and later points for it are still taken.

mod checkpoint;
pub mod codec;
mod stop_marks;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;
use thiserror::Error;
use tokio::sync::oneshot;

use crate::engine::{Engine, PartialError, PartialWindow, Watermarks};
use crate::model::{DropReason, IngestBatch, Outcome};

pub use checkpoint::sync_dir;
use checkpoint::Checkpoint;
pub use codec::{decode, decode_frame, encode, encode_forwarded, encode_shares, Decoded, Frame, Torn};
pub use stop_marks::{read_stop_marks, stop_marks_path, write_stop_marks};

/// Errors of the write-ahead log.
#[derive(Debug, Error)]
pub enum WalError {
    /// A log, checkpoint or store file could not be read or written.
    #[error("write-ahead log: {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The checkpoint file does not parse.
    #[error("write-ahead log checkpoint {path}: {problem}")]
    Checkpoint {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// An append failed; the batch was not acknowledged.
    #[error("write-ahead log append failed: {0}")]
    Append(String),
    /// The log is closed (shutting down).
    #[error("write-ahead log is closed: the service is shutting down")]
    Closed,
}

impl WalError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        WalError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Checked settings of the log (see `config::WalConfig`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalSettings {
    /// Directory of segments and the checkpoint.
    pub dir: PathBuf,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
}

/// What replay did at start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Segments read.
    pub segments: usize,
    /// Batches read.
    pub batches: usize,
    /// Points folded into open windows again.
    pub accepted: u64,
    /// Points skipped because their window had flushed (and committed) before
    /// the stop: they are in the store already, nothing is lost.
    pub already_flushed: u64,
    /// Points refused for any other reason (e.g. rules reloaded since, dropping them).
    pub refused: u64,
    /// Bytes of torn or corrupt tails skipped (a crash mid-append).
    pub skipped_bytes: u64,
    /// Rollup shares (cluster) assembled again.
    pub shares: u64,
    /// Rollup shares skipped because their rollup window had flushed.
    pub shares_already_flushed: u64,
}

/// One segment file and the latest event time it holds.
struct Segment {
    path: PathBuf,
    latest_ms: i64,
    bytes: u64,
}

struct Append {
    frame: Vec<u8>,
    latest_ms: i64,
    done: oneshot::Sender<Result<(), String>>,
}

/// The segments: closed ones oldest first, the last one being written.
struct Segments {
    list: Vec<Segment>,
    next_seq: u64,
}

/// The open log.
pub struct Wal {
    dir: PathBuf,
    sender: Mutex<Option<SyncSender<Append>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    segments: Arc<Mutex<Segments>>,
    roll: Arc<AtomicBool>,
    checkpoint: Mutex<Checkpoint>,
    /// Segments whose latest event time is at or before this fed only windows
    /// a committed flush wrote (`i64::MAX` once every window was): what
    /// `close` may delete, the segment being written included.
    released_until_ms: AtomicI64,
    /// False once sealed: held (read) from a batch's append to its fold, so
    /// no batch is logged that the engine then refuses as closed (a sender
    /// retrying it would find it twice after replay).
    open: tokio::sync::RwLock<bool>,
    /// The forwarded batches replayed at open, for the cluster service to
    /// recognise their senders' retries.
    replayed_forwards: Mutex<Vec<ReplayedForward>>,
}

/// A forwarded batch found in the log at start.
#[derive(Debug)]
pub struct ReplayedForward {
    /// The instance that forwarded it.
    pub from: String,
    /// The id it gave the batch.
    pub id: u64,
    /// The arrival time stamped on it.
    pub now_ms: i64,
    /// What its points came to: accepted, or refused with the reason (points
    /// of windows flushed before the stop count as accepted: the store has them).
    pub outcome: Outcome,
}

/// Folds one logged batch again, at the arrival time it was first folded at
/// (the same windows accept it; the limits admitted it already). Returns what
/// its points came to, windows flushed before the stop counting as accepted.
fn replay_batch(engine: &Engine, frame: &Decoded, stats: &mut ReplayStats) -> Option<Outcome> {
    stats.batches += 1;
    let mut outcome = engine
        .fold_admitted(&frame.batch, frame.now_ms, Outcome::default())
        .ok()?;
    stats.accepted += outcome.accepted;
    let flushed = outcome.rejected_for(DropReason::TooLate);
    stats.already_flushed += flushed;
    stats.refused += outcome.rejected_total() - flushed;
    outcome.move_to_accepted(DropReason::TooLate);
    Some(outcome)
}

/// Appends a writer takes into one write and one fsync, at most.
const GROUP_MAX: usize = 4096;

fn segment_name(seq: u64) -> String {
    format!("{seq:020}.wal")
}

impl Wal {
    /// Opens the log in `settings.dir`: undoes a flush interrupted before its
    /// checkpoint (cutting `store` files back), restores the engine's
    /// watermarks, replays every segment into `engine`, and starts the writer.
    pub fn open(settings: &WalSettings, engine: &Engine) -> Result<(Wal, ReplayStats), WalError> {
        let dir = settings.dir.clone();
        fs::create_dir_all(&dir).map_err(|source| WalError::io(&dir, source))?;
        let checkpoint = Checkpoint::recover(&dir)?;
        engine.restore_watermarks(checkpoint.committed());

        let mut names: Vec<(u64, PathBuf)> = fs::read_dir(&dir)
            .map_err(|source| WalError::io(&dir, source))?
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name();
                let seq = name.to_str()?.strip_suffix(".wal")?.parse().ok()?;
                Some((seq, entry.path()))
            })
            .collect();
        names.sort();
        let mut stats = ReplayStats::default();
        let mut forwards = Vec::new();
        let mut list = Vec::with_capacity(names.len() + 1);
        for (_, path) in &names {
            let bytes = fs::read(path).map_err(|source| WalError::io(path, source))?;
            let mut offset = 0;
            let mut latest_ms = i64::MIN;
            while offset < bytes.len() {
                match decode_frame(&bytes[offset..]) {
                    Ok(Frame::Shares {
                        source,
                        shares,
                        latest_ms: frame_latest_ms,
                        frame_bytes,
                    }) => {
                        offset += frame_bytes;
                        latest_ms = latest_ms.max(frame_latest_ms);
                        for share in shares {
                            match engine.fold_partial(source, share) {
                                Ok(()) => stats.shares += 1,
                                Err(PartialError::TooLate { .. }) => stats.shares_already_flushed += 1,
                                Err(error) => {
                                    tracing::warn!(file = %path.display(), %error, "logged rollup share refused on replay");
                                    stats.refused += 1;
                                }
                            }
                        }
                    }
                    Ok(Frame::Batch(frame)) => {
                        offset += frame.frame_bytes;
                        latest_ms = latest_ms.max(frame.latest_ms);
                        replay_batch(engine, &frame, &mut stats);
                    }
                    Ok(Frame::Forwarded { from, id, decoded }) => {
                        offset += decoded.frame_bytes;
                        latest_ms = latest_ms.max(decoded.latest_ms);
                        if let Some(outcome) = replay_batch(engine, &decoded, &mut stats) {
                            forwards.push(ReplayedForward {
                                from,
                                id,
                                now_ms: decoded.now_ms,
                                outcome,
                            });
                        }
                    }
                    Err(torn) => {
                        // Only the acknowledged prefix counts; the rest was never acknowledged.
                        tracing::warn!(file = %path.display(), offset, ?torn, "write-ahead log segment ends in a torn frame; rest skipped");
                        stats.skipped_bytes += (bytes.len() - offset) as u64;
                        break;
                    }
                }
            }
            stats.segments += 1;
            list.push(Segment {
                path: path.clone(),
                latest_ms,
                bytes: offset as u64,
            });
        }
        let next_seq = names.last().map_or(0, |(seq, _)| seq + 1);
        let segments = Arc::new(Mutex::new(Segments { list, next_seq }));
        let first = open_segment(&dir, &segments)?;
        let roll = Arc::new(AtomicBool::new(false));
        let (sender, receiver) = sync_channel(GROUP_MAX);
        let writer = {
            let segments = Arc::clone(&segments);
            let roll = Arc::clone(&roll);
            let dir = dir.clone();
            let limit = settings.segment_bytes;
            std::thread::Builder::new()
                .name("wal-writer".to_string())
                .spawn(move || write_loop(receiver, first, &dir, &segments, &roll, limit))
                .map_err(|source| WalError::io(&settings.dir, source))?
        };
        Ok((
            Wal {
                dir,
                sender: Mutex::new(Some(sender)),
                writer: Mutex::new(Some(writer)),
                segments,
                roll,
                checkpoint: Mutex::new(checkpoint),
                released_until_ms: AtomicI64::new(i64::MIN),
                replayed_forwards: Mutex::new(forwards),
                open: tokio::sync::RwLock::new(true),
            },
            stats,
        ))
    }

    /// Admits one batch to be logged and folded: the guard is held until it
    /// is folded; `None` once [`Wal::seal`] was called (shutting down).
    pub async fn admit(&self) -> Option<tokio::sync::RwLockReadGuard<'_, bool>> {
        let open = self.open.read().await;
        (*open).then_some(open)
    }

    /// [`Wal::admit`] for a blocking thread (not an async one).
    pub fn admit_blocking(&self) -> Option<tokio::sync::RwLockReadGuard<'_, bool>> {
        let open = self.open.blocking_read();
        (*open).then_some(open)
    }

    /// Refuses every later batch and waits until each one admitted before
    /// was folded; the shutdown calls it before closing the engine.
    pub async fn seal(&self) {
        *self.open.write().await = false;
    }

    /// Appends `batch`, ingested at `now_ms`; resolves once it is on disk.
    pub async fn append(&self, batch: &IngestBatch, now_ms: i64) -> Result<(), WalError> {
        let mut frame = Vec::with_capacity(256);
        let latest_ms = encode(batch, now_ms, &mut frame);
        self.send(frame, latest_ms).await
    }

    /// Hands one frame to the writer; resolves once it is on disk.
    async fn send(&self, frame: Vec<u8>, latest_ms: i64) -> Result<(), WalError> {
        let (done, wait) = oneshot::channel();
        let sender = self.sender.lock().clone().ok_or(WalError::Closed)?;
        // The queue is bounded: a full one means the disk is behind; wait off the async threads.
        let append = Append { frame, latest_ms, done };
        match sender.try_send(append) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Full(append)) => {
                tokio::task::spawn_blocking(move || sender.send(append))
                    .await
                    .map_err(|error| WalError::Append(error.to_string()))?
                    .map_err(|_| WalError::Closed)?;
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return Err(WalError::Closed),
        }
        wait.await.map_err(|_| WalError::Closed)?.map_err(WalError::Append)
    }

    /// The forwarded batches replayed at open (taken once).
    pub fn take_replayed_forwards(&self) -> Vec<ReplayedForward> {
        std::mem::take(&mut *self.replayed_forwards.lock())
    }

    /// Appends a batch instance `from` forwarded under `id`; resolves once it is on disk.
    pub async fn append_forwarded(
        &self,
        from: &str,
        id: u64,
        batch: &IngestBatch,
        now_ms: i64,
    ) -> Result<(), WalError> {
        let mut frame = Vec::with_capacity(256);
        let latest_ms = encode_forwarded(from, id, batch, now_ms, &mut frame);
        self.send(frame, latest_ms).await
    }

    /// Appends the rollup `shares` handed over by shard set `source` (see
    /// [`encode_shares`]); resolves once they are on disk.
    pub async fn append_shares(&self, source: u32, shares: &[PartialWindow], latest_ms: i64) -> Result<(), WalError> {
        let mut frame = Vec::with_capacity(1024);
        encode_shares(source, shares, latest_ms, &mut frame);
        self.send(frame, latest_ms).await
    }

    /// [`Wal::append`] for a blocking thread (not an async one).
    pub fn append_blocking(&self, batch: &IngestBatch, now_ms: i64) -> Result<(), WalError> {
        let mut frame = Vec::with_capacity(256);
        let latest_ms = encode(batch, now_ms, &mut frame);
        let (done, wait) = oneshot::channel();
        let sender = self.sender.lock().clone().ok_or(WalError::Closed)?;
        sender
            .send(Append { frame, latest_ms, done })
            .map_err(|_| WalError::Closed)?;
        wait.blocking_recv()
            .map_err(|_| WalError::Closed)?
            .map_err(WalError::Append)
    }

    /// Step 1 of a flush: records the store files it may append to, with their
    /// current lengths, before the store sees any record.
    pub fn begin_flush(&self, store_files: Vec<(PathBuf, u64)>) -> Result<(), WalError> {
        self.checkpoint.lock().begin(store_files)
    }

    /// Step 3 of a flush, once the store has fsynced its records: commits the
    /// engine's `watermarks`, then deletes the segments whose every window has
    /// flushed (their latest event time plus `horizon_ms` is at or before
    /// `flushed_at_ms`); `everything` (the shutdown flush) releases them all.
    pub fn commit_flush(
        &self,
        watermarks: Watermarks,
        flushed_at_ms: i64,
        horizon_ms: i64,
        everything: bool,
    ) -> Result<usize, WalError> {
        self.checkpoint.lock().commit(watermarks)?;
        let released = if everything {
            i64::MAX
        } else {
            flushed_at_ms.saturating_sub(horizon_ms)
        };
        self.released_until_ms.fetch_max(released, Ordering::Relaxed);
        let mut segments = self.segments.lock();
        let active = segments.list.len().saturating_sub(1);
        let mut removed = 0;
        let mut kept = Vec::with_capacity(segments.list.len());
        for (index, segment) in segments.list.drain(..).enumerate() {
            let flushed = everything || segment.latest_ms.saturating_add(horizon_ms) <= flushed_at_ms;
            if index < active && flushed {
                fs::remove_file(&segment.path).map_err(|source| WalError::io(&segment.path, source))?;
                removed += 1;
            } else {
                if index == active && flushed && segment.bytes > 0 {
                    // Start a new segment at the next append, so this one can go next time.
                    self.roll.store(true, Ordering::Relaxed);
                }
                kept.push(segment);
            }
        }
        segments.list = kept;
        Ok(removed)
    }

    /// Stops the writer (appends after this fail with [`WalError::Closed`]),
    /// then deletes every segment (the one being written included) that fed
    /// only windows a committed flush wrote. The rest stay: the next start
    /// replays them into the windows still open at the stop.
    pub fn close(&self) -> Result<(), WalError> {
        drop(self.sender.lock().take());
        if let Some(writer) = self.writer.lock().take() {
            let _ = writer.join();
        }
        let released = self.released_until_ms.load(Ordering::Relaxed);
        let mut segments = self.segments.lock();
        let before = segments.list.len();
        let mut kept = Vec::with_capacity(before);
        for segment in segments.list.drain(..) {
            if segment.latest_ms <= released {
                fs::remove_file(&segment.path).map_err(|source| WalError::io(&segment.path, source))?;
            } else {
                kept.push(segment);
            }
        }
        segments.list = kept;
        if segments.list.len() != before {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Segment files currently kept.
    pub fn segment_count(&self) -> usize {
        self.segments.lock().list.len()
    }

    /// Bytes on disk of the segments currently kept (a segment that cannot be
    /// read counts zero; the size is a gauge, not a promise).
    pub fn size_bytes(&self) -> u64 {
        let paths: Vec<PathBuf> = self
            .segments
            .lock()
            .list
            .iter()
            .map(|segment| segment.path.clone())
            .collect();
        paths
            .iter()
            .filter_map(|path| fs::metadata(path).ok())
            .map(|metadata| metadata.len())
            .sum()
    }
}

/// Creates the next segment file and lists it as the one being written.
fn open_segment(dir: &Path, segments: &Mutex<Segments>) -> Result<File, WalError> {
    let mut segments = segments.lock();
    let path = dir.join(segment_name(segments.next_seq));
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(|source| WalError::io(&path, source))?;
    sync_dir(dir)?;
    segments.next_seq += 1;
    segments.list.push(Segment {
        path,
        latest_ms: i64::MIN,
        bytes: 0,
    });
    Ok(file)
}

/// The writer thread: takes every append waiting, writes them in one go,
/// fsyncs once, then acknowledges them all.
fn write_loop(
    receiver: Receiver<Append>,
    mut file: File,
    dir: &Path,
    segments: &Mutex<Segments>,
    roll: &AtomicBool,
    segment_bytes: u64,
) {
    let mut group: Vec<Append> = Vec::with_capacity(64);
    let mut buffer: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut written: u64 = 0;
    let mut broken = false;
    while let Ok(first) = receiver.recv() {
        group.push(first);
        while group.len() < GROUP_MAX {
            match receiver.try_recv() {
                Ok(append) => group.push(append),
                Err(_) => break,
            }
        }
        // After a failed write the segment may end in a torn frame: replay stops
        // there, so later frames go to a fresh segment.
        if broken || (written > 0 && (written >= segment_bytes || roll.swap(false, Ordering::Relaxed))) {
            match open_segment(dir, segments) {
                Ok(next) => {
                    file = next;
                    written = 0;
                    broken = false;
                }
                Err(error) => {
                    fail_group(&mut group, &error.to_string());
                    continue;
                }
            }
        }
        buffer.clear();
        let mut latest_ms = i64::MIN;
        for append in &group {
            buffer.extend_from_slice(&append.frame);
            latest_ms = latest_ms.max(append.latest_ms);
        }
        let result = file.write_all(&buffer).and_then(|()| file.sync_data());
        match result {
            Ok(()) => {
                written += buffer.len() as u64;
                if let Some(segment) = segments.lock().list.last_mut() {
                    segment.latest_ms = segment.latest_ms.max(latest_ms);
                    segment.bytes = written;
                }
                for append in group.drain(..) {
                    let _ = append.done.send(Ok(()));
                }
            }
            Err(error) => {
                broken = true;
                tracing::error!(%error, batches = group.len(), "write-ahead log append failed; writes refused");
                fail_group(&mut group, &error.to_string());
            }
        }
    }
    let _ = file.sync_all();
}

fn fail_group(group: &mut Vec<Append>, message: &str) {
    for append in group.drain(..) {
        let _ = append.done.send(Err(message.to_string()));
    }
}

#[cfg(test)]
mod tests;
