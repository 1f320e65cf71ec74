//! gRPC `Write` requests built as bytes: each series' labels and kind are encoded
//! to protobuf once when the run starts, and a request is those bytes plus freshly
//! encoded points, sent through a codec that hands them to tonic as they are
//! (no label strings cloned or re-encoded per request).

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder, HEADER_SIZE};
use tonic::Status;
use tonic_prost::ProstDecoder;

use super::traffic::{Generator, RawPoint, POINTS_PER_SERIES};
use crate::api::v1;

/// `WriteRequest.series`.
const REQUEST_SERIES: u32 = 1;
/// `Series.points`.
const SERIES_POINTS: u32 = 3;
/// `Point.value`, `Point.timestamp_ms`, `Point.trace_id`, `Point.span_id`.
const POINT_VALUE: u32 = 1;
const POINT_TIMESTAMP: u32 = 2;
const POINT_TRACE: u32 = 3;
const POINT_SPAN: u32 = 4;

/// One series' labels and kind, encoded as `Series` fields 1 and 2.
pub(super) struct EncodedIdentity {
    bytes: Bytes,
    kind: v1::Kind,
}

impl EncodedIdentity {
    /// Encodes `labels` and `kind` once (prost writes them as it would in a whole `Series`).
    pub(super) fn new(labels: &[v1::Label], kind: v1::Kind) -> Self {
        let fields = v1::Series {
            labels: labels.to_vec(),
            kind: kind as i32,
            points: Vec::new(),
        };
        EncodedIdentity {
            bytes: prost::Message::encode_to_vec(&fields).into(),
            kind,
        }
    }
}

impl RawPoint {
    /// Length of this point encoded as a `Point` stamped `now_ms`, as prost sizes it.
    fn encoded_len(&self, now_ms: i64) -> usize {
        // Key bytes are 1 for every field number below 16.
        let mut len = 1 + encoded_len_varint(now_ms as u64);
        // proto3 leaves a zero double out (prost compares with `!=`, so -0.0 too).
        if self.value != 0.0 {
            len += 1 + 8;
        }
        if self.ids.is_some() {
            len += (1 + 1 + 16) + (1 + 1 + 8);
        }
        len
    }

    /// Writes this point as a `Point` message body, fields in number order as prost does.
    fn encode(&self, now_ms: i64, buf: &mut impl BufMut) {
        if self.value != 0.0 {
            encode_key(POINT_VALUE, WireType::SixtyFourBit, buf);
            buf.put_f64_le(self.value);
        }
        encode_key(POINT_TIMESTAMP, WireType::Varint, buf);
        encode_varint(now_ms as u64, buf);
        if let Some((trace, span)) = &self.ids {
            encode_key(POINT_TRACE, WireType::LengthDelimited, buf);
            encode_varint(trace.len() as u64, buf);
            buf.put_slice(trace);
            encode_key(POINT_SPAN, WireType::LengthDelimited, buf);
            encode_varint(span.len() as u64, buf);
            buf.put_slice(span);
        }
    }
}

/// Most bytes one point takes as a `points` field: key, length (one byte, as a
/// point is under 128 bytes), value, timestamp (a varint of up to 10 bytes),
/// trace ID and span ID with their keys and lengths.
const MAX_POINT_FIELD: usize = 1 + 1 + 9 + 11 + 18 + 10;

/// Builds one worker's requests into a buffer it reuses once tonic has let go of
/// the previous request.
pub(super) struct RequestWriter {
    buf: BytesMut,
    /// Size of the largest request so far: reserved up front so a request never regrows.
    largest: usize,
}

impl RequestWriter {
    pub(super) fn new() -> Self {
        RequestWriter {
            buf: BytesMut::new(),
            largest: 0,
        }
    }

