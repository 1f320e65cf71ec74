//! statsd / DogStatsD ingest over UDP: readers take many datagrams per system
//! call, parse their lines into one `IngestBatch` (one `SeriesBatch` per series
//! and kind) and hand it to the engine. A bad line is refused alone, counted and (rate-limited) logged.

mod held;
mod listen;
mod parse;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::HashTable;
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use xxhash_rust::xxh3::{xxh3_128_with_seed, xxh3_64};

use crate::config::{IngestLimits, StatsdSettings};
use crate::ingest::validate::cut;
use crate::model::{IngestBatch, Kind, Labels, Point, SeriesBatch};
use parse::ByteRanges;

pub use held::{repeat_held_gauges, HeldGauges, HELD_PROTOCOL};
pub use listen::{bind_statsd, serve_statsd, StatsdSockets};
pub use parse::{
    parse_line, sanitize_name, set_member, stochastic_weight, NameCollisions, StatsdError, StatsdLine,
    MAX_CHECKED_NAMES,
};

/// Malformed lines are logged at most this often; the rest are only counted.
const WARN_EVERY: Duration = Duration::from_secs(1);

/// Series whose labels a decoder keeps between batches, so a steady stream
/// builds no labels; past it the idle ones are forgotten at the next batch.
pub const MAX_KEPT_SERIES: usize = 100_000;

/// What some datagrams held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatagramTally {
    /// Points of good lines (a multi-value line has several).
    pub points: u64,
    /// Lines refused (each counted as one point, since its values are unknown).
    pub malformed_lines: u64,
    /// Metric names first seen to sanitise like another one (see [`NameCollisions`]).
    pub name_collisions: u64,
}

impl DatagramTally {
    fn add(&mut self, other: DatagramTally) {
        self.points += other.points;
        self.malformed_lines += other.malformed_lines;
        self.name_collisions += other.name_collisions;
    }
}

/// What every reader of one listener shares: a relative gauge change from any
/// sender applies to the one held value, and a name collision is reported once.
#[derive(Debug)]
pub struct StatsdState {
    /// Shared with the task that repeats them ([`repeat_held_gauges`]).
    gauges: Arc<Mutex<HeldGauges>>,
    names: Mutex<NameCollisions>,
    max_gauges: usize,
}

impl StatsdState {
    /// Empty state under `settings`' gauge limits.
    pub fn new(settings: &StatsdSettings) -> Self {
        StatsdState {
            gauges: Arc::new(Mutex::new(HeldGauges::new(settings.max_gauges, settings.gauge_idle_ms))),
            names: Mutex::new(NameCollisions::default()),
            max_gauges: settings.max_gauges,
        }
    }
}

/// What the per-line lookup reads of a series a decoder has seen: its key
/// and where it sits in the batch being built (`IDLE` when it has no points
/// there). 24 bytes, dense, apart from the labels, so a reader's thousands of
/// series stay in cache (perf showed the 64-byte entries missing it).
struct KeptEntry {
    /// The series key in two halves (a `u128` would pad the entry to 32 bytes).
    key: [u64; 2],
    index: u32,
}

/// A kept series' labels, built once, and point buffer while it is idle;
/// both are moved into the batch while the series is in it.
#[derive(Default)]
struct KeptParts {
    labels: Labels,
    points: Vec<Point>,
}

const IDLE: u32 = u32::MAX;

fn key_halves(key: u128) -> [u64; 2] {
    [key as u64, (key >> 64) as u64]
}

/// Turns datagrams into an [`IngestBatch`], reusing its buffers and each
/// series' labels across batches: a steady stream allocates nothing.
pub struct DatagramDecoder {
    /// The batch built since the last [`DatagramDecoder::clear`].
    pub batch: IngestBatch,
    limits: IngestLimits,
    max_packet_bytes: usize,
    /// Series seen, by hash of (raw name, raw tags, kind): the slot of each
    /// in `entries` and `parts`; the hash is the table's hash.
    kept: HashTable<u32>,
    entries: Vec<KeptEntry>,
    parts: Vec<KeptParts>,
    /// The slot of each entry of `batch.series`, to give its labels back.
    active: Vec<u32>,
    values: Vec<f64>,
    rng: SmallRng,
    warnings: WarnLimiter,
    state: Arc<StatsdState>,
}

