//! statsd / DogStatsD ingest over UDP: each datagram's lines are parsed, grouped
//! into one `SeriesBatch` per (series, kind) and handed to the engine as one
//! `IngestBatch`. A bad line is refused alone, counted and (rate-limited) logged.

mod held;
mod parse;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use xxhash_rust::xxh3::Xxh3;

use crate::clock::Clock;
use crate::cluster::stage::Stage;
use crate::config::{IngestLimits, StatsdSettings};
use crate::ingest::validate::cut;
use crate::model::{DropReason, IngestBatch, Kind, Outcome, SeriesBatch};
use crate::telemetry::Telemetry;

pub use held::{repeat_held_gauges, HeldGauges, HELD_PROTOCOL};
pub use parse::{
    parse_line, sanitize_name, set_member, stochastic_weight, NameCollisions, StatsdError, StatsdLine,
    MAX_CHECKED_NAMES,
};

/// Malformed lines are logged at most this often; the rest are only counted.
const WARN_EVERY: Duration = Duration::from_secs(1);

/// Receives statsd datagrams on `socket` and feeds `engine` under the
/// configured tenant until `closing` turns true or the engine closes.
pub async fn serve_statsd(
    socket: UdpSocket,
    stage: Stage,
    clock: Arc<dyn Clock>,
    telemetry: Arc<Telemetry>,
    settings: StatsdSettings,
    mut closing: watch::Receiver<bool>,
) {
    // One byte more than allowed tells an over-long datagram from one of exactly the limit.
    let mut buffer = vec![0u8; settings.max_packet_bytes + 1];
    let mut decoder = DatagramDecoder::new(&settings);
    // Held gauges go into every window, as every statsd flush has them.
    let repeater = tokio::spawn(repeat_held_gauges(
        Arc::clone(&decoder.gauges),
        stage.clone(),
        Arc::clone(&clock),
        Arc::clone(&telemetry),
        Arc::clone(&decoder.batch.tenant),
        closing.clone(),
    ));
    let engine = Arc::clone(stage.engine());
    while !*closing.borrow() {
        let length = tokio::select! {
            changed = closing.changed() => {
                if changed.is_err() {
                    break;
                }
                continue;
            }
            received = socket.recv(&mut buffer) => match received {
                Ok(length) => length,
                Err(error) => {
                    decoder.warnings.warn(format_args!("receive failed: {error}"));
                    // A persistent socket error must not become a busy loop.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let tally = decoder.decode(&buffer[..length]);
        // statsd cannot push back: while ingest is saturated the datagram is dropped and counted.
        let permit = engine.limits().gate().try_enter();
        let mut outcome = if decoder.batch.series.is_empty() {
            Outcome::default()
        } else if permit.is_none() {
            telemetry.overloaded("statsd");
            telemetry.limit_dropped(&decoder.batch.tenant, DropReason::Overloaded, "", tally.points);
            let mut outcome = Outcome::default();
            outcome.reject(DropReason::Overloaded, tally.points);
            outcome
        } else {
            let now_ms = clock.now_ms();
            let (admitted, limited) = engine.admit(&decoder.batch, now_ms);
            match stage.fold(&admitted, now_ms, limited).await {
                Ok(outcome) => outcome,
                Err(crate::cluster::stage::StageError::RulesDiffer(reason)) => {
                    // Nothing is forwarded until the rules agree; counted, and the listener goes on.
                    tracing::warn!(%reason, points = tally.points, "statsd datagram dropped: this instance's rules differ from the cluster's");
                    let mut outcome = Outcome::default();
                    outcome.reject(DropReason::Unavailable, tally.points);
                    outcome
                }
                Err(error) => {
                    tracing::info!(%error, "statsd listener stops");
                    break;
                }
            }
        };
        drop(permit);
        outcome.reject(DropReason::InvalidSeries, tally.malformed_lines);
        // `received` last: whoever sees it can rely on the outcome being counted.
        telemetry.ingested_by("statsd", &settings.tenant, &outcome);
        telemetry.statsd_malformed(tally.malformed_lines);
        telemetry.statsd_name_collisions(tally.name_collisions);
        telemetry.received_by("statsd", &settings.tenant, tally.points + tally.malformed_lines);
    }
    repeater.abort();
}

/// What one datagram held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatagramTally {
    /// Points of good lines (a multi-value line has several).
    pub points: u64,
    /// Lines refused (each counted as one point, since its values are unknown).
    pub malformed_lines: u64,
    /// Metric names first seen to sanitise like another one (see [`NameCollisions`]).
    pub name_collisions: u64,
}

/// Turns datagrams into an [`IngestBatch`], reusing its buffers across datagrams.
pub struct DatagramDecoder {
    /// The batch of the last decoded datagram.
    pub batch: IngestBatch,
    limits: IngestLimits,
    max_packet_bytes: usize,
    /// Hash of (raw name, raw tags, kind) -> index in `batch.series`; labels are
    /// built once per series and datagram, not once per line.
    series_index: HashMap<u128, usize>,
    values: Vec<f64>,
    rng: SmallRng,
    warnings: WarnLimiter,
    names: NameCollisions,
    /// Shared with the task that repeats them ([`repeat_held_gauges`]).
    gauges: Arc<Mutex<HeldGauges>>,
    max_gauges: usize,
}

impl DatagramDecoder {
    /// A decoder for `settings`' tenant and limits.
    pub fn new(settings: &StatsdSettings) -> Self {
        DatagramDecoder {
            batch: IngestBatch {
                tenant: Arc::from(settings.tenant.as_str()),
                series: Vec::new(),
            },
            limits: settings.limits.clone(),
            max_packet_bytes: settings.max_packet_bytes,
            series_index: HashMap::new(),
            values: Vec::new(),
            rng: SmallRng::from_rng(&mut rand::rng()),
            warnings: WarnLimiter::default(),
            names: NameCollisions::default(),
            gauges: Arc::new(Mutex::new(HeldGauges::new(settings.max_gauges, settings.gauge_idle_ms))),
            max_gauges: settings.max_gauges,
        }
    }

    /// Replaces `self.batch` with the good lines of `datagram`; blank lines are skipped.
    pub fn decode(&mut self, datagram: &[u8]) -> DatagramTally {
        self.batch.series.clear();
        self.series_index.clear();
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
        for raw in body.split(|b| *b == b'\n') {
            let raw = raw.trim_ascii();
            if raw.is_empty() {
                continue;
            }
            match self.decode_line(raw, &mut tally.name_collisions) {
                Ok(points) => tally.points += points as u64,
                Err(error) => {
                    tally.malformed_lines += 1;
                    self.warnings.warn(format_args!("line refused: {error}"));
                }
            }
        }
        tally
    }

    /// Adds the line's points to its series' batch; counts a name that
    /// sanitises like another one into `collisions`.
    fn decode_line(&mut self, raw: &[u8], collisions: &mut u64) -> Result<usize, StatsdError> {
        let text = std::str::from_utf8(raw).map_err(|_| StatsdError::NotUtf8 {
            line: cut(&String::from_utf8_lossy(raw)),
        })?;
        let line = parse_line(text, &mut self.values)?;
        let key = series_key(&line);
        let index = match self.series_index.get(&key) {
            Some(index) => *index,
            None => {
                let labels = line.labels(&self.limits)?;
                let sanitized = labels.metric_name().unwrap_or_default();
                if let Some(first) = self.names.check(line.name, sanitized) {
                    *collisions += 1;
                    // Once per name, so no limiter: a quiet warning would hide the merge.
                    tracing::warn!(
                        "statsd: {:?} and {:?} both become the metric {sanitized}, so their samples fold into one series (Etsy statsd keeps them apart): rename one",
                        cut(first),
                        cut(line.name),
                    );
                }
                self.batch.series.push(SeriesBatch::new(
                    labels,
                    line.kind,
                    Vec::with_capacity(self.values.len()),
                ));
                let index = self.batch.series.len() - 1;
                self.series_index.insert(key, index);
                index
            }
        };
        if line.kind == Kind::Gauge {
            // Resolved here, line by line, so changes apply in the order sent.
            let now = Instant::now();
            let mut gauges = self.gauges.lock();
            let labels = &self.batch.series[index].labels;
            let mut full = false;
            for value in self.values.iter_mut() {
                match gauges.apply(key, labels, *value, line.relative, now) {
                    Some(absolute) => *value = absolute,
                    None => {
                        full = true;
                        break;
                    }
                }
            }
            if full {
                if self.batch.series[index].points.is_empty() && index + 1 == self.batch.series.len() {
                    // Its first line in this datagram: leave no empty series behind.
                    self.batch.series.pop();
                    self.series_index.remove(&key);
                }
                return Err(StatsdError::GaugesFull {
                    line: cut(line.raw),
                    max: self.max_gauges,
                });
            }
        }
        line.push_points(&self.values, &mut self.rng, &mut self.batch.series[index].points);
        Ok(self.values.len())
    }
}

/// Groups lines of one series without building their labels: 128 bits make a
/// collision (two series folded into one) negligible. Lines whose raw text
/// differs but sanitises alike (`a.b`, `a_b`) get two batches with equal labels,
/// which the engine folds into the same series.
fn series_key(line: &StatsdLine<'_>) -> u128 {
    let mut hasher = Xxh3::new();
    hasher.update(line.name.as_bytes());
    // 0xff never occurs in UTF-8, so ("a", "bc") and ("ab", "c") stay apart.
    hasher.update(&[0xff]);
    hasher.update(line.tags.as_bytes());
    hasher.update(&[0xff, kind_byte(line.kind)]);
    hasher.digest128()
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

    fn decoder(max_packet_bytes: usize) -> DatagramDecoder {
        DatagramDecoder::new(&StatsdSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            tenant: "team-a".to_string(),
            max_packet_bytes,
            max_gauges: 100,
            gauge_idle_ms: 60_000,
            limits: IngestLimits::default(),
        })
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