    /// The encoded `WriteRequest` of the next `batch` points: series taken in turn
    /// from `identities` from `next_series` on, `POINTS_PER_SERIES` points each,
    /// drawn in the same order as `traffic::build_request` draws them.
    pub(super) fn build(
        &mut self,
        generator: &mut Generator,
        identities: &[EncodedIdentity],
        next_series: &mut usize,
        batch: usize,
        now_ms: i64,
    ) -> Bytes {
        self.buf.reserve(self.largest);
        let mut left = batch;
        while left > 0 {
            let identity = &identities[*next_series % identities.len()];
            *next_series += 1;
            let count = left.min(POINTS_PER_SERIES);
            left -= count;
            // A series' points are encoded on the stack first (their total length
            // prefixes the series) and then copied in once: many small writes to a
            // `BytesMut` each check its capacity, writes to a slice compile to moves.
            let mut scratch = [0u8; POINTS_PER_SERIES * MAX_POINT_FIELD];
            let mut out: &mut [u8] = &mut scratch;
            for _ in 0..count {
                let point = generator.point(identity.kind);
                encode_key(SERIES_POINTS, WireType::LengthDelimited, &mut out);
                encode_varint(point.encoded_len(now_ms) as u64, &mut out);
                point.encode(now_ms, &mut out);
            }
            let unused = out.len();
            let points_len = scratch.len() - unused;
            let series_len = identity.bytes.len() + points_len;
            self.buf.reserve(1 + encoded_len_varint(series_len as u64) + series_len);
            encode_key(REQUEST_SERIES, WireType::LengthDelimited, &mut self.buf);
            encode_varint(series_len as u64, &mut self.buf);
            self.buf.put_slice(&identity.bytes);
            self.buf.put_slice(&scratch[..points_len]);
        }
        self.largest = self.largest.max(self.buf.len());
        self.buf.split().freeze()
    }
}

/// Sends a pre-built `WriteRequest` as it is and decodes the `WriteResponse` with prost.
#[derive(Clone, Copy, Debug)]
pub(super) struct PrebuiltCodec {
    /// Bytes of the request: tonic's frame buffer is allocated at this size once.
    request_len: usize,
}

impl PrebuiltCodec {
    pub(super) fn new(request: &Bytes) -> Self {
        PrebuiltCodec {
            request_len: request.len(),
        }
    }
}

impl Codec for PrebuiltCodec {
    type Encode = Bytes;
    type Decode = v1::WriteResponse;
    type Encoder = PrebuiltEncoder;
    type Decoder = ProstDecoder<v1::WriteResponse>;

    fn encoder(&mut self) -> Self::Encoder {
        // The exact frame size, so tonic allocates it once; the yield threshold is
        // tonic's default (it only matters to streams).
        PrebuiltEncoder {
            buffer_settings: BufferSettings::new(HEADER_SIZE + self.request_len, 32 * 1024),
        }
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::default()
    }
}

/// Copies the pre-built message into tonic's frame as it is.
#[derive(Debug)]
pub(super) struct PrebuiltEncoder {
    buffer_settings: BufferSettings,
}

