//! Ingest decode paths, without the engine:
//! - `remote_write_1000_samples`: a snappy-compressed Prometheus remote write
//!   1.0 request of 1,000 series x 1 sample (six labels, `_total` counters;
//!   every 10th series with one exemplar carrying trace and span IDs) through
//!   `decompress`, `parse`, `points_in` and `decode_request`, as the HTTP
//!   handler runs them;
//! - `grpc_1000_points`: a `tailfold.v1.WriteRequest` of 100 distribution
//!   series x 10 points, each point with a 16-byte trace ID and 8-byte span ID,
//!   through `decode_write` (bounded decoding straight from the bytes, with
//!   per-series validation), as the gRPC handler runs it (tonic framing excluded).

mod common;

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use prost::Message;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use rand_distr::Distribution;
use tailfold::api::{prometheus as rw, v1};
use tailfold::config::IngestLimits;
use tailfold::ingest::grpc_decode::decode_write;
use tailfold::ingest::remote_write::decode::{decode_body, decompress};

/// The service binary's allocator (`src/main.rs`), so the figures are the
/// service's: mimalloc also asks for transparent huge pages for its arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const POINTS: usize = 1_000;

fn remote_write_body() -> Vec<u8> {
    let timeseries = (0..POINTS)
        .map(|i| {
            let labels = common::counter_labels(i);
            let mut labels: Vec<rw::Label> = labels
                .iter()
                .map(|label| rw::Label {
                    name: label.name.to_string(),
                    value: if label.name == "__name__" {
                        format!("{}_total", label.value)
                    } else {
                        label.value.to_string()
                    },
                })
                .collect();
            labels.sort_by(|a, b| a.name.cmp(&b.name));
            let timestamp = common::NOW_MS - 1_000;
            let exemplars = if i % 10 == 0 {
                vec![rw::Exemplar {
                    labels: vec![
                        rw::Label {
                            name: "span_id".into(),
                            value: format!("{:016x}", i + 1),
                        },
                        rw::Label {
                            name: "trace_id".into(),
                            value: format!("{:032x}", i + 1),
                        },
                    ],
                    value: 1.0,
                    timestamp,
                }]
            } else {
                Vec::new()
            };
            rw::TimeSeries {
                labels,
                samples: vec![rw::Sample {
                    value: (i * 17) as f64,
                    timestamp,
                }],
                exemplars,
                histograms: Vec::new(),
            }
        })
        .collect();
    let request = rw::WriteRequest {
        timeseries,
        metadata: Vec::new(),
    };
    snap::raw::Encoder::new()
        .compress_vec(&request.encode_to_vec())
        .expect("snappy")
}

fn grpc_body() -> Vec<u8> {
    let mut rng = SmallRng::seed_from_u64(9);
    let dist = common::latency();
    let series = (0..POINTS / 10)
        .map(|i| v1::Series {
            labels: common::distribution_labels(i)
                .iter()
                .map(|label| v1::Label {
                    name: label.name.to_string(),
                    value: label.value.to_string(),
                })
                .collect(),
            kind: v1::Kind::Distribution as i32,
            points: (0..10)
                .map(|_| {
                    let trace = common::trace(&mut rng);
                    v1::Point {
                        value: dist.sample(&mut rng),
                        timestamp_ms: Some(common::NOW_MS - 500),
                        trace_id: trace.trace_id.to_vec().into(),
                        span_id: trace.span_id.to_vec().into(),
                    }
                })
                .collect(),
        })
        .collect();
    v1::WriteRequest { series }.encode_to_vec()
}

fn bench(c: &mut Criterion) {
    let limits = IngestLimits::default();
    let tenant: Arc<str> = Arc::from(common::TENANT);
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(POINTS as u64));

    let body = remote_write_body();
    let check = decode_body(&decompress(&body, usize::MAX).unwrap(), tenant.clone(), &limits).unwrap();
    assert_eq!(check.error_count, 0);
    assert_eq!(check.batch.series.len(), POINTS);
    eprintln!("decode: remote write body {} bytes (snappy)", body.len());
    group.bench_function("remote_write_1000_samples", |b| {
        b.iter(|| {
            let bytes = decompress(black_box(&body), limits.max_request_bytes).expect("snappy");
            decode_body(&bytes, Arc::clone(&tenant), &limits).expect("protobuf")
        })
    });

    let body = grpc_body();
    eprintln!("decode: gRPC body {} bytes", body.len());
    group.bench_function("grpc_1000_points", |b| {
        b.iter(|| {
            let decoded = decode_write(black_box(&body[..]), Arc::clone(&tenant), &limits).expect("protobuf");
            assert_eq!(decoded.outcome.rejected_total(), 0);
            decoded.batch
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
