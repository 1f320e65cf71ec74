//! The byte form of one logged batch: the arrival time and the validated
//! `IngestBatch`, little-endian, framed as `len u32 | xxh3 u64 | payload` so a
//! torn or corrupt tail is detected on replay. A cluster instance also logs
//! the rollup shares other instances hand it, in frames of their own.

use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64;

use crate::engine::PartialWindow;
use crate::model::{IngestBatch, Kind, Labels, NativeHistogram, Point, SeriesBatch, TraceContext};

/// What a share frame's payload starts with where a batch frame has its
/// arrival time (which is never `i64::MIN`).
const SHARES_MARK: i64 = i64::MIN;
/// The same for a forwarded batch's frame (its id and sender first).
const FORWARD_MARK: i64 = i64::MIN + 1;

/// Bytes of a frame header: payload length and checksum.
pub const HEADER_BYTES: usize = 12;

/// Appends the frame of `batch`, ingested at `now_ms`, to `out`. Returns the
/// latest event time in it (points without a timestamp count at `now_ms`;
/// `i64::MIN` for a batch without points).
pub fn encode(batch: &IngestBatch, now_ms: i64, out: &mut Vec<u8>) -> i64 {
    encode_series(&batch.tenant, batch.series.iter(), now_ms, out)
}

/// The same for some series of a batch of `tenant` (what one cluster
/// instance forwards to another).
pub fn encode_series<'a>(
    tenant: &str,
    series: impl ExactSizeIterator<Item = &'a SeriesBatch>,
    now_ms: i64,
    out: &mut Vec<u8>,
) -> i64 {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_BYTES]);
    let latest = put_batch(tenant, series, now_ms, out);
    seal_frame(out, start);
    latest
}

/// The frame of a batch another instance forwarded, under the id its sender
/// gave it (kept across the sender's retries), so that a retry of a batch
/// logged before a crash is recognised after the replay.
pub fn encode_forwarded(from: &str, id: u64, batch: &IngestBatch, now_ms: i64, out: &mut Vec<u8>) -> i64 {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_BYTES]);
    put_i64(out, FORWARD_MARK);
    out.extend_from_slice(&id.to_le_bytes());
    put_str(out, from);
    let latest = put_batch(&batch.tenant, batch.series.iter(), now_ms, out);
    seal_frame(out, start);
    latest
}

fn put_batch<'a>(
    tenant: &str,
    series: impl ExactSizeIterator<Item = &'a SeriesBatch>,
    now_ms: i64,
    out: &mut Vec<u8>,
) -> i64 {
    let mut latest = i64::MIN;
    put_i64(out, now_ms);
    put_str(out, tenant);
    put_u32(out, series.len() as u32);
    for series in series {
        put_u32(out, series.labels.len() as u32);
        for label in series.labels.iter() {
            put_str(out, label.name);
            put_str(out, label.value);
        }
        out.push(match series.kind {
            Kind::Counter => 0,
            Kind::Gauge => 1,
            Kind::Distribution => 2,
            Kind::Set => 3,
        });
        out.push(u8::from(series.cumulative));
        put_u32(out, series.points.len() as u32);
        for point in &series.points {
            out.extend_from_slice(&point.value.to_le_bytes());
            put_opt_i64(out, point.timestamp_ms);
            put_trace(out, point.trace);
            put_u32(out, point.weight);
            latest = latest.max(point.timestamp_ms.unwrap_or(now_ms));
        }
        put_u32(out, series.histograms.len() as u32);
        for histogram in &series.histograms {
            put_opt_i64(out, histogram.timestamp_ms);
            out.push(histogram.scale as u8);
            out.extend_from_slice(&histogram.zero_threshold.to_le_bytes());
            out.extend_from_slice(&histogram.zero_count.to_le_bytes());
            out.extend_from_slice(&histogram.count.to_le_bytes());
            out.extend_from_slice(&histogram.sum.to_le_bytes());
            for buckets in [&histogram.positive, &histogram.negative] {
                put_u32(out, buckets.len() as u32);
                for (index, count) in buckets {
                    out.extend_from_slice(&index.to_le_bytes());
                    out.extend_from_slice(&count.to_le_bytes());
                }
            }
            put_u32(out, histogram.exemplars.len() as u32);
            for (value, timestamp_ms, trace) in &histogram.exemplars {
                out.extend_from_slice(&value.to_le_bytes());
                put_i64(out, *timestamp_ms);
                put_trace(out, Some(*trace));
            }
            latest = latest.max(histogram.timestamp_ms.unwrap_or(now_ms));
        }
    }
    latest
}

