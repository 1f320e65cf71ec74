//! What the load consists of: the series (names, labels, kinds) and the points
//! drawn for them (log-normal latencies with a slow tail, traced), independent
//! of how a request carrying them is encoded.

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal};

use crate::api::v1;

/// Points of one series in a request before the next series takes over.
pub(super) const POINTS_PER_SERIES: usize = 10;

/// The random source of one worker.
pub(super) struct Generator {
    rng: SmallRng,
    fast: LogNormal<f64>,
    slow: LogNormal<f64>,
}

/// One drawn point: its value and, for a distribution, the trace and span it came from.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct RawPoint {
    /// The observation.
    pub(super) value: f64,
    /// Trace and span IDs (both non-zero), only on traced points.
    pub(super) ids: Option<([u8; 16], [u8; 8])>,
}

impl Generator {
    pub(super) fn new(seed: u64) -> Self {
        Generator {
            rng: SmallRng::seed_from_u64(seed),
            // Median 50 ms with a 3 % slow tail around 1.2 s: the shape of real request latencies.
            fast: LogNormal::new((0.05f64).ln(), 0.5).expect("valid"),
            slow: LogNormal::new((1.2f64).ln(), 0.4).expect("valid"),
        }
    }

    fn latency(&mut self) -> f64 {
        if self.rng.random_bool(0.03) {
            self.slow.sample(&mut self.rng)
        } else {
            self.fast.sample(&mut self.rng)
        }
    }

    /// The next point of a series of `kind`: every distribution observation is traced.
    pub(super) fn point(&mut self, kind: v1::Kind) -> RawPoint {
        match kind {
            v1::Kind::Distribution => {
                let value = self.latency();
                let mut trace = [0u8; 16];
                let mut span = [0u8; 8];
                self.rng.fill(&mut trace);
                self.rng.fill(&mut span);
                trace[0] |= 1;
                span[0] |= 1;
                RawPoint {
                    value,
                    ids: Some((trace, span)),
                }
            }
            v1::Kind::Counter => RawPoint { value: 1.0, ids: None },
            _ => RawPoint {
                value: 1.0e8 + self.rng.random_range(0.0..1.0e7),
                ids: None,
            },
        }
    }
}

fn label(name: &str, value: String) -> v1::Label {
    v1::Label {
        name: name.to_string(),
        value,
    }
}

/// Labels and kind of series number `index`.
pub(super) fn series_identity(index: usize, mix: (u32, u32, u32)) -> (Vec<v1::Label>, v1::Kind) {
    let total = (mix.0 + mix.1 + mix.2).max(1) as usize;
    let slot = index % total;
    let service = format!("svc-{}", index % 7);
    let pod = format!("pod-{}", index % 31);
    if slot < mix.0 as usize {
        let labels = vec![
            label("__name__", "http_request_duration_seconds".into()),
            label("service", service),
            label("endpoint", format!("/api/e{}", index % 13)),
            label("pod", pod),
            label("series", index.to_string()),
        ];
        (labels, v1::Kind::Distribution)
    } else {
        let (name, kind) = if slot < (mix.0 + mix.1) as usize {
            ("http_requests", v1::Kind::Counter)
        } else {
            ("memory_bytes", v1::Kind::Gauge)
        };
        let labels = vec![
            label("__name__", name.into()),
            label("service", service),
            label("pod", pod),
            label("series", index.to_string()),
        ];
        (labels, kind)
    }
}

/// A request as prost messages (labels cloned into every series). Remote write
/// starts from this; gRPC builds the same request's bytes directly (`wire`), and
/// its tests check the two agree.
pub(super) fn build_request(
    generator: &mut Generator,
    identities: &[(Vec<v1::Label>, v1::Kind)],
    next_series: &mut usize,
    batch: usize,
    now_ms: i64,
) -> v1::WriteRequest {
    let mut series = Vec::with_capacity(batch / POINTS_PER_SERIES + 1);
    let mut left = batch;
    while left > 0 {
        let (labels, kind) = &identities[*next_series % identities.len()];
        *next_series += 1;
        let count = left.min(POINTS_PER_SERIES);
        left -= count;
        let points = (0..count)
            .map(|_| {
                let point = generator.point(*kind);
                let (trace_id, span_id) = match point.ids {
                    Some((trace, span)) => (Bytes::copy_from_slice(&trace), Bytes::copy_from_slice(&span)),
                    None => (Bytes::new(), Bytes::new()),
                };
                v1::Point {
                    value: point.value,
                    timestamp_ms: Some(now_ms),
                    trace_id,
                    span_id,
                }
            })
            .collect();
        series.push(v1::Series {
            labels: labels.clone(),
            kind: *kind as i32,
            points,
        });
    }
    v1::WriteRequest { series }
}