impl Encoder for PrebuiltEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.buffer_settings
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::loadgen::traffic::{build_request, series_identity};

    /// Builds `requests` successive requests of `batch` points both ways (twin
    /// generators, same seed) and checks the hand-built bytes are prost's own
    /// encoding of the message the prost builder makes, and decode back to it.
    fn assert_wire_matches_prost(series: usize, mix: (u32, u32, u32), batch: usize, requests: usize) {
        let identities: Vec<_> = (0..series).map(|i| series_identity(i, mix)).collect();
        let encoded: Vec<_> = identities
            .iter()
            .map(|(labels, kind)| EncodedIdentity::new(labels, *kind))
            .collect();
        let (mut by_prost, mut by_wire) = (Generator::new(42), Generator::new(42));
        let (mut next_prost, mut next_wire) = (3, 3);
        let mut writer = RequestWriter::new();
        for round in 0..requests {
            let now_ms = 1_700_000_000_000 + round as i64;
            let expected = build_request(&mut by_prost, &identities, &mut next_prost, batch, now_ms);
            let bytes = writer.build(&mut by_wire, &encoded, &mut next_wire, batch, now_ms);
            let decoded = v1::WriteRequest::decode(bytes.clone()).expect("hand-built request decodes");
            assert_eq!(decoded, expected, "round {round}, batch {batch}");
            assert_eq!(
                bytes.as_ref(),
                expected.encode_to_vec().as_slice(),
                "round {round}, batch {batch}"
            );
            assert_eq!(next_wire, next_prost);
        }
    }

    #[test]
    fn hand_built_requests_are_the_prost_builders_requests_byte_for_byte() {
        // All three kinds, series wrapping around, batches that end mid-series.
        assert_wire_matches_prost(20, (8, 1, 1), 1000, 5);
        assert_wire_matches_prost(7, (1, 1, 1), 23, 9);
        assert_wire_matches_prost(1, (1, 0, 0), 1, 3);
        assert_wire_matches_prost(3, (0, 0, 1), 10, 2);
    }

    #[test]
    fn points_with_edge_values_encode_as_prost_does() {
        let ids = Some(([0xffu8; 16], [0x80u8; 8]));
        for value in [0.0, -0.0, 1.0, -3.5, f64::MIN_POSITIVE, f64::INFINITY] {
            for now_ms in [0, 1, 127, 128, -1, i64::MIN, i64::MAX, 1_700_000_000_000] {
                for ids in [None, ids] {
                    let point = RawPoint { value, ids };
                    let expected = v1::Point {
                        value,
                        timestamp_ms: Some(now_ms),
                        trace_id: ids.map(|(t, _)| Bytes::copy_from_slice(&t)).unwrap_or_default(),
                        span_id: ids.map(|(_, s)| Bytes::copy_from_slice(&s)).unwrap_or_default(),
                    };
                    let mut buf = BytesMut::new();
                    point.encode(now_ms, &mut buf);
                    assert_eq!(buf.as_ref(), expected.encode_to_vec().as_slice(), "{value} at {now_ms}");
                    assert_eq!(point.encoded_len(now_ms), expected.encoded_len(), "{value} at {now_ms}");
                    // The stack scratch of `RequestWriter::build` holds the worst case.
                    assert!(expected.encoded_len() < 128);
                    assert!(2 + expected.encoded_len() <= MAX_POINT_FIELD);
                }
            }
        }
    }

    #[test]
    fn encoded_identity_is_the_series_without_points() {
        let (labels, kind) = series_identity(5, (8, 1, 1));
        let identity = EncodedIdentity::new(&labels, kind);
        let decoded = v1::Series::decode(identity.bytes.clone()).expect("identity decodes as a series");
        assert_eq!(decoded.labels, labels);
        assert_eq!(decoded.kind, kind as i32);
        assert!(decoded.points.is_empty());
    }

    #[test]
    fn the_writer_reuses_its_buffer_once_the_last_request_is_dropped() {
        let identities: Vec<_> = (0..10)
            .map(|i| {
                let (labels, kind) = series_identity(i, (8, 1, 1));
                EncodedIdentity::new(&labels, kind)
            })
            .collect();
        let mut generator = Generator::new(1);
        let mut next = 0;
        let mut writer = RequestWriter::new();
        let first = writer.build(&mut generator, &identities, &mut next, 1000, 5);
        let first_at = first.as_ptr();
        drop(first);
        let second = writer.build(&mut generator, &identities, &mut next, 1000, 5);
        assert_eq!(second.as_ptr(), first_at);
        // Still held (as while tonic sends it): the next request gets its own memory.
        let third = writer.build(&mut generator, &identities, &mut next, 1000, 5);
        assert_ne!(third.as_ptr(), second.as_ptr());
        assert_ne!(second, third);
    }
}