/// One frame read back: the batch, its arrival time and the bytes it took.
pub struct Decoded {
    /// The batch.
    pub batch: IngestBatch,
    /// Arrival time it was ingested at.
    pub now_ms: i64,
    /// Latest event time in it.
    pub latest_ms: i64,
    /// Frame length, header included.
    pub frame_bytes: usize,
}

/// Why a frame cannot be read: the end of the good part of a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Torn {
    /// Fewer bytes than the frame needs (a write cut short by a crash).
    Truncated,
    /// The checksum does not match, or the payload does not parse.
    Corrupt,
}

/// Appends a frame of the rollup `shares` an instance of shard set `source`
/// handed over; `latest_ms` stands for its event time in segment bookkeeping
/// (when the last of their rollup windows may flush).
pub fn encode_shares(source: u32, shares: &[PartialWindow], latest_ms: i64, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_BYTES]);
    put_i64(out, SHARES_MARK);
    put_u32(out, source);
    put_i64(out, latest_ms);
    let shares = postcard::to_allocvec(shares).expect("shares serialise");
    out.extend_from_slice(&shares);
    seal_frame(out, start);
}

/// One frame of a segment read back.
pub enum Frame {
    /// A logged batch.
    Batch(Decoded),
    /// A batch another instance forwarded, with its sender and id.
    Forwarded {
        /// The sending instance.
        from: String,
        /// The id the sender gave the batch.
        id: u64,
        /// The batch.
        decoded: Decoded,
    },
    /// Logged rollup shares.
    Shares {
        /// The shard set that sent them.
        source: u32,
        /// The shares.
        shares: Vec<PartialWindow>,
        /// Their bookkeeping time (see [`encode_shares`]).
        latest_ms: i64,
        /// Frame length, header included.
        frame_bytes: usize,
    },
}

impl Frame {
    /// Frame length, header included.
    pub fn frame_bytes(&self) -> usize {
        match self {
            Frame::Batch(decoded) | Frame::Forwarded { decoded, .. } => decoded.frame_bytes,
            Frame::Shares { frame_bytes, .. } => *frame_bytes,
        }
    }
}

/// Reads the frame at the start of `bytes`, of either kind.
pub fn decode_frame(bytes: &[u8]) -> Result<Frame, Torn> {
    let payload = checked_payload(bytes)?;
    if payload.len() >= 20 && payload[..8] == SHARES_MARK.to_le_bytes() {
        let source = u32::from_le_bytes(payload[8..12].try_into().expect("4 bytes"));
        let latest_ms = i64::from_le_bytes(payload[12..20].try_into().expect("8 bytes"));
        let shares = postcard::from_bytes(&payload[20..]).map_err(|_| Torn::Corrupt)?;
        return Ok(Frame::Shares {
            source,
            shares,
            latest_ms,
            frame_bytes: HEADER_BYTES + payload.len(),
        });
    }
    if payload.len() >= 8 && payload[..8] == FORWARD_MARK.to_le_bytes() {
        let mut reader = Reader { bytes: &payload[8..] };
        let id = reader.u64().ok_or(Torn::Corrupt)?;
        let from = reader.str().ok_or(Torn::Corrupt)?.to_string();
        let (batch, now_ms, latest_ms) = reader.batch().ok_or(Torn::Corrupt)?;
        if !reader.bytes.is_empty() {
            return Err(Torn::Corrupt);
        }
        let decoded = Decoded {
            batch,
            now_ms,
            latest_ms,
            frame_bytes: HEADER_BYTES + payload.len(),
        };
        return Ok(Frame::Forwarded { from, id, decoded });
    }
    decode(bytes).map(Frame::Batch)
}

/// The payload of the frame at the start of `bytes`, its checksum checked.
fn checked_payload(bytes: &[u8]) -> Result<&[u8], Torn> {
    if bytes.len() < HEADER_BYTES {
        return Err(Torn::Truncated);
    }
    let payload_len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
    let checksum = u64::from_le_bytes(bytes[4..HEADER_BYTES].try_into().expect("8 bytes"));
    let Some(payload) = bytes.get(HEADER_BYTES..HEADER_BYTES + payload_len) else {
        return Err(Torn::Truncated);
    };
    if xxh3_64(payload) != checksum {
        return Err(Torn::Corrupt);
    }
    Ok(payload)
}

