//! Held statsd gauges, as Etsy statsd keeps them: the last value of each
//! gauge, changed by relative lines (`+3|g`), and sent again into every
//! window until it is idle for `statsd.gauge_idle_ms` (statsd re-sends it
//! every flush). Bounded by `statsd.max_gauges`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::cluster::stage::Stage;
use crate::engine::Engine;
use crate::model::{DropReason, IngestBatch, Kind, Labels, Outcome, Point, SeriesBatch};
use crate::telemetry::Telemetry;

/// The protocol label of repeated held values in the ingest counters, apart
/// from `statsd` so that `statsd`'s received counts stay the lines sent.
pub const HELD_PROTOCOL: &str = "statsd_held";

/// One held gauge.
#[derive(Debug)]
struct Held {
    value: f64,
    /// Last update; idle past `idle` means forgotten.
    seen: Instant,
    /// The series' labels, to send the value again.
    labels: Labels,
}

/// The last value of each statsd gauge, so that a relative change applies to
/// it as in Etsy statsd (`q:5|g` then `q:+2|g` is 7, in the same window or a
/// later one) and so that it is sent again into windows without updates
/// ([`HeldGauges::repeat`]). At most `max` gauges are held; one not updated
/// for `idle` is forgotten (a later change starts from 0, as statsd's does
/// for a gauge it does not have, and it is no longer repeated).
#[derive(Debug)]
pub struct HeldGauges {
    values: HashMap<u128, Held>,
    max: usize,
    idle: Duration,
}

impl HeldGauges {
    /// Holds at most `max` gauges, each for `idle_ms` after its last update.
    pub fn new(max: usize, idle_ms: u64) -> Self {
        HeldGauges {
            values: HashMap::new(),
            max,
            idle: Duration::from_millis(idle_ms),
        }
    }

    /// The absolute value of a gauge `value` sent for series `key` (whose
    /// labels are `labels`) at `now` (`relative`: sent with a sign), which
    /// becomes the held value. `None` when a relative change cannot be
    /// applied: the gauge is not held and `max` others are (an absolute
    /// value then passes, unheld and not repeated).
    pub fn apply(&mut self, key: u128, labels: &Labels, value: f64, relative: bool, now: Instant) -> Option<f64> {
        let idle = self.idle;
        if let Some(held) = self.values.get_mut(&key) {
            let base = if now.duration_since(held.seen) < idle {
                held.value
            } else {
                0.0
            };
            held.value = if relative { base + value } else { value };
            held.seen = now;
            return Some(held.value);
        }
        if self.values.len() >= self.max {
            self.values.retain(|_, held| now.duration_since(held.seen) < idle);
            if self.values.len() >= self.max {
                return (!relative).then_some(value);
            }
        }
        // A gauge not held starts from 0, so a relative change is the value itself.
        self.values.insert(
            key,
            Held {
                value,
                seen: now,
                labels: labels.clone(),
            },
        );
        Some(value)
    }

    /// Appends one series per gauge held at `now` with its value stamped
    /// `timestamp_ms`, and forgets the idle ones.
    pub fn repeat(&mut self, now: Instant, timestamp_ms: i64, out: &mut Vec<SeriesBatch>) {
        let idle = self.idle;
        self.values.retain(|_, held| {
            let live = now.duration_since(held.seen) < idle;
            if live {
                let point = Point::new(held.value, Some(timestamp_ms), None);
                out.push(SeriesBatch::new(held.labels.clone(), Kind::Gauge, vec![point]));
            }
            live
        });
    }