impl DatagramDecoder {
    /// A decoder for `settings`' tenant and limits, with state of its own.
    pub fn new(settings: &StatsdSettings) -> Self {
        Self::sharing(settings, Arc::new(StatsdState::new(settings)))
    }

    /// A decoder sharing held gauges and reported names with the other readers.
    pub fn sharing(settings: &StatsdSettings, state: Arc<StatsdState>) -> Self {
        DatagramDecoder {
            batch: IngestBatch {
                tenant: Arc::from(settings.tenant.as_str()),
                series: Vec::new(),
            },
            limits: settings.limits.clone(),
            max_packet_bytes: settings.max_packet_bytes,
            kept: HashTable::new(),
            entries: Vec::new(),
            parts: Vec::new(),
            active: Vec::new(),
            values: Vec::new(),
            rng: SmallRng::from_rng(&mut rand::rng()),
            warnings: WarnLimiter::default(),
            state,
        }
    }

    /// Replaces `self.batch` with the good lines of `datagram`.
    pub fn decode(&mut self, datagram: &[u8]) -> DatagramTally {
        self.clear();
        self.add(datagram)
    }

    /// Empties `self.batch`, keeping every buffer and each series' labels for the next one.
    pub fn clear(&mut self) {
        for (series, slot) in self.batch.series.drain(..).zip(self.active.drain(..)) {
            let SeriesBatch { labels, mut points, .. } = series;
            points.clear();
            self.entries[slot as usize].index = IDLE;
            self.parts[slot as usize] = KeptParts { labels, points };
        }
        if self.kept.len() > MAX_KEPT_SERIES {
            // Bounded memory under a flood of series; a steady set is rebuilt once.
            self.kept.clear();
            self.entries.clear();
            self.parts.clear();
        }
    }

    /// Adds the good lines of `datagram` to `self.batch`; blank lines are skipped.
    pub fn add(&mut self, datagram: &[u8]) -> DatagramTally {
        let mut tally = DatagramTally::default();
        let mut body = datagram;
        if datagram.len() > self.max_packet_bytes {
            // The kernel dropped the rest: the last line is cut short, refuse it.
            body = &datagram[..self.max_packet_bytes];
            let kept = body.iter().rposition(|b| *b == b'\n').unwrap_or(0);
            let lost = String::from_utf8_lossy(&body[kept..]);
            self.warnings.warn(format_args!(
                "datagram longer than statsd.max_packet_bytes ({}); refused its cut line {:?}",
                self.max_packet_bytes,
                cut(lost.trim())
            ));
            tally.malformed_lines += 1;
            body = &body[..kept];
        }
        // UTF-8 checked once for the whole datagram; line by line only when it fails.
        if let Ok(text) = std::str::from_utf8(body) {
            for range in ByteRanges::new(body, b'\n') {
                // `\n` is ASCII, so every range falls on char boundaries.
                let raw = text[range].trim_ascii();
                if !raw.is_empty() {
                    let decoded = self.decode_text(raw, &mut tally.name_collisions);
                    self.count(decoded, &mut tally);
                }
            }
        } else {
            for range in ByteRanges::new(body, b'\n') {
                let raw = body[range].trim_ascii();
                if !raw.is_empty() {
                    let decoded = std::str::from_utf8(raw)
                        .map_err(|_| StatsdError::NotUtf8 {
                            line: cut(&String::from_utf8_lossy(raw)),
                        })
                        .and_then(|text| self.decode_text(text, &mut tally.name_collisions));
                    self.count(decoded, &mut tally);
                }
            }
        }
        tally
    }

    /// Counts a decoded line's points, or the line as refused (logged, rate-limited).
    fn count(&mut self, decoded: Result<usize, StatsdError>, tally: &mut DatagramTally) {
        match decoded {
            Ok(points) => tally.points += points as u64,
            Err(error) => {
                tally.malformed_lines += 1;
                self.warnings.warn(format_args!("line refused: {error}"));
            }
        }
    }