/// Fills in the header of the frame that starts at `start` of `out`.
fn seal_frame(out: &mut [u8], start: usize) {
    let payload_len = (out.len() - start - HEADER_BYTES) as u32;
    let checksum = xxh3_64(&out[start + HEADER_BYTES..]);
    out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    out[start + 4..start + HEADER_BYTES].copy_from_slice(&checksum.to_le_bytes());
}

/// Reads the batch frame at the start of `bytes`.
pub fn decode(bytes: &[u8]) -> Result<Decoded, Torn> {
    let payload = checked_payload(bytes)?;
    let mut reader = Reader { bytes: payload };
    let (batch, now_ms, latest_ms) = reader.batch().ok_or(Torn::Corrupt)?;
    if !reader.bytes.is_empty() {
        return Err(Torn::Corrupt);
    }
    Ok(Decoded {
        batch,
        now_ms,
        latest_ms,
        frame_bytes: HEADER_BYTES + payload.len(),
    })
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_i64(out: &mut Vec<u8>, value: i64) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    put_u32(out, text.len() as u32);
    out.extend_from_slice(text.as_bytes());
}

fn put_opt_i64(out: &mut Vec<u8>, value: Option<i64>) {
    match value {
        Some(value) => {
            out.push(1);
            put_i64(out, value);
        }
        None => out.push(0),
    }
}

fn put_trace(out: &mut Vec<u8>, trace: Option<TraceContext>) {
    match trace {
        Some(trace) => {
            out.push(1);
            out.extend_from_slice(&trace.trace_id);
            out.extend_from_slice(&trace.span_id);
        }
        None => out.push(0),
    }
}

