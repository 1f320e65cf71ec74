//! Sinks: where aggregate records go after a flush. Each sink runs on its own
//! thread behind a bounded channel, so a slow disk holds back the flush loop,
//! never ingest. Sinks see aggregate records only, never raw samples.

pub mod file_store;
mod json;
pub mod remote_write;
pub mod selection_query;
pub mod selections;

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use thiserror::Error;

use crate::engine::AggregateRecord;

pub use json::{record_json, JsonLink, JsonRecord};

/// Errors of sinks.
#[derive(Debug, Error)]
pub enum SinkError {
    /// A file could not be created, written or removed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A record could not be encoded.
    #[error("cannot encode record of {series}: {message}")]
    Encode {
        /// The series.
        series: String,
        /// Why.
        message: String,
    },
}

/// A destination of aggregate records, driven by its own thread.
pub trait SinkWriter: Send + 'static {
    /// Writes one flush chunk; `now_ms` is the flush's wall clock (for retention).
    fn write(&mut self, records: &[AggregateRecord], now_ms: i64) -> Result<(), SinkError>;

    /// Called on every flush tick, records or not (retries wait for it).
    fn tick(&mut self, _now_ms: i64) {}

    /// Called once when the sink stops, after everything was delivered to it.
    fn close(&mut self, _now_ms: i64) {}
}

enum SinkMessage {
    Records(Arc<Vec<AggregateRecord>>, i64),
    Tick(i64),
    Barrier(SyncSender<()>),
}

struct RunningSink {
    name: &'static str,
    sender: SyncSender<SinkMessage>,
    thread: JoinHandle<()>,
}

/// The running sinks. Every chunk goes to every sink, in order.
#[derive(Default)]
pub struct SinkSet {
    sinks: Vec<RunningSink>,
}

/// Chunks a sink may have queued before the flush loop waits for it.
const SINK_QUEUE_CHUNKS: usize = 256;

impl SinkSet {
    /// Starts `writer` on a thread named `name`; `on_result` sees each write's record count or error.
    pub fn spawn(
        &mut self,
        name: &'static str,
        mut writer: impl SinkWriter,
        on_result: impl Fn(usize, Result<(), SinkError>) + Send + 'static,
    ) -> std::io::Result<()> {
        let (sender, receiver): (SyncSender<SinkMessage>, Receiver<SinkMessage>) = sync_channel(SINK_QUEUE_CHUNKS);
        let thread = std::thread::Builder::new()
            .name(format!("sink-{name}"))
            .spawn(move || {
                let mut last_now_ms = i64::MIN;
                for message in receiver {
                    match message {
                        SinkMessage::Records(records, now_ms) => {
                            last_now_ms = now_ms;
                            on_result(records.len(), writer.write(&records, now_ms));
                        }
                        SinkMessage::Tick(now_ms) => {
                            last_now_ms = now_ms;
                            writer.tick(now_ms);
                        }
                        SinkMessage::Barrier(done) => {
                            let _ = done.send(());
                        }
                    }
                }
                writer.close(last_now_ms);
            })?;
        self.sinks.push(RunningSink { name, sender, thread });
        Ok(())
    }

    /// Hands a chunk to every sink; waits while a sink's queue is full.
    pub fn deliver(&self, records: Vec<AggregateRecord>, now_ms: i64) {
        if records.is_empty() {
            return;
        }
        let records = Arc::new(records);
        for sink in &self.sinks {
            if sink
                .sender
                .send(SinkMessage::Records(Arc::clone(&records), now_ms))
                .is_err()
            {
                tracing::error!(
                    sink = sink.name,
                    records = records.len(),
                    "sink thread is gone; records lost"
                );
            }
        }
    }

    /// Lets every sink retry what it holds; skipped for a sink whose queue is full.
    pub fn tick(&self, now_ms: i64) {
        for sink in &self.sinks {
            let _ = sink.sender.try_send(SinkMessage::Tick(now_ms));
        }
    }

    /// Returns once every sink has processed everything delivered before the call.
    pub fn barrier(&self) {
        self.barrier_where(|_| true);
    }

    /// Returns once every sink named `name` has processed everything delivered
    /// before the call (the others may still be working, e.g. retrying a send).
    pub fn barrier_of(&self, name: &str) {
        self.barrier_where(|sink| sink.name == name);
    }

    /// Sends a barrier to every sink `chosen` picks (all at once, so they
    /// work in parallel), then waits for each to answer.
    fn barrier_where(&self, chosen: impl Fn(&RunningSink) -> bool) {
        let waits: Vec<_> = self
            .sinks
            .iter()
            .filter(|sink| chosen(sink))
            .filter_map(|sink| {
                let (done, wait) = sync_channel(1);
                sink.sender.send(SinkMessage::Barrier(done)).ok().map(|_| wait)
            })
            .collect();
        for wait in waits {
            let _ = wait.recv();
        }
    }

    /// Stops every sink after it has processed what it was given.
    /// All are told at once, so their final drains (retries) overlap.
    pub fn close(self) {
        let threads: Vec<_> = self
            .sinks
            .into_iter()
            .map(|sink| {
                drop(sink.sender);
                (sink.name, sink.thread)
            })
            .collect();
        for (name, thread) in threads {
            if thread.join().is_err() {
                tracing::error!(sink = name, "sink thread panicked");
            }
        }
    }
}
