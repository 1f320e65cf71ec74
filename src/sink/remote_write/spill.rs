//! The disk half of a remote-write shard's buffer: when the memory buffer is
//! full, its oldest requests move here (the spill holds the oldest part of
//! the queue, memory the newest, so order is kept). Frames are the sealed
//! request bodies, checksummed; a spill left by a previous run is read back
//! and sent first.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64;

use super::Batch;

/// Frame header: tenant length, series, samples, body length, checksum.
const HEADER_BYTES: usize = 4 + 4 + 8 + 4 + 8;

struct Entry {
    /// Offset of the body in the file.
    body_offset: u64,
    body_len: u32,
    tenant: Arc<str>,
    series: usize,
    samples: u64,
    /// Frame length, header included.
    frame_bytes: u64,
}

/// An append-only file of queued requests, read from the front.
pub struct Spill {
    path: PathBuf,
    file: File,
    entries: VecDeque<Entry>,
    /// Bytes of the frames still queued.
    queued_bytes: u64,
    /// Where the next frame goes.
    end: u64,
    series: usize,
}

impl Spill {
    /// Opens (creating) the spill file at `path` and lists the frames a
    /// previous run left in it; a torn tail is cut off.
    pub fn open(path: &Path) -> std::io::Result<Spill> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut spill = Spill {
            path: path.to_path_buf(),
            file,
            entries: VecDeque::new(),
            queued_bytes: 0,
            end: 0,
            series: 0,
        };
        let mut offset = 0usize;
        while let Some(entry) = parse_frame(&bytes[offset..], offset as u64) {
            offset += entry.frame_bytes as usize;
            spill.queued_bytes += entry.frame_bytes;
            spill.series += entry.series;
            spill.entries.push_back(entry);
        }
        if offset < bytes.len() {
            tracing::warn!(file = %path.display(), cut_bytes = bytes.len() - offset, "remote-write spill ends in a torn frame; cut");
            spill.file.set_len(offset as u64)?;
        }
        spill.end = offset as u64;
        Ok(spill)
    }

    /// Queued requests.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Series queued.
    pub fn series(&self) -> usize {
        self.series
    }

    /// Bytes of the frames queued.
    pub fn queued_bytes(&self) -> u64 {
        self.queued_bytes
    }

    /// Samples queued.
    pub fn samples(&self) -> u64 {
        self.entries.iter().map(|entry| entry.samples).sum()
    }

    /// Appends `batch` at the back of the queue.
    pub fn push(&mut self, batch: &Batch) -> std::io::Result<()> {
        let mut frame = Vec::with_capacity(HEADER_BYTES + batch.tenant.len() + batch.body.len());
        frame.extend_from_slice(&(batch.tenant.len() as u32).to_le_bytes());
        frame.extend_from_slice(&(batch.series as u32).to_le_bytes());
        frame.extend_from_slice(&batch.samples.to_le_bytes());
        frame.extend_from_slice(&(batch.body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&xxh3_64(&batch.body).to_le_bytes());
        frame.extend_from_slice(batch.tenant.as_bytes());
        frame.extend_from_slice(&batch.body);
        self.file.seek(SeekFrom::Start(self.end))?;
        self.file.write_all(&frame)?;
        let frame_bytes = frame.len() as u64;
        self.entries.push_back(Entry {
            body_offset: self.end + (HEADER_BYTES + batch.tenant.len()) as u64,
            body_len: batch.body.len() as u32,
            tenant: Arc::clone(&batch.tenant),
            series: batch.series,
            samples: batch.samples,
            frame_bytes,
        });
        self.end += frame_bytes;
        self.queued_bytes += frame_bytes;
        self.series += batch.series;
        Ok(())
    }

    /// The request at the front, read back from the file.
    pub fn front(&mut self) -> std::io::Result<Option<Batch>> {
        let Some(entry) = self.entries.front() else {
            return Ok(None);
        };
        let mut body = vec![0u8; entry.body_len as usize];
        self.file.seek(SeekFrom::Start(entry.body_offset))?;
        self.file.read_exact(&mut body)?;
        Ok(Some(Batch {
            tenant: Arc::clone(&entry.tenant),
            body: body.into(),
            series: entry.series,
            samples: entry.samples,
        }))
    }

    /// Removes the front request (sent, refused or dropped); returns its series and samples.
    /// Once the queue is empty the file is emptied, so it never grows past what is queued.
    pub fn pop_front(&mut self) -> std::io::Result<Option<(usize, u64)>> {
        let Some(entry) = self.entries.pop_front() else {
            return Ok(None);
        };
        self.queued_bytes -= entry.frame_bytes;
        self.series -= entry.series;
        if self.entries.is_empty() {
            self.file.set_len(0)?;
            self.end = 0;
        } else {
            // Frames before the new front are dead. Rewriting once they outweigh the
            // live ones keeps the file under twice what is queued, at amortized
            // constant cost per byte.
            let head = self.end - self.queued_bytes;
            if head > self.queued_bytes {
                self.compact()?;
            }
        }
        Ok(Some((entry.series, entry.samples)))
    }

    /// Moves the live frames to the start of the file.
    fn compact(&mut self) -> std::io::Result<()> {
        let start = self.entries.front().map_or(0, |entry| {
            entry.body_offset - (HEADER_BYTES + entry.tenant.len()) as u64
        });
        let mut live = vec![0u8; (self.end - start) as usize];
        self.file.seek(SeekFrom::Start(start))?;
        self.file.read_exact(&mut live)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(&live)?;
        self.file.set_len(live.len() as u64)?;
        for entry in &mut self.entries {
            entry.body_offset -= start;
        }
        self.end -= start;
        Ok(())
    }

    /// Makes the queue durable as it stands (at shutdown, so the next run
    /// sends exactly what is left): sent frames are cut off the front first.
    pub fn persist(&mut self) -> std::io::Result<()> {
        if self
            .entries
            .front()
            .is_some_and(|entry| entry.body_offset > (HEADER_BYTES + entry.tenant.len()) as u64)
        {
            self.compact()?;
        }
        self.file.sync_data()
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn parse_frame(bytes: &[u8], offset: u64) -> Option<Entry> {
    let header = bytes.get(..HEADER_BYTES)?;
    let tenant_len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    let series = u32::from_le_bytes(header[4..8].try_into().ok()?) as usize;
    let samples = u64::from_le_bytes(header[8..16].try_into().ok()?);
    let body_len = u32::from_le_bytes(header[16..20].try_into().ok()?) as usize;
    let checksum = u64::from_le_bytes(header[20..28].try_into().ok()?);
    let tenant = std::str::from_utf8(bytes.get(HEADER_BYTES..HEADER_BYTES + tenant_len)?).ok()?;
    let body_start = HEADER_BYTES + tenant_len;
    let body = bytes.get(body_start..body_start + body_len)?;
    if xxh3_64(body) != checksum {
        return None;
    }
    Some(Entry {
        body_offset: offset + body_start as u64,
        body_len: body_len as u32,
        tenant: Arc::from(tenant),
        series,
        samples,
        frame_bytes: (body_start + body_len) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(tenant: &str, body: &[u8], series: usize) -> Batch {
        Batch {
            tenant: Arc::from(tenant),
            body: bytes::Bytes::copy_from_slice(body),
            series,
            samples: series as u64 * 2,
        }
    }

    #[test]
    fn requests_come_back_in_order_and_survive_a_reopen_with_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prom-0.spill");
        let mut spill = Spill::open(&path).unwrap();
        for index in 0..5u8 {
            spill.push(&batch("team-a", &[index; 100], 1 + index as usize)).unwrap();
        }
        assert_eq!((spill.len(), spill.series()), (5, 15));
        let first = spill.front().unwrap().unwrap();
        assert_eq!((&*first.tenant, first.body[0], first.series), ("team-a", 0, 1));
        assert_eq!(spill.pop_front().unwrap(), Some((1, 2)));
        spill.persist().unwrap();
        drop(spill);

        // A crash mid-append leaves half a frame.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&[9; 20]).unwrap();
        drop(file);
        let mut spill = Spill::open(&path).unwrap();
        let mut bodies = Vec::new();
        while let Some(batch) = spill.front().unwrap() {
            bodies.push(batch.body[0]);
            spill.pop_front().unwrap();
        }
        assert_eq!(
            bodies,
            vec![1, 2, 3, 4],
            "what was sent before the persist is not sent again"
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            0,
            "an empty queue empties the file"
        );
        spill.push(&batch("t", b"next", 1)).unwrap();
        assert_eq!(&spill.front().unwrap().unwrap().body[..], b"next");
    }
}

#[cfg(test)]
mod shard_tests {
    use std::sync::Arc;

    use crate::aggregate::Aggregation;
    use crate::engine::{AggregateRecord, RecordValue, Statistic};
    use crate::model::{Kind, Labels};
    use crate::sink::remote_write::{RemoteWriteSettings, RemoteWriteShard};
    use crate::sink::SinkWriter;
    use crate::telemetry::Telemetry;

    fn record(end_ms: i64) -> AggregateRecord {
        AggregateRecord {
            tenant: Arc::from("t"),
            series: Arc::new(Labels::from_pairs([("__name__", "spilled")])),
            kind: Kind::Counter,
            policy: "1s:1h".parse().unwrap(),
            window_start_ms: end_ms - 1_000,
            window_end_ms: end_ms,
            aggregation: Aggregation::Sum,
            statistic: Statistic::Sum,
            value: RecordValue::Scalar(1.0),
            exemplar: None,
            tightness: None,
            ranked: Vec::new(),
            partial: false,
            starts_series: false,
        }
    }

    #[test]
    fn a_full_memory_buffer_spills_a_full_spill_drops_the_oldest_counted_and_shutdown_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        // Port 1 on loopback: nobody listens, every send is a retryable connection error.
        let settings = RemoteWriteSettings {
            name: "down".to_string(),
            url: "http://127.0.0.1:1/api/v1/write".to_string(),
            storage_policies: vec!["1s:1h".parse().unwrap()],
            policy_label: None,
            native_histograms: false,
            tenant_header: None,
            max_series_per_request: 1,
            shards: 1,
            timeout_ms: 1_000,
            min_backoff_ms: 60_000,
            max_backoff_ms: 60_000,
            max_buffered_series: 2,
            idle_series_ms: 3_600_000,
            spill_dir: Some(dir.path().to_path_buf()),
            max_spill_bytes: 10_000,
            shutdown_drain_ms: 0,
        };
        let telemetry = Arc::new(Telemetry::default());
        let mut shard = RemoteWriteShard::new(settings.clone(), 0, Arc::clone(&telemetry));
        for second in 1..=200 {
            shard.write(&[record(second * 1_000)], second * 1_000).unwrap();
        }
        let spill_bytes = std::fs::metadata(dir.path().join("down-0.spill")).unwrap().len();
        assert!(spill_bytes > 0 && spill_bytes <= 2 * 10_000, "{spill_bytes}");
        let sinks = telemetry.snapshot().sinks;
        let dropped = sinks.dropped[&("down".to_string(), "buffer_full".to_string())];
        let backlog = sinks.backlog[&("down".to_string(), 0)];
        assert!(dropped > 0, "{sinks:?}");
        assert_eq!(dropped + backlog, 200, "every sample is queued or counted: {sinks:?}");

        // Shutdown with the downstream still down: memory goes to the spill (within its bound).
        shard.close(201_000);
        let sinks = telemetry.snapshot().sinks;
        assert_eq!(sinks.dropped.len(), 1, "only buffer_full, never shutdown: {sinks:?}");
        let dropped_at_close = sinks.dropped[&("down".to_string(), "buffer_full".to_string())] - dropped;
        let reopened = super::Spill::open(&dir.path().join("down-0.spill")).unwrap();
        assert_eq!(
            reopened.samples() + dropped_at_close,
            backlog,
            "the next run finds the backlog, less what the bound counted as dropped"
        );
        assert!(reopened.queued_bytes() <= 10_000 + 200, "{}", reopened.queued_bytes());
    }
}