/// A cursor over a payload; every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < count {
            return None;
        }
        let (head, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.array()?))
    }

    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.array()?))
    }

    fn f64(&mut self) -> Option<f64> {
        Some(f64::from_le_bytes(self.array()?))
    }

    /// A count of items each at least `min_bytes` long; refuses counts the
    /// payload cannot hold, so a corrupt count never allocates wildly.
    fn count(&mut self, min_bytes: usize) -> Option<usize> {
        let count = self.u32()? as usize;
        (count.saturating_mul(min_bytes) <= self.bytes.len()).then_some(count)
    }

    fn str(&mut self) -> Option<&'a str> {
        let len = self.u32()? as usize;
        std::str::from_utf8(self.take(len)?).ok()
    }

    fn opt_i64(&mut self) -> Option<Option<i64>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.i64()?)),
            _ => None,
        }
    }

    fn trace(&mut self) -> Option<Option<TraceContext>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(TraceContext {
                trace_id: self.array()?,
                span_id: self.array()?,
            })),
            _ => None,
        }
    }

    fn batch(&mut self) -> Option<(IngestBatch, i64, i64)> {
        let now_ms = self.i64()?;
        let mut latest = i64::MIN;
        let tenant: Arc<str> = Arc::from(self.str()?);
        let series_count = self.count(14)?;
        let mut series = Vec::with_capacity(series_count);
        for _ in 0..series_count {
            let label_count = self.count(8)?;
            let mut pairs = Vec::with_capacity(label_count);
            for _ in 0..label_count {
                pairs.push((self.str()?, self.str()?));
            }
            let kind = match self.u8()? {
                0 => Kind::Counter,
                1 => Kind::Gauge,
                2 => Kind::Distribution,
                3 => Kind::Set,
                _ => return None,
            };
            let cumulative = self.u8()? == 1;
            let point_count = self.count(14)?;
            let mut points = Vec::with_capacity(point_count);
            for _ in 0..point_count {
                let value = self.f64()?;
                let timestamp_ms = self.opt_i64()?;
                let trace = self.trace()?;
                let weight = self.u32()?;
                latest = latest.max(timestamp_ms.unwrap_or(now_ms));
                points.push(Point {
                    value,
                    timestamp_ms,
                    trace,
                    weight,
                });
            }
            let histogram_count = self.count(46)?;
            let mut histograms = Vec::with_capacity(histogram_count);
            for _ in 0..histogram_count {
                let timestamp_ms = self.opt_i64()?;
                let scale = self.u8()? as i8;
                let zero_threshold = self.f64()?;
                let zero_count = self.u64()?;
                let count = self.u64()?;
                let sum = self.f64()?;
                let mut sides = [Vec::new(), Vec::new()];
                for side in &mut sides {
                    let buckets = self.count(12)?;
                    side.reserve(buckets);
                    for _ in 0..buckets {
                        side.push((i32::from_le_bytes(self.array()?), self.u64()?));
                    }
                }
                let exemplar_count = self.count(17)?;
                let mut exemplars = Vec::with_capacity(exemplar_count);
                for _ in 0..exemplar_count {
                    let value = self.f64()?;
                    let timestamp_ms = self.i64()?;
                    exemplars.push((value, timestamp_ms, self.trace()??));
                }
                let [positive, negative] = sides;
                latest = latest.max(timestamp_ms.unwrap_or(now_ms));
                histograms.push(NativeHistogram {
                    timestamp_ms,
                    scale,
                    zero_threshold,
                    zero_count,
                    count,
                    sum,
                    positive,
                    negative,
                    exemplars,
                });
            }
            series.push(SeriesBatch {
                labels: Labels::from_pairs(pairs),
                kind,
                cumulative,
                points,
                histograms,
            });
        }
        Some((IngestBatch { tenant, series }, now_ms, latest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_batch() -> IngestBatch {
        let trace = TraceContext {
            trace_id: [7; 16],
            span_id: [3; 8],
        };
        IngestBatch {
            tenant: Arc::from("team-a"),
            series: vec![
                SeriesBatch {
                    labels: Labels::from_pairs([("__name__", "latency"), ("pod", "p-1")]),
                    kind: Kind::Distribution,
                    cumulative: true,
                    points: vec![Point::new(0.25, Some(5_000), Some(trace)), Point::new(1.5, None, None)],
                    histograms: vec![NativeHistogram {
                        timestamp_ms: Some(9_000),
                        scale: -2,
                        zero_threshold: 1e-9,
                        zero_count: 2,
                        count: 7,
                        sum: 12.5,
                        positive: vec![(-3, 1), (4, 2)],
                        negative: vec![(1, 2)],
                        exemplars: vec![(0.5, 8_000, trace)],
                    }],
                },
                SeriesBatch::new(
                    Labels::from_pairs([("__name__", "requests")]),
                    Kind::Counter,
                    vec![Point {
                        weight: 10,
                        ..Point::new(3.0, Some(1_000), None)
                    }],
                ),
                // A set member is a 52-bit hash carried in the value: it must come back bit for bit.
                SeriesBatch::new(
                    Labels::from_pairs([("__name__", "users")]),
                    Kind::Set,
                    vec![Point::new(4_503_599_627_370_495.0, Some(2_000), None)],
                ),
            ],
        }
    }

    #[test]
    fn a_batch_round_trips_with_its_arrival_time_and_latest_event_time() {
        let batch = sample_batch();
        let mut bytes = Vec::new();
        let latest = encode(&batch, 6_000, &mut bytes);
        assert_eq!(latest, 9_000);
        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded.batch, batch);
        assert_eq!((decoded.now_ms, decoded.latest_ms), (6_000, 9_000));
        assert_eq!(decoded.frame_bytes, bytes.len());
    }

    #[test]
    fn torn_and_corrupt_frames_are_told_apart_and_never_panic() {
        let mut bytes = Vec::new();
        encode(&sample_batch(), 6_000, &mut bytes);
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]).err(), Some(Torn::Truncated), "cut at {cut}");
        }
        for flip in HEADER_BYTES..bytes.len() {
            let mut broken = bytes.clone();
            broken[flip] ^= 0x40;
            assert_eq!(decode(&broken).err(), Some(Torn::Corrupt), "flip at {flip}");
        }
        // A frame whose checksum matches a payload that does not parse.
        let mut forged = vec![0u8; HEADER_BYTES];
        let payload = [0xffu8; 20];
        forged[0..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        forged[4..12].copy_from_slice(&xxh3_64(&payload).to_le_bytes());
        forged.extend_from_slice(&payload);
        assert_eq!(decode(&forged).err(), Some(Torn::Corrupt));
    }
}
