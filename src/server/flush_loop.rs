//! The flush loop's work: closes due windows on a blocking thread, hands the
//! records to the sinks, and with the write-ahead log on checkpoints each flush
//! (intent, store fsync, watermarks) so a crash never emits a window twice.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::clock::Clock;
use crate::engine::{AggregateRecord, Engine, FlushStats, Watermarks};
use crate::sink::file_store::FileStore;
use crate::sink::SinkSet;
use crate::telemetry::Telemetry;
use crate::wal::Wal;

pub(super) struct FlushLoop {
    pub(super) engine: Arc<Engine>,
    pub(super) sinks: Arc<SinkSet>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) telemetry: Arc<Telemetry>,
    /// The write-ahead log, when on: each flush is checkpointed in it.
    pub(super) wal: Option<Arc<Wal>>,
    /// Paths of the store's segment files (the store itself runs on its sink thread).
    pub(super) store_paths: Option<FileStore>,
    /// Store writes that failed; a flush during which one failed is not committed.
    pub(super) store_failures: Arc<AtomicU64>,
    /// In a cluster: leadership and flush marks decide what is flushed.
    pub(super) cluster: Option<super::cluster_flush::ClusterFlush>,
}

/// Every store file the records will be appended to, with its length now.
fn store_files_touched(store: &FileStore, chunks: &[Vec<AggregateRecord>]) -> Vec<(PathBuf, u64)> {
    let segments: BTreeSet<_> = chunks
        .iter()
        .flatten()
        .map(|record| {
            (
                record.policy,
                store.segment_start(&record.policy, record.window_start_ms),
            )
        })
        .collect();
    segments
        .into_iter()
        .map(|(policy, start)| {
            let path = store.segment_path(&policy, start);
            let length = std::fs::metadata(&path).map(|meta| meta.len()).unwrap_or(0);
            (path, length)
        })
        .collect()
}

impl FlushLoop {
    /// One flush with the write-ahead log on: intent in the checkpoint, records
    /// to the sinks, the store's fsync awaited, then the watermarks committed and
    /// the log segments every window of which has flushed deleted (see `wal`).
    fn flush_logged(&self, wal: &Wal, now_ms: i64, everything: bool, settle: bool) -> FlushStats {
        let mut chunks = Vec::new();
        let stats = if everything {
            self.engine.flush_all(now_ms, |records| chunks.push(records))
        } else {
            self.engine.flush_due(now_ms, |records| chunks.push(records))
        };
        self.telemetry.flushed(stats.windows as u64, stats.records as u64);
        let watermarks = self.engine.watermarks();
        if !self.deliver_logged(Some(wal), chunks, now_ms, true, settle) {
            return stats;
        }
        self.commit_log(wal, watermarks, now_ms, everything);
        stats
    }

    /// Commits a flush whose records are durable: the watermarks, then the
    /// log segments whose windows all ended by `flushed_at_ms` deleted.
    pub(super) fn commit_log(&self, wal: &Wal, watermarks: Watermarks, flushed_at_ms: i64, everything: bool) {
        match wal.commit_flush(watermarks, flushed_at_ms, self.engine.flush_horizon_ms(), everything) {
            Ok(removed) if removed > 0 => tracing::debug!(removed, "write-ahead log segments deleted"),
            Ok(_) => {}
            Err(error) => tracing::error!(%error, "cannot commit the flush checkpoint"),
        }
    }

    /// Hands `chunks` to the sinks. With the log on, the store files they go
    /// to are recorded in the checkpoint first (a crash before the commit cuts
    /// them back and replays their windows). Waits for the store's fsync when
    /// `store_durable` (and for every sink when `settle`). Returns whether the
    /// flush may be committed: every record of it is in the store.
    pub(super) fn deliver_logged(
        &self,
        wal: Option<&Wal>,
        chunks: Vec<Vec<AggregateRecord>>,
        now_ms: i64,
        store_durable: bool,
        settle: bool,
    ) -> bool {
        let failures_before = self.store_failures.load(Ordering::Relaxed);
        let mut intent_recorded = true;
        if let (Some(wal), Some(store)) = (wal, &self.store_paths) {
            let files = store_files_touched(store, &chunks);
            if !files.is_empty() {
                if let Err(error) = wal.begin_flush(files) {
                    // Deliver anyway (losing nothing); without a commit replay may emit these windows again.
                    tracing::error!(%error, "cannot record the flush in the checkpoint");
                    intent_recorded = false;
                }
            }
        }
        for chunk in chunks {
            self.sinks.deliver(chunk, now_ms);
        }
        self.sinks.tick(now_ms);
        if store_durable && self.store_paths.is_some() {
            self.sinks.barrier_of("store");
        }
        if settle {
            self.sinks.barrier();
        }
        if !intent_recorded || self.store_failures.load(Ordering::Relaxed) != failures_before {
            tracing::error!("flush not committed: a store write failed; the log keeps its windows");
            return false;
        }
        true
    }

    /// Flushes due (or all) windows on a blocking thread; waits for sinks when `settle`.
    pub(super) async fn flush(self: &Arc<Self>, everything: bool, settle: bool) -> FlushStats {
        if let Some(cluster) = &self.cluster {
            return self.flush_clustered(cluster, settle).await;
        }
        let engine = Arc::clone(&self.engine);
        let sinks = Arc::clone(&self.sinks);
        let now_ms = self.clock.now_ms();
        let telemetry = Arc::clone(&self.telemetry);
        let this = Arc::clone(self);
        let work = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            if let Some(profiler) = engine.profiler() {
                profiler.roll(now_ms);
            }
            let stats = match &this.wal {
                Some(wal) => {
                    let stats = this.flush_logged(wal, now_ms, everything, settle);
                    telemetry.wal_size(wal.size_bytes());
                    stats
                }
                None => {
                    let deliver = |records| sinks.deliver(records, now_ms);
                    let stats = if everything {
                        engine.flush_all(now_ms, deliver)
                    } else {
                        engine.flush_due(now_ms, deliver)
                    };
                    telemetry.flushed(stats.windows as u64, stats.records as u64);
                    sinks.tick(now_ms);
                    if settle {
                        sinks.barrier();
                    }
                    stats
                }
            };
            telemetry.flush_completed(now_ms, started.elapsed());
            telemetry.exporter().upkeep();
            stats
        });
        work.await.unwrap_or_else(|error| {
            tracing::error!(%error, "flush task failed");
            FlushStats::default()
        })
    }
}