    /// Gauges held now.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// The finest resolution of any storage policy of the current rules: every
/// window of every policy holds at least one multiple of it.
fn finest_resolution_ms(engine: &Engine) -> i64 {
    engine
        .rules()
        .storage_policies()
        .iter()
        .map(|policy| policy.resolution_ms as i64)
        .filter(|resolution| *resolution > 0)
        .min()
        .unwrap_or(10_000)
}

/// Sends every held gauge's value again at each multiple of the finest
/// resolution of the rules (stamped at it), so that every window of every
/// policy has each held gauge's value, as every Etsy statsd flush has it.
/// Counted under the protocol [`HELD_PROTOCOL`]. Ends when `closing` turns true.
pub async fn repeat_held_gauges(
    held: Arc<Mutex<HeldGauges>>,
    stage: Stage,
    clock: Arc<dyn Clock>,
    telemetry: Arc<Telemetry>,
    tenant: Arc<str>,
    mut closing: watch::Receiver<bool>,
) {
    let engine = Arc::clone(stage.engine());
    let mut batch = IngestBatch {
        tenant,
        series: Vec::new(),
    };
    while !*closing.borrow() {
        let now_ms = clock.now_ms();
        let resolution = finest_resolution_ms(&engine);
        let boundary = (now_ms.div_euclid(resolution) + 1) * resolution;
        tokio::select! {
            changed = closing.changed() => {
                if changed.is_err() {
                    break;
                }
                continue;
            }
            _ = tokio::time::sleep(Duration::from_millis((boundary - now_ms) as u64)) => {}
        }
        if clock.now_ms() < boundary {
            continue;
        }
        batch.series.clear();
        held.lock().repeat(Instant::now(), boundary, &mut batch.series);
        if batch.series.is_empty() {
            continue;
        }
        let points = batch.series.len() as u64;
        let tenant = Arc::clone(&batch.tenant);
        let permit = engine.limits().gate().try_enter();
        let outcome = if permit.is_none() {
            telemetry.overloaded(HELD_PROTOCOL);
            telemetry.limit_dropped(&tenant, DropReason::Overloaded, "", points);
            let mut outcome = Outcome::default();
            outcome.reject(DropReason::Overloaded, points);
            outcome
        } else {
            let now_ms = clock.now_ms();
            let (admitted, limited) = engine.admit(&batch, now_ms);
            match stage.fold(&admitted, now_ms, limited).await {
                Ok(outcome) => outcome,
                Err(error) => {
                    tracing::info!(%error, "statsd held gauges stop");
                    break;
                }
            }
        };
        drop(permit);
        telemetry.ingested_by(HELD_PROTOCOL, &tenant, &outcome);
        telemetry.received_by(HELD_PROTOCOL, &tenant, points);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(name: &str) -> Labels {
        Labels::from_pairs([("__name__", name)])
    }

    #[test]
    fn repeats_held_values_until_idle_and_stays_bounded() {
        let mut gauges = HeldGauges::new(2, 1_000);
        let start = Instant::now();
        assert_eq!(gauges.apply(1, &labels("a"), 5.0, false, start), Some(5.0));
        assert_eq!(gauges.apply(1, &labels("a"), 2.0, true, start), Some(7.0));
        assert_eq!(gauges.apply(2, &labels("b"), -3.0, true, start), Some(-3.0));
        // Full: a third relative gauge is refused, an absolute one passes unheld.
        assert_eq!(gauges.apply(3, &labels("c"), 1.0, true, start), None);
        assert_eq!(gauges.apply(3, &labels("c"), 4.0, false, start), Some(4.0));
        assert_eq!(gauges.len(), 2);

        let later = start + Duration::from_millis(600);
        assert_eq!(gauges.apply(2, &labels("b"), 1.0, true, later), Some(-2.0));
        let mut out = Vec::new();
        gauges.repeat(later, 9_000, &mut out);
        let mut sent: Vec<(String, f64, Option<i64>)> = out
            .iter()
            .map(|series| {
                assert_eq!((series.kind, series.points.len()), (Kind::Gauge, 1));
                (
                    series.labels.to_string(),
                    series.points[0].value,
                    series.points[0].timestamp_ms,
                )
            })
            .collect();
        sent.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            sent,
            [
                ("a{}".to_string(), 7.0, Some(9_000)),
                ("b{}".to_string(), -2.0, Some(9_000))
            ]
        );

        // `a` idle for 1 s: no longer repeated, forgotten, and a change starts from 0.
        out.clear();
        gauges.repeat(start + Duration::from_millis(1_200), 10_000, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].labels.to_string(), "b{}");
        assert_eq!(gauges.len(), 1);
        let much_later = start + Duration::from_millis(1_300);
        assert_eq!(gauges.apply(1, &labels("a"), 1.5, true, much_later), Some(1.5));
        // `b` idle too, though still in the map: its change starts from 0.
        let last = start + Duration::from_millis(1_700);
        assert_eq!(gauges.apply(2, &labels("b"), 1.0, true, last), Some(1.0));
        // Full again (a, b), but `a` idle: its place is taken.
        let idle_a = much_later + Duration::from_millis(1_000);
        assert_eq!(gauges.apply(3, &labels("c"), 2.0, true, idle_a), Some(2.0));
        assert_eq!(gauges.len(), 2);
    }
}