    /// Adds the line's points to its series' batch; counts a name that
    /// sanitises like another one into `collisions`.
    fn decode_text(&mut self, text: &str, collisions: &mut u64) -> Result<usize, StatsdError> {
        let line = parse_line(text, &mut self.values)?;
        let key = series_key(&line);
        let halves = key_halves(key);
        let entries = &self.entries;
        let found = self
            .kept
            .find(key as u64, |slot| entries[*slot as usize].key == halves)
            .copied();
        let index = match found {
            Some(slot) if self.entries[slot as usize].index != IDLE => self.entries[slot as usize].index as usize,
            Some(slot) => {
                let KeptParts { labels, points } = std::mem::take(&mut self.parts[slot as usize]);
                self.start_series(slot, labels, line.kind, points)
            }
            None => {
                let labels = line.labels(&self.limits)?;
                let sanitized = labels.metric_name().unwrap_or_default();
                if let Some(first) = self.state.names.lock().check(line.name, sanitized) {
                    *collisions += 1;
                    // Once per name, so no limiter: a quiet warning would hide the merge.
                    tracing::warn!(
                        "statsd: {:?} and {:?} both become the metric {sanitized}, so their samples fold into one series (Etsy statsd keeps them apart): rename one",
                        cut(first),
                        cut(line.name),
                    );
                }
                let slot = self.entries.len() as u32;
                self.entries.push(KeptEntry {
                    key: halves,
                    index: IDLE,
                });
                self.parts.push(KeptParts::default());
                let entries = &self.entries;
                // The table hashes a slot by its key's low half, as `find` is asked.
                self.kept
                    .insert_unique(key as u64, slot, |slot| entries[*slot as usize].key[0]);
                self.start_series(slot, labels, line.kind, Vec::with_capacity(self.values.len()))
            }
        };
        if line.kind == Kind::Gauge {
            // Resolved here, line by line, so changes apply in the order sent;
            // held with the series' labels, which the held-gauge repeater sends.
            let now = Instant::now();
            let mut gauges = self.state.gauges.lock();
            let labels = &self.batch.series[index].labels;
            for value in self.values.iter_mut() {
                *value =
                    gauges
                        .apply(key, labels, *value, line.relative, now)
                        .ok_or_else(|| StatsdError::GaugesFull {
                            line: cut(line.raw),
                            max: self.state.max_gauges,
                        })?;
            }
        }
        line.push_points(&self.values, &mut self.rng, &mut self.batch.series[index].points);
        Ok(self.values.len())
    }

    /// Appends the kept series in `slot` to the batch and returns its index there.
    fn start_series(&mut self, slot: u32, labels: Labels, kind: Kind, points: Vec<Point>) -> usize {
        let index = self.batch.series.len();
        self.batch.series.push(SeriesBatch::new(labels, kind, points));
        self.active.push(slot);
        self.entries[slot as usize].index = index as u32;
        index
    }
}

/// Groups lines of one series without building their labels: 128 bits make a
/// collision (two series folded into one) negligible. Lines whose raw text
/// differs but sanitises alike (`a.b`, `a_b`) get two batches with equal labels,
/// which the engine folds into the same series.
fn series_key(line: &StatsdLine<'_>) -> u128 {
    // One-shot hashes (the streaming hasher costs more than the bytes on short
    // lines). Without tags (most lines), one hash of the name seeded with the
    // kind. With tags, the name's hash, with the kind, seeds the tags' hash,
    // so ("a", "bc") and ("ab", "c") stay apart; the two forms are different
    // functions, so a tagged and an untagged series meet only by a 128-bit collision.
    let kind = u64::from(kind_byte(line.kind));
    if line.tags.is_empty() {
        return xxh3_128_with_seed(line.name.as_bytes(), kind);
    }
    let seed = xxh3_64(line.name.as_bytes()) ^ kind;
    xxh3_128_with_seed(line.tags.as_bytes(), seed)
}

fn kind_byte(kind: Kind) -> u8 {
    match kind {
        Kind::Counter => 0,
        Kind::Gauge => 1,
        Kind::Distribution => 2,
        Kind::Set => 3,
    }
}

/// Logs at most one warning per [`WARN_EVERY`], saying how many were held back,
/// so a misbehaving client cannot flood the log.
#[derive(Debug, Default)]
struct WarnLimiter {
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnLimiter {
    fn warn(&mut self, problem: std::fmt::Arguments<'_>) {
        let now = Instant::now();
        if self.last.is_some_and(|last| now.duration_since(last) < WARN_EVERY) {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(suppressed = self.suppressed, "statsd: {problem}");
        self.last = Some(now);
        self.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Labels;

    fn settings(max_packet_bytes: usize) -> StatsdSettings {
        StatsdSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            tenant: "team-a".to_string(),
            max_packet_bytes,
            max_gauges: 100,
            gauge_idle_ms: 60_000,
            readers: 1,
            batch_datagrams: 8,
            batch_wait_ms: 0,
            receive_buffer_bytes: 65_536,
            limits: IngestLimits::default(),
        }
    }

    fn decoder(max_packet_bytes: usize) -> DatagramDecoder {
        DatagramDecoder::new(&settings(max_packet_bytes))
    }

    /// Each series of the batch being built: its labels and point values.
    fn batch_values(decoder: &DatagramDecoder) -> Vec<(String, Vec<f64>)> {
        let series = decoder.batch.series.iter();
        series
            .map(|series| {
                (
                    series.labels.to_string(),
                    series.points.iter().map(|p| p.value).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn set_members_go_to_a_set_series_one_point_each() {
        let mut decoder = decoder(1024);
        let tally = decoder.decode(b"users:alice|s\nusers:bob|s|#region:eu\nusers:alice|s\nusers:7|s");
        assert_eq!((tally.points, tally.malformed_lines), (4, 0));
        let series: Vec<(String, Kind, Vec<f64>)> = decoder
            .batch
            .series
            .iter()
            .map(|series| {
                let members = series.points.iter().map(|p| p.value).collect();
                (series.labels.to_string(), series.kind, members)
            })
            .collect();
        assert_eq!(
            series,
            [
                (
                    "users{}".to_string(),
                    Kind::Set,
                    vec![set_member("alice"), set_member("alice"), set_member("7")]
                ),
                (r#"users{region="eu"}"#.to_string(), Kind::Set, vec![set_member("bob")]),
            ]
        );
    }

    #[test]
    fn groups_lines_of_one_series_and_skips_blank_lines() {
        let mut decoder = decoder(1024);
        let tally = decoder.decode(b"hits:1|c|#a:1\n\r\nhits:2|c|#a:1\nhits:3|c|#a:2\nhits:4|g|#a:1\n\nlat:5:6|ms\n");
        assert_eq!(
            tally,
            DatagramTally {
                points: 6,
                malformed_lines: 0,
                name_collisions: 0
            }
        );
        assert_eq!(&*decoder.batch.tenant, "team-a");
        let shapes: Vec<(String, Kind, usize)> = decoder
            .batch
            .series
            .iter()
            .map(|series| (series.labels.to_string(), series.kind, series.points.len()))
            .collect();
        assert_eq!(
            shapes,
            [
                (r#"hits{a="1"}"#.to_string(), Kind::Counter, 2),
                (r#"hits{a="2"}"#.to_string(), Kind::Counter, 1),
                (r#"hits{a="1"}"#.to_string(), Kind::Gauge, 1),
                ("lat{}".to_string(), Kind::Distribution, 2),
            ]
        );
        // The next datagram starts from an empty batch.
        decoder.decode(b"other:1|c");
        assert_eq!(decoder.batch.series.len(), 1);
        assert_eq!(
            decoder.batch.series[0].labels,
            Labels::from_pairs([("__name__", "other")])
        );
    }

    #[test]
    fn names_that_sanitise_alike_are_counted_once_across_datagrams() {
        let mut decoder = decoder(1024);
        assert_eq!(decoder.decode(b"api.latency:1|ms\napi.latency:2|ms").name_collisions, 0);
        let tally = decoder.decode(b"api_latency:3|ms\napi-latency:4|ms\napi.latency:5|ms");
        assert_eq!((tally.points, tally.name_collisions), (3, 2));
        assert_eq!(decoder.decode(b"api_latency:6|ms").name_collisions, 0, "each name once");
    }

    #[test]
    fn relative_gauges_apply_in_the_order_sent_across_datagrams() {
        let mut decoder = decoder(1024);
        let gauge = |decoder: &DatagramDecoder| -> Vec<f64> {
            decoder.batch.series[0].points.iter().map(|p| p.value).collect()
        };
        decoder.decode(b"q:5|g\nq:+2|g\nq:9|g\nq:-4|g");
        assert_eq!(gauge(&decoder), [5.0, 7.0, 9.0, 5.0]);
        decoder.decode(b"q:+1.5|g|#other:tag\nq:+1|g");
        assert_eq!(gauge(&decoder), [1.5], "another series starts from 0");
        assert_eq!(
            decoder.batch.series[1].points[0].value, 6.0,
            "held from the datagram before"
        );
    }

    #[test]
    fn batches_span_datagrams_and_readers_share_held_gauges_and_names() {
        let mut first = decoder(1024);
        let mut other = DatagramDecoder::sharing(&settings(1024), Arc::clone(&first.state));
        first.clear();
        first.add(b"q:5|g\nhits:1|c");
        first.add(b"hits:2|c\napi.x:1|c");
        assert_eq!(first.batch.series.len(), 3, "one batch over both datagrams");
        assert_eq!(first.batch.series[1].points.len(), 2);
        // Another reader (another sender) changes the gauge the first one holds.
        let tally = other.decode(b"q:+2|g\napi_x:1|c");
        assert_eq!(other.batch.series[0].points[0].value, 7.0);
        assert_eq!(tally.name_collisions, 1, "api.x and api_x seen by different readers");
        // Cleared and rebuilt from the kept series: the same series, empty points reused.
        first.clear();
        assert!(first.batch.series.is_empty());
        first.add(b"hits:3|c");
        assert_eq!(first.batch.series.len(), 1);
        assert_eq!(first.batch.series[0].labels, Labels::from_pairs([("__name__", "hits")]));
        assert_eq!(first.batch.series[0].points.len(), 1);
    }

    #[test]
    fn refuses_bad_lines_alone() {
        let mut decoder = decoder(1024);
        let tally = decoder.decode(b"ok:1|c\nbad\n\xff\xfe:1|c\nok:2|c\nset:|s");
        assert_eq!(
            tally,
            DatagramTally {
                points: 2,
                malformed_lines: 3,
                name_collisions: 0
            }
        );
        assert_eq!(decoder.batch.series.len(), 1);
        assert_eq!(decoder.batch.series[0].points.len(), 2);
    }

    #[test]
    fn each_broken_line_is_refused_and_the_rest_of_the_datagram_kept() {
        let mut decoder = decoder(1024);
        // Each broken line fails for another reason (see parse_tests for the messages).
        let tally = decoder
            .decode(b"a:1|c\r\nno_colon\n:1|c\na:|c\na:x|c\na:1|zz\na:1|c|@2\na:1|c|Tx\n\na:2:3|c\nb:4|g\na:1\n");
        assert_eq!(
            tally,
            DatagramTally {
                points: 4,
                malformed_lines: 8,
                name_collisions: 0
            }
        );
        assert_eq!(
            batch_values(&decoder),
            [("a{}".to_string(), vec![1.0, 2.0, 3.0]), ("b{}".to_string(), vec![4.0])]
        );
    }

    #[test]
    fn past_max_kept_series_they_are_forgotten_and_rebuilt_right() {
        let mut decoder = decoder(1024);
        decoder.clear();
        for series in 0..=MAX_KEPT_SERIES {
            decoder.add(format!("s{series}:1|c").as_bytes());
        }
        assert_eq!(decoder.batch.series.len(), MAX_KEPT_SERIES + 1);
        // The next batch starts from nothing kept, and the same names map to fresh slots.
        decoder.clear();
        assert_eq!(
            (decoder.kept.len(), decoder.entries.len(), decoder.parts.len()),
            (0, 0, 0)
        );
        let tally = decoder.add(b"s7:2|c\ns3:4|c|#a:b\ns7:5|c");
        assert_eq!(tally.points, 3);
        assert_eq!(
            batch_values(&decoder),
            [
                ("s7{}".to_string(), vec![2.0, 5.0]),
                (r#"s3{a="b"}"#.to_string(), vec![4.0])
            ]
        );
        // Kept from here on: the next batch finds both again.
        decoder.clear();
        decoder.add(b"s3:1|c|#a:b");
        assert_eq!(decoder.kept.len(), 2);
        assert_eq!(decoder.batch.series[0].labels.to_string(), r#"s3{a="b"}"#);
    }

    #[test]
    fn an_over_long_datagram_loses_only_its_cut_line() {
        let mut decoder = decoder(16);
        // Past the limit of 16 bytes: "c:33|c" was cut to "c:33".
        let tally = decoder.decode(b"a:1|c\nb:2|c\nc:33|c");
        assert_eq!(
            tally,
            DatagramTally {
                points: 2,
                malformed_lines: 1,
                name_collisions: 0
            }
        );
        let tally = decoder.decode(b"0123456789abcdefg");
        assert_eq!(
            tally,
            DatagramTally {
                points: 0,
                malformed_lines: 1,
                name_collisions: 0
            }
        );
    }
}
